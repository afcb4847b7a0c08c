//! virtio-vsock (type 19) with Firecracker's host side: AF_UNIX sockets on the host.
//!
//! - **Host-initiated**: a host process connects to `uds_path` and writes `CONNECT <port>\n`;
//!   the device sends the guest a REQUEST to `<port>` from a fresh host port (from 2^30 up) and,
//!   when the guest answers RESPONSE, writes `OK <host port>\n` to the host socket, which then
//!   carries the byte stream. A guest RST (nobody listens) closes the host socket.
//! - **Guest-initiated**: a guest REQUEST to host port `P` (CID 2) connects to
//!   `<uds_path>_<P>` (non-blocking); RESPONSE when that worked, RST otherwise.
//!
//! Queues: 0 = RX (device to guest), 1 = TX (guest to device), 2 = event (256 entries each).
//! Packets are a 44-byte `virtio_vsock_hdr` then the payload, over any number of descriptors.
//!
//! Flow control is the spec's credit scheme (virtio 1.2 §5.10.6.3): every packet carries the
//! sender's `buf_alloc` and `fwd_cnt`. Towards the guest we never send more than the guest's
//! `buf_alloc - (bytes sent - its fwd_cnt)`; a host socket with data but no credit (or no RX
//! buffer) leaves the epoll set until the guest's credit update (or RX notification) arrives,
//! so nothing spins. From the guest, bytes the host socket cannot take at once wait in a
//! per-connection buffer of [`BUF_ALLOC`] bytes, which is the credit we advertise; `fwd_cnt`
//! counts bytes handed to the host socket, and a CREDIT_UPDATE goes out when
//! [`CREDIT_UPDATE_THRESHOLD`] bytes were forwarded since the guest last heard our count (or
//! when it asks with CREDIT_REQUEST). A guest that overruns the credit gets RST.
//!
//! Shutdown: the host closing its socket (EOF) sends SHUTDOWN(RCV|SEND) and the connection
//! waits for the guest's RST; a guest SHUTDOWN with SEND half-closes the host socket once the
//! buffered bytes are out, and with both flags the connection ends with an RST from us; a
//! guest RST closes the host socket at once. The event queue carries
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` ([`Vsock::transport_reset`]: every connection dropped,
//! the guest re-reads its CID).
//!
//! Malformed packets (short header, length beyond the chain or above [`MAX_PKT_PAYLOAD`],
//! wrong CIDs, type other than STREAM, unknown op) are dropped and counted in
//! `virtio.bad_requests`; packets for unknown connections are answered with RST (except RST).
//! Not done: the connect timeout and the RST-after-SHUTDOWN timeout Firecracker has (a guest
//! that never answers keeps its connection until the device resets; at most
//! [`MAX_CONNECTIONS`]), SEQPACKET.
//!
//! Files: `packet` (the header and its checks), `connection` (one connection's socket and
//! credit counters), `muxer` (the connection table, the host sockets and packet routing),
//! `uds` (binding, connecting and the `CONNECT` line), `device` (the virtqueues and the
//! [`VirtioDevice`](super::VirtioDevice) implementation).

mod connection;
mod device;
mod muxer;
mod packet;
mod uds;

pub use device::{Vsock, VsockConfigError};
pub use packet::{
    PacketError, PacketHeader, EVENT_TRANSPORT_RESET, HDR_LEN, HDR_LEN_U32, HOST_CID,
    MAX_PKT_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

pub const QUEUE_SIZE: u16 = 256;
/// Our receive buffer per connection: the credit the guest gets.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Forwarded bytes after which the guest is told our new `fwd_cnt` unasked.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 << 10;
/// Connections at most (host- and guest-initiated together).
pub const MAX_CONNECTIONS: usize = 1024;

/// Counts a packet from the guest that was dropped (or a connection reset for a protocol error).
fn bad_packet() {
    crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_requests);
}
