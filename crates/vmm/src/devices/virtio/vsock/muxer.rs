//! The vsock connection multiplexer: owns the listener on `uds_path`, the host connections
//! still sending their `CONNECT` line, and every established connection; routes packets from
//! the guest to their connection (or answers RST), and hands the device the next packet for
//! the guest (control packets first, then host data within the guest's credit). Keeps each
//! host socket's epoll interest in line with what its connection waits for, so nothing spins.
//! Runs on the event loop thread, except [`Muxer::drop_all`] (a device reset, on a vCPU thread).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Conn, Key, State};
use super::packet::{
    PacketHeader, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::uds::{bind_listener, connect_nonblocking, parse_connect, MAX_CONNECT_LINE};
use super::{bad_packet, BUF_ALLOC, CREDIT_UPDATE_THRESHOLD, MAX_CONNECTIONS};
use crate::devices::virtio::DEVICE_TOKEN_BASE;

/// First host port for host-initiated connections (as Firecracker).
pub(super) const FIRST_LOCAL_PORT: u32 = 1 << 30;

pub(super) const TOKEN_LISTENER: u64 = DEVICE_TOKEN_BASE;
const TOKEN_CONN_BASE: u64 = DEVICE_TOKEN_BASE + 16;

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

/// The connections of one vsock device and their host sockets.
#[derive(Debug)]
pub(super) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<Key, Conn>,
    by_token: HashMap<u64, Key>,
    pending: HashMap<u64, PendingHost>,
    ctrl: VecDeque<Ctrl>,
    rx_ready: VecDeque<Key>,
    next_token: u64,
    next_local_port: u32,
}

impl Muxer {
    /// Listens on `uds_path` (non-blocking).
    pub(super) fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Muxer> {
        let listener = bind_listener(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_token: TOKEN_CONN_BASE,
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    pub(super) fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub(super) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Drops every connection and pending host connection (their sockets close).
    pub(super) fn drop_all(&mut self) {
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

    pub(super) fn sync_all(&mut self, epoll: &Epoll) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.sync(k, epoll);
        }
    }

    // ---- host side ----

    /// An event on one of the muxer's fds: the listener, a pending host connection or a
    /// connection's host socket.
    pub(super) fn event(&mut self, token: u64, events: EventSet, epoll: &Epoll) {
        if token == TOKEN_LISTENER {
            self.accept(epoll);
        } else if self.pending.contains_key(&token) {
            self.read_connect_line(token, epoll);
        } else {
            self.on_conn_event(token, events, epoll);
        }
    }

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

    /// A checked packet from the guest with its `payload` (`h.len` bytes).
    pub(super) fn handle_guest_packet(&mut self, h: &PacketHeader, payload: &[u8], epoll: &Epoll) {
        let n = payload.len();
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
                    c.send_to_host(payload);
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

    /// Something may be waiting for the guest: a control packet or a host socket to read.
    pub(super) fn has_rx(&self) -> bool {
        !self.ctrl.is_empty() || !self.rx_ready.is_empty()
    }

    /// The next packet for the guest, for an RX buffer with `room` payload bytes: a control
    /// packet if one waits, else data read from a host socket into `scratch` (the header's
    /// `len` bytes). None when no socket had data after all.
    pub(super) fn next_rx(&mut self, room: u32, scratch: &mut [u8]) -> Option<PacketHeader> {
        if let Some(p) = self.ctrl.pop_front() {
            let h = self.header(p.local, p.peer, p.op, p.flags, 0);
            if let Some(conn) = self.conns.get_mut(&(p.local, p.peer)) {
                conn.last_fwd_reported = conn.fwd_cnt;
                if p.op == OP_CREDIT_UPDATE {
                    conn.credit_update_queued = false;
                }
            }
            return Some(h);
        }
        let (key, n) = self.read_host_data(room, scratch)?;
        let h = self.header(key.0, key.1, OP_RW, 0, n);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.last_fwd_reported = conn.fwd_cnt;
            conn.rx_cnt += Wrapping(n);
        }
        Some(h)
    }

    /// Reads up to `room` bytes (within the guest's credit) from the first ready host socket
    /// into `scratch`. Returns the connection and the count, or None when no socket had data
    /// (sockets found empty, at EOF or without credit leave `rx_ready`).
    fn read_host_data(&mut self, room: u32, scratch: &mut [u8]) -> Option<(Key, u32)> {
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
            match c.stream.read(&mut scratch[..want]) {
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
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
