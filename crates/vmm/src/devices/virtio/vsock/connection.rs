//! One vsock connection: its host socket, where it is in the handshake, and both directions'
//! credit counters (virtio 1.2 §5.10.6.3). The muxer owns the connections and decides what
//! happens on each packet; a connection only moves bytes to its host socket and does the
//! arithmetic.

use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

/// `(host port, guest port)`.
pub(super) type Key = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: REQUEST sent (or queued), waiting for the guest's RESPONSE.
    LocalInit,
    Established,
    /// We sent SHUTDOWN after the host closed; waiting for the guest's RST.
    Closing,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) token: u64,
    pub(super) state: State,
    /// Guest's receive buffer and how much of what we sent it has consumed.
    pub(super) peer_buf_alloc: u32,
    pub(super) peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    pub(super) rx_cnt: Wrapping<u32>,
    /// Payload bytes from the guest handed to the host socket, and the value last reported.
    pub(super) fwd_cnt: Wrapping<u32>,
    pub(super) last_fwd_reported: Wrapping<u32>,
    /// Bytes for the host socket that it could not take yet (includes the `OK` line).
    pub(super) tx_buf: std::collections::VecDeque<u8>,
    /// Leading bytes of `tx_buf` that are not guest payload (the `OK` line).
    pub(super) unpaid: usize,
    pub(super) peer_shut_send: bool,
    pub(super) peer_shut_rcv: bool,
    /// The host socket reported EOF/HUP (it is out of the epoll set then).
    pub(super) host_eof: bool,
    pub(super) credit_update_queued: bool,
    /// Current epoll interest (None = not registered).
    pub(super) interest: Option<EventSet>,
    /// Waiting in the muxer's `rx_ready` for RX buffers.
    pub(super) in_rx_ready: bool,
}

impl Conn {
    pub(super) fn new(stream: UnixStream, token: u64, state: State) -> Conn {
        Conn {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_reported: Wrapping(0),
            tx_buf: std::collections::VecDeque::new(),
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
    pub(super) fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Has a reason to read the host socket (whether epoll says it is readable or not).
    pub(super) fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.peer_shut_rcv
            && !self.in_rx_ready
            && self.peer_credit() > 0
    }

    /// Writes `tx_buf` to the host socket, counting forwarded payload bytes in `fwd_cnt` (the
    /// `OK` line at the front is not payload); Err on a broken socket.
    pub(super) fn flush(&mut self) -> io::Result<usize> {
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

    /// Hands guest payload to the host socket: written at once when nothing is queued before
    /// it, the rest kept in `tx_buf` (the caller checked it fits the credit we advertised).
    /// A broken socket marks `host_eof`.
    pub(super) fn send_to_host(&mut self, data: &[u8]) {
        let n = data.len();
        let mut written = 0;
        if self.tx_buf.is_empty() {
            loop {
                match self.stream.write(&data[written..n]) {
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
                        self.host_eof = true;
                        break;
                    }
                }
            }
        }
        self.tx_buf.extend(&data[written..n]);
        self.fwd_cnt += Wrapping(crate::cast::len_u32(written));
    }
}
