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

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::queue::{ChainReader, ChainWriter};
use super::{ActiveContext, Interrupt, VirtQueue, VirtioDevice, COMMON_FEATURES, TYPE_VSOCK};

pub const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Largest payload accepted in one packet (Linux sends at most 64 KiB).
pub const MAX_PKT_PAYLOAD: u32 = 64 << 10;
/// Our receive buffer per connection: the credit the guest gets.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Forwarded bytes after which the guest is told our new `fwd_cnt` unasked.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 << 10;
/// Connections at most (host- and guest-initiated together).
pub const MAX_CONNECTIONS: usize = 1024;
/// First host port for host-initiated connections (as Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;

pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
/// `virtio_vsock_event.id` of a transport reset.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

const TOKEN_LISTENER: u64 = super::DEVICE_TOKEN_BASE;
const TOKEN_CONN_BASE: u64 = super::DEVICE_TOKEN_BASE + 16;

/// `struct virtio_vsock_hdr` (little-endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Why a packet from the guest was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet shorter than the {HDR_LEN}-byte header ({0} bytes)")]
    Short(usize),
    #[error("payload length {len} above the {MAX_PKT_PAYLOAD}-byte limit")]
    TooLong { len: u32 },
    #[error("payload length {len} but only {avail} bytes follow the header")]
    Truncated { len: u32, avail: u64 },
    #[error("socket type {0} (only STREAM = 1)")]
    Type(u16),
    #[error("unknown operation {0}")]
    Op(u16),
    #[error("source CID {src} / destination CID {dst} (expected the guest's and 2)")]
    Cid { src: u64, dst: u64 },
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

impl PacketHeader {
    /// Decodes a header (the first [`HDR_LEN`] bytes); no semantic checks.
    pub fn decode(b: &[u8]) -> Result<PacketHeader, PacketError> {
        if b.len() < HDR_LEN {
            return Err(PacketError::Short(b.len()));
        }
        Ok(PacketHeader {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        })
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses and checks a packet from the guest: `avail` is how many bytes follow the header
    /// in its chain. The checks every TX packet passes before the state machine sees it.
    pub fn parse_guest(b: &[u8], avail: u64, guest_cid: u64) -> Result<PacketHeader, PacketError> {
        let h = PacketHeader::decode(b)?;
        if h.len > MAX_PKT_PAYLOAD {
            return Err(PacketError::TooLong { len: h.len });
        }
        if u64::from(h.len) > avail {
            return Err(PacketError::Truncated { len: h.len, avail });
        }
        if h.src_cid != guest_cid || h.dst_cid != HOST_CID {
            return Err(PacketError::Cid {
                src: h.src_cid,
                dst: h.dst_cid,
            });
        }
        if h.type_ != TYPE_STREAM {
            return Err(PacketError::Type(h.type_));
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&h.op) {
            return Err(PacketError::Op(h.op));
        }
        Ok(h)
    }
}

/// `(host port, guest port)`.
type Key = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent (or queued), waiting for the guest's RESPONSE.
    LocalInit,
    Established,
    /// We sent SHUTDOWN after the host closed; waiting for the guest's RST.
    Closing,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    token: u64,
    state: State,
    /// Guest's receive buffer and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Payload bytes from the guest handed to the host socket, and the value last reported.
    fwd_cnt: Wrapping<u32>,
    last_fwd_reported: Wrapping<u32>,
    /// Bytes for the host socket that it could not take yet (includes the `OK` line).
    tx_buf: VecDeque<u8>,
    /// Leading bytes of `tx_buf` that are not guest payload (the `OK` line).
    unpaid: usize,
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    /// The host socket reported EOF/HUP (it is out of the epoll set then).
    host_eof: bool,
    credit_update_queued: bool,
    /// Current epoll interest (None = not registered).
    interest: Option<EventSet>,
    /// Waiting in `rx_ready` for RX buffers.
    in_rx_ready: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, state: State) -> Conn {
        Conn {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_reported: Wrapping(0),
            tx_buf: VecDeque::new(),
            unpaid: 0,
            peer_shut_send: false,
            peer_shut_rcv: false,
            host_eof: false,
            credit_update_queued: false,
            interest: None,
            in_rx_ready: false,
        }
    }

    /// How many bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Has a reason to read the host socket (whether epoll says it is readable or not).
    fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.peer_shut_rcv
            && !self.in_rx_ready
            && self.peer_credit() > 0
    }

    /// Writes `tx_buf` to the host socket, counting forwarded payload bytes in `fwd_cnt` (the
    /// `OK` line at the front is not payload); Err on a broken socket.
    fn flush(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let not_payload = n.min(self.unpaid);
                    self.unpaid -= not_payload;
                    self.fwd_cnt += Wrapping(crate::cast::len_u32(n - not_payload));
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

/// A host connection on `uds_path` that has not sent its `CONNECT` line yet.
#[derive(Debug)]
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// A control packet waiting for an RX buffer; credit fields are filled when it is sent.
#[derive(Debug, Clone, Copy)]
struct Ctrl {
    local: u32,
    peer: u32,
    op: u16,
    flags: u32,
}

struct Active {
    mem: GuestMemoryMmap,
    rx: VirtQueue,
    tx: VirtQueue,
    ev: VirtQueue,
    irq: Interrupt,
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    active: Option<Active>,
    conns: HashMap<Key, Conn>,
    by_token: HashMap<u64, Key>,
    pending: HashMap<u64, PendingHost>,
    ctrl: VecDeque<Ctrl>,
    rx_ready: VecDeque<Key>,
    next_token: u64,
    next_local_port: u32,
    reset_event_pending: bool,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

fn bad_packet() {
    crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_requests);
}

/// Binds `path`; a stale socket file nobody listens on (a previous VMM's) is replaced.
fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            use std::os::unix::fs::FileTypeExt;
            let is_sock = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            let live = UnixStream::connect(path).is_ok();
            if !is_sock || live {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} exists{}: remove it or choose another uds_path",
                        path.display(),
                        if live {
                            " and something listens on it"
                        } else {
                            " and is not a socket"
                        }
                    ),
                ));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        Err(e) => Err(e),
    }
}

/// A non-blocking connect to a Unix socket (a full backlog must not stall the event loop).
#[allow(
    clippy::cast_possible_truncation,
    reason = "AF_UNIX (1) fits sa_family_t, sizeof(sockaddr_un) (110) fits socklen_t"
)]
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the fd is owned by the UnixStream below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: connect(2) with a live, initialised sockaddr_un and its size.
    let r = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Parses `CONNECT <port>`.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl Vsock {
    /// Creates the device and its listener on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Vsock> {
        let listener = bind_listener(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            active: None,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_token: TOKEN_CONN_BASE,
            next_local_port: FIRST_LOCAL_PORT,
            reset_event_pending: false,
            scratch: vec![0u8; MAX_PKT_PAYLOAD as usize],
        })
    }

    /// From a `PUT /vsock` configuration.
    pub fn from_config(v: &crate::config::Vsock) -> Result<Vsock, String> {
        Vsock::new(u64::from(v.guest_cid), &v.uds_path)
            .map_err(|e| format!("cannot listen on uds_path {}: {e}", v.uds_path.display()))
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Open connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: drops every connection (host sockets closed) and
    /// tells the guest through the event queue (delivered when it has posted an event buffer).
    pub fn transport_reset(&mut self, epoll: &Epoll) {
        self.drop_all();
        self.reset_event_pending = true;
        self.process_event_queue();
        self.process_rx(epoll);
    }

    fn drop_all(&mut self) {
        // Closing an fd removes it from every epoll set; no epoll_ctl needed (reset runs on a
        // vCPU thread whose seccomp filter has none).
        self.conns.clear();
        self.by_token.clear();
        self.pending.clear();
        self.ctrl.clear();
        self.rx_ready.clear();
    }

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    fn push_ctrl(&mut self, local: u32, peer: u32, op: u16, flags: u32) {
        self.ctrl.push_back(Ctrl {
            local,
            peer,
            op,
            flags,
        });
    }

    /// Closes a connection (its host socket too).
    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_token.remove(&c.token);
        }
        self.rx_ready.retain(|k| *k != key);
    }

    /// Ends a connection with an RST to the guest.
    fn reset_conn(&mut self, key: Key) {
        self.remove(key);
        self.push_ctrl(key.0, key.1, OP_RST, 0);
    }

    /// Brings a connection's epoll registration in line with what it waits for.
    fn sync(&mut self, key: Key, epoll: &Epoll) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.host_eof {
            if c.interest.is_some() {
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
                c.interest = None;
            }
            // Out of the epoll set: what is left (then EOF) is read when there is credit.
            if c.wants_read() {
                c.in_rx_ready = true;
                self.rx_ready.push_back(key);
            }
            return;
        }
        let mut want = EventSet::empty();
        if c.wants_read() {
            want |= EventSet::IN;
        }
        if !c.tx_buf.is_empty() {
            want |= EventSet::OUT;
        }
        if c.interest == Some(want) {
            return;
        }
        let op = if c.interest.is_some() {
            ControlOperation::Modify
        } else {
            ControlOperation::Add
        };
        if epoll
            .ctl(op, c.stream.as_raw_fd(), EpollEvent::new(want, c.token))
            .is_ok()
        {
            c.interest = Some(want);
        }
    }

    fn sync_all(&mut self, epoll: &Epoll) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.sync(k, epoll);
        }
    }

    // ---- host side ----

    fn accept(&mut self, epoll: &Epoll) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if s.set_nonblocking(true).is_err()
                        || self.conns.len() + self.pending.len() >= MAX_CONNECTIONS
                    {
                        continue; // dropped: the host sees EOF
                    }
                    let token = self.alloc_token();
                    if epoll
                        .ctl(
                            ControlOperation::Add,
                            s.as_raw_fd(),
                            EpollEvent::new(EventSet::IN, token),
                        )
                        .is_ok()
                    {
                        self.pending.insert(
                            token,
                            PendingHost {
                                stream: s,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Reads a pending host connection's `CONNECT` line, one byte at a time (what follows the
    /// newline is the stream, not ours to read yet).
    fn read_connect_line(&mut self, token: u64, epoll: &Epoll) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut b = [0u8; 1];
        let done = loop {
            match p.stream.read(&mut b) {
                Ok(0) => break Err(()),
                Ok(_) if b[0] == b'\n' => break Ok(parse_connect(&p.line)),
                Ok(_) => {
                    p.line.push(b[0]);
                    if p.line.len() > MAX_CONNECT_LINE {
                        break Err(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break Err(()),
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let Ok(Some(peer_port)) = done else {
            // Garbage, EOF or an error: close (Firecracker does the same).
            let _ = epoll.ctl(
                ControlOperation::Delete,
                p.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            return;
        };
        let local = self.alloc_local_port();
        let mut c = Conn::new(p.stream, token, State::LocalInit);
        // Registered with IN; interest is recomputed (nothing until established).
        c.interest = Some(EventSet::IN);
        self.conns.insert((local, peer_port), c);
        self.by_token.insert(token, (local, peer_port));
        self.push_ctrl(local, peer_port, OP_REQUEST, 0);
        self.sync((local, peer_port), epoll);
    }

    fn on_conn_event(&mut self, token: u64, events: EventSet, epoll: &Epoll) {
        let Some(&key) = self.by_token.get(&token) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // The host closed: stop watching (HUP would fire forever), read what is left.
            c.host_eof = true;
        }
        if events.contains(EventSet::OUT) || c.host_eof {
            if c.flush().is_err() {
                c.host_eof = true;
            }
            self.after_forward(key);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        match c.state {
            State::LocalInit if c.host_eof => {
                // The host gave up before the guest answered.
                self.reset_conn(key);
                return;
            }
            State::Established
                if (events.intersects(EventSet::IN) || c.host_eof) && !c.in_rx_ready =>
            {
                c.in_rx_ready = true;
                self.rx_ready.push_back(key);
            }
            _ => {}
        }
        self.sync(key, epoll);
    }

    /// After bytes went to the host socket: credit bookkeeping and deferred half-closes.
    fn after_forward(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.tx_buf.is_empty() && c.peer_shut_send && !c.host_eof {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if !c.credit_update_queued
            && (c.fwd_cnt - c.last_fwd_reported).0 >= CREDIT_UPDATE_THRESHOLD
            && c.state == State::Established
        {
            c.credit_update_queued = true;
            self.push_ctrl(key.0, key.1, OP_CREDIT_UPDATE, 0);
        }
    }

    // ---- guest side ----

    fn process_tx(&mut self, epoll: &Epoll) {
        let Some(a) = &mut self.active else { return };
        let mem = a.mem.clone();
        let mut used = false;
        let mut hdr = [0u8; HDR_LEN];
        loop {
            let a = self.active.as_mut().expect("active");
            a.tx.disable_notification(&mem);
            let Some((head, chain)) = a.tx.pop(&mem) else {
                if a.tx.enable_notification(&mem) {
                    continue;
                }
                break;
            };
            a.tx.add_used(&mem, head, 0);
            used = true;
            let Ok(c) = chain else { continue };
            let mut r = ChainReader::new(&mem, &c.readable);
            if !r.read_exact(&mut hdr) {
                bad_packet();
                continue;
            }
            let h = match PacketHeader::parse_guest(&hdr, r.remaining(), self.guest_cid) {
                Ok(h) => h,
                Err(e) => {
                    crate::log_debug!("vsock: dropped a packet from the guest: {e}");
                    bad_packet();
                    continue;
                }
            };
            let n = h.len as usize;
            if n > 0 && !r.read_exact(&mut self.scratch[..n]) {
                bad_packet();
                continue;
            }
            self.handle_guest_packet(&h, n, epoll);
        }
        let a = self.active.as_mut().expect("active");
        if used && a.tx.needs_notification(&mem) {
            a.irq.signal_used();
        }
    }

    fn handle_guest_packet(&mut self, h: &PacketHeader, n: usize, epoll: &Epoll) {
        let key = (h.dst_port, h.src_port);
        if !self.conns.contains_key(&key) {
            match h.op {
                OP_REQUEST => self.guest_connect(key, h, epoll),
                OP_RST => {}
                _ => self.push_ctrl(key.0, key.1, OP_RST, 0),
            }
            return;
        }
        let c = self.conns.get_mut(&key).expect("present");
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        match (c.state, h.op) {
            (_, OP_RST) => {
                self.remove(key);
                return;
            }
            (State::LocalInit, OP_RESPONSE) => {
                c.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                c.tx_buf.extend(ok.as_bytes());
                c.unpaid += ok.len();
                if c.flush().is_err() {
                    c.host_eof = true;
                }
            }
            (State::LocalInit, _) => {
                self.reset_conn(key);
                return;
            }
            (State::Established | State::Closing, OP_RW) => {
                if c.state == State::Closing || c.peer_shut_send {
                    // Data after the close: drop it (the RST is on its way or asked for).
                } else if c.tx_buf.len() - c.unpaid + n > BUF_ALLOC as usize {
                    crate::log_debug!("vsock: guest port {} overran its credit", key.1);
                    bad_packet();
                    self.reset_conn(key);
                    return;
                } else {
                    let mut written = 0;
                    if c.tx_buf.is_empty() {
                        loop {
                            match c.stream.write(&self.scratch[written..n]) {
                                Ok(0) => break,
                                Ok(k) => {
                                    written += k;
                                    if written == n {
                                        break;
                                    }
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => {
                                    c.host_eof = true;
                                    break;
                                }
                            }
                        }
                    }
                    c.tx_buf.extend(&self.scratch[written..n]);
                    c.fwd_cnt += Wrapping(crate::cast::len_u32(written));
                    self.after_forward(key);
                }
            }
            (State::Established | State::Closing, OP_SHUTDOWN) => {
                c.peer_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                c.peer_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                if (c.peer_shut_rcv && c.peer_shut_send) || c.state == State::Closing {
                    // Best effort for what is still buffered, then the end.
                    let _ = c.flush();
                    self.reset_conn(key);
                    return;
                }
                if c.peer_shut_send && c.tx_buf.is_empty() {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            (State::Established | State::Closing, OP_CREDIT_REQUEST) => {
                if !c.credit_update_queued {
                    c.credit_update_queued = true;
                    self.push_ctrl(key.0, key.1, OP_CREDIT_UPDATE, 0);
                }
            }
            (State::Established | State::Closing, OP_CREDIT_UPDATE) => {}
            // REQUEST on a live connection, RESPONSE when established: protocol errors.
            (State::Established | State::Closing, _) => {
                bad_packet();
                self.reset_conn(key);
                return;
            }
        }
        self.sync(key, epoll);
    }

    fn guest_connect(&mut self, key: Key, h: &PacketHeader, epoll: &Epoll) {
        if self.conns.len() + self.pending.len() >= MAX_CONNECTIONS {
            self.push_ctrl(key.0, key.1, OP_RST, 0);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let token = self.alloc_token();
                let mut c = Conn::new(stream, token, State::Established);
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
                self.conns.insert(key, c);
                self.by_token.insert(token, key);
                self.push_ctrl(key.0, key.1, OP_RESPONSE, 0);
                self.sync(key, epoll);
            }
            Err(e) => {
                crate::log_debug!(
                    "vsock: guest connect to host port {}: {}: {e}",
                    key.0,
                    Path::new(&path).display()
                );
                self.push_ctrl(key.0, key.1, OP_RST, 0);
            }
        }
    }

    fn header(&self, local: u32, peer: u32, op: u16, flags: u32, len: u32) -> PacketHeader {
        let (buf_alloc, fwd_cnt) = match self.conns.get(&(local, peer)) {
            Some(c) => (BUF_ALLOC, c.fwd_cnt.0),
            None => (0, 0),
        };
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Fills RX buffers: control packets first, then data from host sockets with credit.
    fn process_rx(&mut self, epoll: &Epoll) {
        if self.active.is_none() {
            return;
        }
        let mem = self.active.as_ref().expect("active").mem.clone();
        let mut used = false;
        loop {
            // Anything to send?
            let have_ctrl = !self.ctrl.is_empty();
            if !have_ctrl && self.rx_ready.is_empty() {
                break;
            }
            let a = self.active.as_mut().expect("active");
            let Some((head, chain)) = a.rx.pop(&mem) else {
                break; // the guest's RX notification brings us back
            };
            let c = match chain {
                Ok(c) if c.writable_len() >= HDR_LEN as u64 => c,
                _ => {
                    bad_packet();
                    a.rx.add_used(&mem, head, 0);
                    used = true;
                    continue;
                }
            };
            let room =
                u32::try_from((c.writable_len() - HDR_LEN as u64).min(u64::from(MAX_PKT_PAYLOAD)))
                    .unwrap_or(MAX_PKT_PAYLOAD);
            let written = if let Some(p) = self.ctrl.pop_front() {
                let h = self.header(p.local, p.peer, p.op, p.flags, 0);
                if let Some(conn) = self.conns.get_mut(&(p.local, p.peer)) {
                    conn.last_fwd_reported = conn.fwd_cnt;
                    if p.op == OP_CREDIT_UPDATE {
                        conn.credit_update_queued = false;
                    }
                }
                crate::cast::len_u32(ChainWriter::new(&mem, &c.writable).write(&h.encode()))
            } else {
                match self.read_host_data(room) {
                    Some((key, n)) => {
                        let h = self.header(key.0, key.1, OP_RW, 0, n);
                        if let Some(conn) = self.conns.get_mut(&key) {
                            conn.last_fwd_reported = conn.fwd_cnt;
                            conn.rx_cnt += Wrapping(n);
                        }
                        let mut w = ChainWriter::new(&mem, &c.writable);
                        w.write(&h.encode());
                        w.write(&self.scratch[..n as usize]);
                        // A header and at most `room` (MAX_PKT_PAYLOAD) bytes.
                        u32::try_from(w.written()).unwrap_or(u32::MAX)
                    }
                    None => {
                        // Nothing after all (would-block or EOF handled): give the buffer back.
                        self.active.as_mut().expect("active").rx.undo_pop();
                        continue;
                    }
                }
            };
            let a = self.active.as_mut().expect("active");
            a.rx.add_used(&mem, head, written);
            used = true;
        }
        let a = self.active.as_mut().expect("active");
        if used && a.rx.needs_notification(&mem) {
            a.irq.signal_used();
        }
        self.sync_all(epoll);
    }

    /// Reads up to `room` bytes (within the guest's credit) from the first ready host socket
    /// into `scratch`. Returns the connection and the count, or None when no socket had data
    /// (sockets found empty, at EOF or without credit leave `rx_ready`).
    fn read_host_data(&mut self, room: u32) -> Option<(Key, u32)> {
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let credit = c.peer_credit();
            if c.state != State::Established || c.peer_shut_rcv || credit == 0 {
                c.in_rx_ready = false;
                if credit == 0 && c.state == State::Established && !c.peer_shut_rcv {
                    // Ask the guest for its count (it sends one when it reads anyway).
                    self.ctrl.push_back(Ctrl {
                        local: key.0,
                        peer: key.1,
                        op: OP_CREDIT_REQUEST,
                        flags: 0,
                    });
                }
                continue;
            }
            let want = room.min(credit) as usize;
            match c.stream.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    // The host closed: SHUTDOWN both ways, wait for the guest's RST.
                    c.in_rx_ready = false;
                    c.host_eof = true;
                    c.state = State::Closing;
                    self.ctrl.push_back(Ctrl {
                        local: key.0,
                        peer: key.1,
                        op: OP_SHUTDOWN,
                        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
                    });
                    return None;
                }
                Ok(n) => {
                    // Keep it in the rotation: there may be more.
                    self.rx_ready.push_back(key);
                    return Some((key, crate::cast::len_u32(n)));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.rx_ready.push_front(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drained: epoll (IN interest again after sync) says when there is more.
                    c.in_rx_ready = false;
                }
                Err(_) => {
                    c.in_rx_ready = false;
                    c.host_eof = true;
                    c.state = State::Closing;
                    self.ctrl.push_back(Ctrl {
                        local: key.0,
                        peer: key.1,
                        op: OP_SHUTDOWN,
                        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
                    });
                    return None;
                }
            }
        }
        None
    }

    fn process_event_queue(&mut self) {
        let Some(a) = &mut self.active else { return };
        if !self.reset_event_pending {
            return;
        }
        let Some((head, chain)) = a.ev.pop(&a.mem) else {
            return;
        };
        let len = match chain {
            Ok(c) if c.writable_len() >= 4 => crate::cast::len_u32(
                ChainWriter::new(&a.mem, &c.writable).write(&EVENT_TRANSPORT_RESET.to_le_bytes()),
            ),
            _ => 0,
        };
        a.ev.add_used(&a.mem, head, len);
        if len == 4 {
            self.reset_event_pending = false;
        }
        if a.ev.needs_notification(&a.mem) {
            a.irq.signal_used();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        COMMON_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let c = self.guest_cid.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = crate::cast::usize_from(offset)
                .checked_add(i)
                .and_then(|j| c.get(j))
                .copied()
                .unwrap_or(0);
        }
    }
    fn activate(&mut self, mut ctx: ActiveContext, _epoll: &Epoll) -> Result<(), String> {
        if ctx.queues.len() != 3 {
            return Err("virtio-vsock needs 3 queues".into());
        }
        let ev = ctx.queues.pop().ok_or("event queue")?;
        let tx = ctx.queues.pop().ok_or("tx queue")?;
        let rx = ctx.queues.pop().ok_or("rx queue")?;
        // No syscalls here (vCPU thread): the queue events the transport raises right after
        // activation run the first RX pass (host connections that waited) on the event loop.
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            ev,
            irq: ctx.interrupt,
        });
        Ok(())
    }
    fn reset(&mut self, _epoll: &Epoll) {
        self.active = None;
        self.drop_all();
    }
    fn queue_event(&mut self, idx: usize, epoll: &Epoll) {
        match idx {
            RXQ => {}
            TXQ => self.process_tx(epoll),
            EVQ => self.process_event_queue(),
            _ => return,
        }
        self.process_rx(epoll);
    }
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![(self.listener.as_raw_fd(), TOKEN_LISTENER)]
    }
    fn event(&mut self, token: u64, epoll: &Epoll) {
        self.event_set(token, EventSet::IN, epoll);
    }
    fn event_set(&mut self, token: u64, events: EventSet, epoll: &Epoll) {
        if token == TOKEN_LISTENER {
            self.accept(epoll);
        } else if self.pending.contains_key(&token) {
            self.read_connect_line(token, epoll);
        } else {
            self.on_conn_event(token, events, epoll);
        }
        self.process_rx(epoll);
    }
    fn restored(&mut self, epoll: &Epoll) {
        // Connections lived in the old process: the guest must drop its sockets.
        self.transport_reset(epoll);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test data, sizes and counters are small"
)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{
        VsockGuest as Guest, VSOCK_RX_BUF as RX_BUF, VSOCK_RX_SLOTS as RX_SLOTS,
    };
    use std::io::{BufRead, BufReader};
    use std::time::Duration;
    use vm_memory::{Bytes, GuestAddress};

    const CID: u64 = 3;

    fn pkt(src_port: u32, dst_port: u32, op: u16, len: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 << 10,
            fwd_cnt,
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[test]
    fn host_initiated_connection_both_ways_with_credit() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut g = Guest::new(CID, &uds);
        let mut host = UnixStream::connect(&uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        let p = g.recv();
        assert_eq!(p.len(), 1, "{p:?}");
        let req = p[0].0;
        assert_eq!(
            (req.op, req.dst_port, req.buf_alloc),
            (OP_REQUEST, 52, BUF_ALLOC)
        );
        assert!(req.src_port >= FIRST_LOCAL_PORT);
        let local = req.src_port;
        g.send(pkt(52, local, OP_RESPONSE, 0, 0), &[]);
        let mut line = String::new();
        BufReader::new(host.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {local}\n"));

        // Host -> guest, 200 KiB against a guest buffer of 64 KiB: the device stops at the
        // guest's credit until the guest reports what it consumed.
        let data = pattern(200 << 10, 7);
        let mut w = host.try_clone().unwrap();
        let d2 = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
        let mut got = Vec::new();
        let mut stalls = 0;
        let mut reported = 0usize;
        while got.len() < data.len() {
            let mut progress = false;
            for (h, b) in g.recv() {
                match h.op {
                    OP_RW => {
                        assert_eq!((h.src_port, h.dst_port), (local, 52));
                        got.extend_from_slice(&b);
                        progress = true;
                    }
                    OP_CREDIT_REQUEST => {}
                    op => panic!("unexpected op {op}"),
                }
            }
            assert!(
                got.len() - reported <= 64 << 10,
                "device overran the guest's credit: {} bytes unreported",
                got.len() - reported
            );
            if !progress {
                std::thread::sleep(Duration::from_millis(5));
                if got.len() - reported == 64 << 10 {
                    // Credit exhausted: the guest's reader consumed everything; tell the device.
                    stalls += 1;
                    reported = got.len();
                    g.send(pkt(52, local, OP_CREDIT_UPDATE, 0, reported as u32), &[]);
                }
            }
        }
        writer.join().unwrap();
        assert_eq!(got, data, "host -> guest bytes intact");
        assert!(
            stalls >= 2,
            "the 64 KiB guest buffer must have stalled the sender"
        );
        let guest_fwd = got.len() as u32;

        // Guest -> host, 1 MiB honouring the device's credit; the host reads only after the
        // device's buffer filled, so credit updates must arrive to finish.
        let data = pattern(1 << 20, 9);
        let (mut dev_buf_alloc, mut dev_fwd) = (req.buf_alloc, req.fwd_cnt);
        let mut sent = 0usize;
        let mut updates = 0;
        let mut blocked = false;
        let mut reader: Option<std::thread::JoinHandle<Vec<u8>>> = None;
        while sent < data.len() {
            let credit = dev_buf_alloc as usize - (sent - dev_fwd as usize);
            if credit == 0 {
                blocked = true;
                if reader.is_none() {
                    let mut r = host.try_clone().unwrap();
                    let n = data.len();
                    reader = Some(std::thread::spawn(move || {
                        let mut v = vec![0u8; n];
                        r.read_exact(&mut v).unwrap();
                        v
                    }));
                }
                std::thread::sleep(Duration::from_millis(2));
            } else {
                let n = credit.min(4096).min(data.len() - sent);
                g.send(
                    pkt(52, local, OP_RW, n as u32, guest_fwd),
                    &data[sent..sent + n],
                );
                sent += n;
            }
            for (h, _) in g.recv() {
                assert_ne!(h.op, OP_RST, "device reset the connection");
                if h.op == OP_CREDIT_UPDATE {
                    updates += 1;
                }
                dev_buf_alloc = h.buf_alloc;
                dev_fwd = h.fwd_cnt;
            }
        }
        let reader = reader.expect("credit ran out before the host read");
        assert!(blocked);
        while !reader.is_finished() {
            g.pump();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(reader.join().unwrap(), data, "guest -> host bytes intact");
        assert!(updates > 0, "unsolicited credit updates");
        for (h, _) in g.recv() {
            dev_fwd = h.fwd_cnt;
        }
        // Everything forwarded; the last count the guest heard is within the threshold.
        assert!(data.len() - dev_fwd as usize <= CREDIT_UPDATE_THRESHOLD as usize);

        // The host closes: SHUTDOWN to the guest, which answers RST; the connection is gone.
        drop(host);
        let p = g.recv();
        assert!(
            p.iter()
                .any(|(h, _)| h.op == OP_SHUTDOWN && h.flags == SHUTDOWN_RCV | SHUTDOWN_SEND),
            "{p:?}"
        );
        assert_eq!(g.dev().connection_count(), 1);
        g.send(pkt(52, local, OP_RST, 0, 0), &[]);
        assert_eq!(g.dev().connection_count(), 0);
    }

    #[test]
    fn guest_initiated_connection_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
        let mut g = Guest::new(CID, &uds);
        g.send(pkt(1234, 5000, OP_REQUEST, 0, 0), &[]);
        let p = g.recv();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].0.op, p[0].0.src_port, p[0].0.dst_port),
            (OP_RESPONSE, 5000, 1234)
        );
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"hello guest").unwrap();
        let p = g.recv();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0.op, &p[0].1[..]), (OP_RW, &b"hello guest"[..]));
        g.send(pkt(1234, 5000, OP_RW, 10, 11), b"hello host");
        let mut b = [0u8; 10];
        host.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello host");
        // Guest half-close (SEND): the host sees EOF but can still write.
        let mut sh = pkt(1234, 5000, OP_SHUTDOWN, 0, 11);
        sh.flags = SHUTDOWN_SEND;
        g.send(sh, &[]);
        assert_eq!(host.read(&mut b).unwrap(), 0, "EOF after SHUTDOWN(SEND)");
        host.write_all(b"late").unwrap();
        let p = g.recv();
        assert_eq!((p[0].0.op, &p[0].1[..]), (OP_RW, &b"late"[..]));
        // Full shutdown: RST from the device, connection gone.
        sh.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
        g.send(sh, &[]);
        let p = g.recv();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.op, OP_RST);
        assert_eq!(g.dev().connection_count(), 0);

        // Nobody listens on 5001: RST.
        g.send(pkt(1235, 5001, OP_REQUEST, 0, 0), &[]);
        let p = g.recv();
        assert_eq!((p[0].0.op, p[0].0.dst_port), (OP_RST, 1235));
        assert_eq!(g.dev().connection_count(), 0);
    }

    #[test]
    fn malformed_packets_are_dropped_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let _l = UnixListener::bind(dir.path().join("v.sock_7000")).unwrap();
        let mut g = Guest::new(CID, &uds);
        let bad0 = crate::metrics::METRICS
            .virtio_bad_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        let a = g.tx_area;
        // Header cut short.
        g.mem.write_slice(&[1u8; 20], GuestAddress(a)).unwrap();
        g.send_raw(&[(a, 20, false)]);
        // Length beyond the chain, above the limit, wrong CIDs, wrong type, unknown op.
        g.send(pkt(1, 7000, OP_RW, 100, 0), &[0u8; 10][..0]);
        g.send(pkt(1, 7000, OP_RW, MAX_PKT_PAYLOAD + 1, 0), &[]);
        let mut h = pkt(1, 7000, OP_REQUEST, 0, 0);
        h.src_cid = 99;
        g.send(h, &[]);
        let mut h = pkt(1, 7000, OP_REQUEST, 0, 0);
        h.dst_cid = 7;
        g.send(h, &[]);
        let mut h = pkt(1, 7000, OP_REQUEST, 0, 0);
        h.type_ = 2;
        g.send(h, &[]);
        g.send(pkt(1, 7000, 99, 0, 0), &[]);
        // A device-writable buffer in a TX chain (a malformed chain for this device).
        g.send_raw(&[(a, HDR_LEN as u32, true)]);
        assert!(g.recv().is_empty(), "dropped packets get no answer");
        let bad1 = crate::metrics::METRICS
            .virtio_bad_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(bad1 >= bad0 + 7, "{bad0} -> {bad1}");
        // Data for a connection that does not exist: RST; an RST for one: nothing.
        g.send(pkt(2, 7000, OP_RW, 3, 0), b"abc");
        g.send(pkt(2, 7000, OP_RST, 0, 0), &[]);
        let p = g.recv();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0.op, p[0].0.dst_port), (OP_RST, 2));
        // An RX buffer too small for a header is returned empty; the next one is used. First
        // use up the posted buffers (32 RSTs), then post a small and a good one.
        for port in 100..100 + RX_SLOTS as u32 {
            g.send(pkt(port, 7000, OP_RW, 1, 0), b"x");
        }
        let used = g.rxq.take_used(&g.mem);
        assert_eq!(used.len(), RX_SLOTS);
        let small = g.d.alloc(16, 8);
        let hs = g.rxq.add(&g.mem, &[(small, 16, true)]);
        let good = g.d.alloc(u64::from(RX_BUF), 8);
        let hg = g.rxq.add(&g.mem, &[(good, RX_BUF, true)]);
        // The device still works.
        g.send(pkt(3, 7000, OP_REQUEST, 0, 0), &[]);
        g.pump();
        let used = g.rxq.take_used(&g.mem);
        assert_eq!(
            used,
            vec![(u32::from(hs), 0), (u32::from(hg), HDR_LEN as u32)]
        );
        let mut b = [0u8; HDR_LEN];
        g.mem.read_slice(&mut b, GuestAddress(good)).unwrap();
        assert_eq!(PacketHeader::decode(&b).unwrap().op, OP_RESPONSE);
        assert_eq!(g.dev().connection_count(), 1);
        // A garbage CONNECT line closes the host connection.
        let mut host = UnixStream::connect(&uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"HELLO 52\n").unwrap();
        g.pump();
        let mut b = [0u8; 4];
        assert_eq!(host.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn corrupt_available_index_stops_the_queue_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Guest::new(CID, &dir.path().join("v.sock"));
        // More entries "available" than the ring holds: the device must return, not spin.
        let bogus = g.txq.avail_idx().wrapping_add(1000);
        g.mem
            .write_obj(bogus.to_le(), GuestAddress(g.txq.avail + 2))
            .unwrap();
        g.d.notify(&mut g.t, 1);
        assert!(g.recv().is_empty());
    }

    #[test]
    fn header_parsing_checks() {
        let h = pkt(1, 2, OP_RW, 5, 0);
        assert_eq!(PacketHeader::decode(&h.encode()).unwrap(), h);
        assert_eq!(
            PacketHeader::parse_guest(&h.encode()[..43], 5, CID),
            Err(PacketError::Short(43))
        );
        assert_eq!(
            PacketHeader::parse_guest(&h.encode(), 4, CID),
            Err(PacketError::Truncated { len: 5, avail: 4 })
        );
        assert!(PacketHeader::parse_guest(&h.encode(), 5, CID).is_ok());
        assert!(PacketHeader::parse_guest(&h.encode(), 5, 4).is_err());
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
    }

    #[test]
    fn transport_reset_event_drops_connections() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(dir.path().join("v.sock_6000")).unwrap();
        let mut g = Guest::new(CID, &uds);
        let ev = g.d.alloc(8, 8);
        let head = g.evq.add(&g.mem, &[(ev, 4, true)]);
        g.d.notify(&mut g.t, 2);
        g.send(pkt(1, 6000, OP_REQUEST, 0, 0), &[]);
        assert_eq!(g.recv()[0].0.op, OP_RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        g.d.take_interrupts(&mut g.t);
        g.t.with_device(|d, ep| {
            d.as_any_mut()
                .downcast_mut::<Vsock>()
                .unwrap()
                .transport_reset(ep)
        });
        assert_eq!(g.evq.take_used(&g.mem), vec![(u32::from(head), 4)]);
        let id: u32 = g.mem.read_obj(GuestAddress(ev)).unwrap();
        assert_eq!(id, EVENT_TRANSPORT_RESET);
        assert!(g.d.take_interrupts(&mut g.t) >= 1);
        assert_eq!(g.dev().connection_count(), 0);
        let mut b = [0u8; 1];
        assert_eq!(host.read(&mut b).unwrap(), 0, "host socket closed");
    }

    #[test]
    fn stale_socket_file_is_replaced_but_a_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        drop(UnixListener::bind(&uds).unwrap()); // leaves the file, nobody listens
        let v = Vsock::new(CID, &uds).unwrap();
        let e = Vsock::new(CID, &uds).unwrap_err().to_string();
        assert!(e.contains("something listens"), "{e}");
        drop(v);
        assert!(!uds.exists(), "the device removes its socket");
    }
}
