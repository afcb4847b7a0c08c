//! The MMDS network stack of one virtio-net device: takes the guest's frames addressed to the
//! MMDS (ARP requests for its address, IPv4 to its address) out of the transmit path and
//! answers them with frames for the device's receive queue.
//!
//! A deliberately small TCP responder (Firecracker's "dumbo" plays the same part): a passive
//! open on port 80 only (anything else is reset), in-order data only (out-of-order segments
//! are dropped and re-acknowledged, the guest resends), no window scaling (at most 64 KiB in
//! flight), no retransmission timer: our frames go straight into the guest's receive ring, so
//! they are lost only if the guest drops them, and a duplicate acknowledgement (the guest's
//! answer to a gap) makes us resend everything not yet acknowledged. Bounded everywhere: at
//! most [`MAX_CONNECTIONS`] connections (the least recently active one is reset to make room),
//! [`guest_http::MAX_REQUEST`] bytes of unanswered request per connection (that is also the
//! window we advertise), 256 KiB of unacknowledged answers per connection (then it stops
//! reading requests), [`MAX_PENDING_FRAMES`] frames waiting for receive buffers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::guest_http::{self, Parsed};
use super::wire::{self, Arp, Eth, Ipv4, SegmentOut, Tcp, ACK, FIN, PSH, RST, SYN};
use super::{Mmds, MMDS_MAC};

pub const MAX_CONNECTIONS: usize = 32;
pub const MAX_PENDING_FRAMES: usize = 1024;
/// A connection stops reading requests while this much of its answers is unacknowledged (a
/// guest that pipelines requests and never reads cannot grow the VMM's memory).
const MAX_UNSENT: usize = 256 * 1024;
const HTTP_PORT: u16 = 80;
/// Our MSS (an Ethernet MTU's worth) and the guest's when it sends none (RFC 9293).
const OUR_MSS: u16 = 1460;
const DEFAULT_MSS: u16 = 536;

/// What a transmitted frame was to the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not for the MMDS: the frame goes to the tap.
    Pass,
    /// Taken (answered or dropped): it must not reach the tap.
    Taken,
}

type Key = ([u8; 4], u16);

#[derive(Debug)]
struct Conn {
    guest_mac: [u8; 6],
    /// Next sequence number expected from the guest.
    rcv_nxt: u32,
    /// Sequence number of `out[0]` (after the SYN-ACK is acknowledged, the oldest
    /// unacknowledged byte).
    data_seq: u32,
    /// Bytes to send from `data_seq` on; the first `sent` are in flight.
    out: VecDeque<u8>,
    sent: usize,
    /// Our SYN is acknowledged.
    established: bool,
    /// We close after `out` (the request asked to close, or the guest closed).
    closing: bool,
    fin_sent: bool,
    fin_acked: bool,
    guest_fin: bool,
    peer_window: u32,
    mss: usize,
    /// Request bytes not yet answered.
    inbuf: Vec<u8>,
    last_ack_seen: u32,
    dup_acks: u8,
    /// When the connection last saw a segment (the stack's own clock).
    last_active: u64,
}

/// One device's MMDS responder.
#[derive(Debug)]
pub struct MmdsStack {
    ip: [u8; 4],
    mmds: Arc<Mutex<Mmds>>,
    conns: HashMap<Key, Conn>,
    frames: VecDeque<Vec<u8>>,
    ip_id: u16,
    clock: u64,
    /// Frames dropped because `frames` was full (the guest was not taking them).
    pub dropped: u64,
}

impl MmdsStack {
    pub fn new(ip: [u8; 4], mmds: Arc<Mutex<Mmds>>) -> MmdsStack {
        MmdsStack {
            ip,
            mmds,
            conns: HashMap::new(),
            frames: VecDeque::new(),
            ip_id: 0,
            clock: 0,
            dropped: 0,
        }
    }

    /// The next frame for the guest (Ethernet, without the virtio-net header).
    pub fn pop_frame(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }

    pub fn has_frames(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Open connections (tests, metrics).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn push(&mut self, f: Vec<u8>) {
        if self.frames.len() >= MAX_PENDING_FRAMES {
            self.dropped += 1;
            return;
        }
        self.frames.push_back(f);
    }

    /// Looks at one frame the guest transmits (Ethernet, without the virtio-net header).
    pub fn handle_frame(&mut self, frame: &[u8]) -> Verdict {
        let Some(eth) = Eth::parse(frame) else {
            return Verdict::Pass;
        };
        match eth.ethertype {
            wire::ETHERTYPE_ARP => match Arp::parse(eth.payload) {
                Some(a) if a.target_ip == self.ip => {
                    if a.op == wire::ARP_REQUEST {
                        self.push(wire::arp_reply(&a, MMDS_MAC, self.ip));
                    }
                    Verdict::Taken
                }
                _ => Verdict::Pass,
            },
            wire::ETHERTYPE_IPV4 => {
                let Some(ip) = Ipv4::parse(eth.payload) else {
                    return Verdict::Pass;
                };
                if ip.dst != self.ip {
                    return Verdict::Pass;
                }
                // Only unfragmented TCP is answered; the rest addressed to the MMDS is dropped.
                if ip.proto == wire::PROTO_TCP && !ip.fragment {
                    if let Some(t) = Tcp::parse(ip.payload) {
                        self.clock += 1;
                        self.segment(eth.src, ip.src, &t);
                    }
                }
                Verdict::Taken
            }
            _ => Verdict::Pass,
        }
    }

    fn out(&mut self, mac: [u8; 6], key: Key, seq: u32, ack: u32, flags: u8) -> SegmentOut {
        self.ip_id = self.ip_id.wrapping_add(1);
        SegmentOut {
            src_mac: MMDS_MAC,
            dst_mac: mac,
            src_ip: self.ip,
            dst_ip: key.0,
            src_port: HTTP_PORT,
            dst_port: key.1,
            seq,
            ack,
            flags,
            window: 0,
            mss: None,
            ip_id: self.ip_id,
        }
    }

    /// A reset for a segment that has no connection (RFC 9293 §3.10.7.1).
    fn reset(&mut self, mac: [u8; 6], key: Key, t: &Tcp) {
        if t.flags & RST != 0 {
            return;
        }
        let mut seg = if t.flags & ACK != 0 {
            self.out(mac, key, t.ack, 0, RST)
        } else {
            self.out(mac, key, 0, t.seq.wrapping_add(t.seq_len()), RST | ACK)
        };
        // From the port the segment was sent to (not always ours).
        seg.src_port = t.dst_port;
        self.push(seg.frame(&[]));
    }

    fn segment(&mut self, mac: [u8; 6], src: [u8; 4], t: &Tcp) {
        let key = (src, t.src_port);
        if t.dst_port != HTTP_PORT {
            self.reset(mac, key, t);
            return;
        }
        if t.flags & RST != 0 {
            self.conns.remove(&key);
            return;
        }
        if t.flags & SYN != 0 && t.flags & ACK == 0 {
            self.open(mac, key, t);
            return;
        }
        let Some(mut c) = self.conns.remove(&key) else {
            self.reset(mac, key, t);
            return;
        };
        c.last_active = self.clock;
        if self.on_segment(&mut c, key, t) {
            self.conns.insert(key, c);
        }
    }

    /// A SYN: a new connection (replacing one with the same guest address and port).
    fn open(&mut self, mac: [u8; 6], key: Key, t: &Tcp) {
        self.conns.remove(&key);
        if self.conns.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last_active)
                .map(|(k, _)| *k)
            {
                if let Some(c) = self.conns.remove(&oldest) {
                    let seq = c.data_seq.wrapping_add(len32(c.sent));
                    let seg = self.out(c.guest_mac, oldest, seq, c.rcv_nxt, RST | ACK);
                    self.push(seg.frame(&[]));
                }
            }
        }
        let mut iss = [0u8; 4];
        // A predictable initial sequence number only matters to an attacker on the path,
        // and the path is this process: a failing random source falls back to the clock.
        if getrandom::fill(&mut iss).is_err() {
            iss = u32::try_from(self.clock & 0xffff_ffff)
                .unwrap_or(0)
                .to_be_bytes();
        }
        let iss = u32::from_be_bytes(iss);
        let c = Conn {
            guest_mac: mac,
            rcv_nxt: t.seq.wrapping_add(1),
            data_seq: iss.wrapping_add(1),
            out: VecDeque::new(),
            sent: 0,
            established: false,
            closing: false,
            fin_sent: false,
            fin_acked: false,
            guest_fin: false,
            peer_window: u32::from(t.window),
            mss: usize::from(t.mss.unwrap_or(DEFAULT_MSS).clamp(64, OUR_MSS)),
            inbuf: Vec::new(),
            last_ack_seen: 0,
            dup_acks: 0,
            last_active: self.clock,
        };
        self.syn_ack(&c, key, iss);
        self.conns.insert(key, c);
    }

    fn syn_ack(&mut self, c: &Conn, key: Key, iss: u32) {
        let mut seg = self.out(c.guest_mac, key, iss, c.rcv_nxt, SYN | ACK);
        seg.mss = Some(OUR_MSS);
        seg.window = window_of(c);
        self.push(seg.frame(&[]));
    }

    /// A segment of an open connection; false when the connection is over.
    fn on_segment(&mut self, c: &mut Conn, key: Key, t: &Tcp) -> bool {
        if t.flags & ACK == 0 {
            return true;
        }
        // Acknowledgement of what we sent.
        let ack = t.ack;
        if !c.established {
            if ack != c.data_seq {
                // Not an ACK of our SYN-ACK: send it again.
                self.syn_ack(c, key, c.data_seq.wrapping_sub(1));
                return true;
            }
            c.established = true;
            c.last_ack_seen = ack;
        }
        c.peer_window = u32::from(t.window);
        let acked = ack.wrapping_sub(c.data_seq);
        let in_flight = len32(c.sent) + u32::from(c.fin_sent && !c.fin_acked);
        if acked != 0 && acked <= in_flight {
            let data = usize::try_from(acked).unwrap_or(usize::MAX).min(c.sent);
            c.out.drain(..data);
            c.sent -= data;
            c.data_seq = c.data_seq.wrapping_add(len32(data));
            if c.fin_sent && ack == c.data_seq.wrapping_add(1) && c.out.is_empty() {
                c.fin_acked = true;
            }
            c.dup_acks = 0;
        } else if acked == 0
            && t.payload.is_empty()
            && t.flags & FIN == 0
            && in_flight > 0
            && ack == c.last_ack_seen
        {
            // The guest acknowledges the same byte again: it saw a gap. Resend.
            c.dup_acks = c.dup_acks.saturating_add(1);
            if c.dup_acks >= 2 {
                c.sent = 0;
                c.fin_sent = false;
                c.dup_acks = 0;
            }
        }
        c.last_ack_seen = ack;

        // The guest's data, in order only.
        let mut must_ack = false;
        if !t.payload.is_empty() || t.flags & FIN != 0 {
            must_ack = true;
            if t.seq == c.rcv_nxt && !c.guest_fin {
                let room = guest_http::MAX_REQUEST.saturating_sub(c.inbuf.len());
                let take = if c.closing {
                    t.payload.len()
                } else {
                    t.payload.len().min(room)
                };
                if !c.closing {
                    c.inbuf.extend_from_slice(&t.payload[..take]);
                }
                c.rcv_nxt = c.rcv_nxt.wrapping_add(len32(take));
                if take == t.payload.len() && t.flags & FIN != 0 {
                    c.rcv_nxt = c.rcv_nxt.wrapping_add(1);
                    c.guest_fin = true;
                }
            }
        }
        // New requests, or ones held back until earlier answers were acknowledged.
        self.answer_requests(c);
        if c.guest_fin {
            c.closing = true;
        }
        let sent_any = self.transmit(c, key);
        if must_ack && !sent_any {
            let mut seg = self.out(c.guest_mac, key, self_seq(c), c.rcv_nxt, ACK);
            seg.window = window_of(c);
            self.push(seg.frame(&[]));
        }
        !(c.fin_acked && c.guest_fin)
    }

    /// Answers every whole request in the connection's buffer.
    fn answer_requests(&mut self, c: &mut Conn) {
        while !c.closing && !c.inbuf.is_empty() && c.out.len() < MAX_UNSENT {
            let parsed = {
                let mut m = self.mmds.lock().unwrap_or_else(|e| e.into_inner());
                guest_http::respond(&c.inbuf, &mut m)
            };
            match parsed {
                Parsed::Incomplete => {
                    if c.inbuf.len() >= guest_http::MAX_REQUEST {
                        // Cannot happen (respond answers a full buffer), but never stall.
                        c.closing = true;
                    }
                    break;
                }
                Parsed::Answered {
                    response,
                    close,
                    used,
                } => {
                    c.inbuf.drain(..used.min(c.inbuf.len()));
                    c.out.extend(response);
                    if close {
                        c.closing = true;
                        c.inbuf.clear();
                    }
                }
            }
        }
    }

    /// Sends what the window allows; true if a segment went out.
    fn transmit(&mut self, c: &mut Conn, key: Key) -> bool {
        let mut any = false;
        let window = usize::try_from(c.peer_window).unwrap_or(usize::MAX);
        while c.established && c.sent < c.out.len() && c.sent < window {
            let n = (c.out.len() - c.sent).min(c.mss).min(window - c.sent);
            let payload: Vec<u8> = c.out.range(c.sent..c.sent + n).copied().collect();
            let seq = c.data_seq.wrapping_add(len32(c.sent));
            let mut seg = self.out(c.guest_mac, key, seq, c.rcv_nxt, ACK | PSH);
            seg.window = window_of(c);
            self.push(seg.frame(&payload));
            c.sent += n;
            any = true;
        }
        if c.established && c.closing && !c.fin_sent && c.sent == c.out.len() {
            let seq = c.data_seq.wrapping_add(len32(c.sent));
            let mut seg = self.out(c.guest_mac, key, seq, c.rcv_nxt, FIN | ACK);
            seg.window = window_of(c);
            self.push(seg.frame(&[]));
            c.fin_sent = true;
            any = true;
        }
        any
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The next sequence number we would send.
fn self_seq(c: &Conn) -> u32 {
    c.data_seq
        .wrapping_add(len32(c.sent))
        .wrapping_add(u32::from(c.fin_sent))
}

fn window_of(c: &Conn) -> u16 {
    u16::try_from(guest_http::MAX_REQUEST.saturating_sub(c.inbuf.len())).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmds::MmdsVersion;
    use serde_json::json;

    const GUEST_MAC: [u8; 6] = [6, 0, 0xac, 0x10, 0, 2];
    const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
    const MMDS_IP: [u8; 4] = [169, 254, 169, 254];

    /// A guest's TCP endpoint, speaking to the stack with real frames.
    struct Guest {
        port: u16,
        seq: u32,
        ack: u32,
        window: u16,
    }

    impl Guest {
        fn seg(&self, flags: u8, seq: u32, payload: &[u8], mss: Option<u16>) -> Vec<u8> {
            SegmentOut {
                src_mac: GUEST_MAC,
                dst_mac: MMDS_MAC,
                src_ip: GUEST_IP,
                dst_ip: MMDS_IP,
                src_port: self.port,
                dst_port: 80,
                seq,
                ack: self.ack,
                flags,
                window: self.window,
                mss,
                ip_id: 1,
            }
            .frame(payload)
        }
    }

    fn parse(f: &[u8]) -> (Tcp<'_>, [u8; 6]) {
        assert!(wire::checksums_ok(f), "bad checksum in {f:?}");
        let e = Eth::parse(f).unwrap();
        assert_eq!(e.src, MMDS_MAC);
        let ip = Ipv4::parse(e.payload).unwrap();
        assert_eq!((ip.src, ip.dst), (MMDS_IP, GUEST_IP));
        (Tcp::parse(ip.payload).unwrap(), e.dst)
    }

    /// A segment the stack sent, owned.
    struct Seg {
        flags: u8,
        seq: u32,
        ack: u32,
        payload: Vec<u8>,
    }

    fn pop(s: &mut MmdsStack) -> Seg {
        let f = s.pop_frame().expect("a frame from the stack");
        let (t, _) = parse(&f);
        Seg {
            flags: t.flags,
            seq: t.seq,
            ack: t.ack,
            payload: t.payload.to_vec(),
        }
    }

    fn stack() -> MmdsStack {
        let mut m = Mmds::default();
        m.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "big": "z".repeat(5000)}}}))
            .unwrap();
        MmdsStack::new(MMDS_IP, Arc::new(Mutex::new(m)))
    }

    /// Opens a connection; returns the guest endpoint after the handshake.
    fn connect(s: &mut MmdsStack, port: u16, mss: u16) -> Guest {
        let mut g = Guest {
            port,
            seq: 1000,
            ack: 0,
            window: 65535,
        };
        assert_eq!(
            s.handle_frame(&g.seg(SYN, g.seq, b"", Some(mss))),
            Verdict::Taken
        );
        // (A full table resets its least recently active connection first.)
        let mut f = s.pop_frame().unwrap();
        while parse(&f).0.flags == RST | ACK {
            f = s.pop_frame().unwrap();
        }
        let (t, mac) = parse(&f);
        assert_eq!(
            (t.flags, t.ack, t.mss, mac),
            (SYN | ACK, 1001, Some(1460), GUEST_MAC)
        );
        g.seq = 1001;
        g.ack = t.seq.wrapping_add(1);
        s.handle_frame(&g.seg(ACK, g.seq, b"", None));
        assert!(s.pop_frame().is_none(), "a bare ACK is not answered");
        g
    }

    /// Sends `req`, acknowledges everything the stack sends until it closes; returns the
    /// response bytes and whether the stack sent FIN.
    fn exchange(s: &mut MmdsStack, g: &mut Guest, req: &[u8]) -> (Vec<u8>, bool) {
        s.handle_frame(&g.seg(ACK | PSH, g.seq, req, None));
        g.seq = g.seq.wrapping_add(u32::try_from(req.len()).unwrap());
        let mut resp = Vec::new();
        let mut fin = false;
        while let Some(f) = s.pop_frame() {
            let (t, _) = parse(&f);
            assert_eq!(t.seq, g.ack, "in order, no gap");
            assert!(t.ack == g.seq || t.ack == g.seq.wrapping_add(1));
            resp.extend_from_slice(t.payload);
            g.ack = t.seq.wrapping_add(t.seq_len());
            fin |= t.flags & FIN != 0;
            s.handle_frame(&g.seg(ACK, g.seq, b"", None));
        }
        (resp, fin)
    }

    #[test]
    fn arp_for_the_mmds_address_is_answered_and_nothing_else_is_taken() {
        let mut s = stack();
        let mut req = Vec::new();
        req.extend_from_slice(&[0xff; 6]);
        req.extend_from_slice(&GUEST_MAC);
        req.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&GUEST_MAC);
        req.extend_from_slice(&GUEST_IP);
        req.extend_from_slice(&[0; 6]);
        req.extend_from_slice(&MMDS_IP);
        assert_eq!(s.handle_frame(&req), Verdict::Taken);
        let r = s.pop_frame().unwrap();
        let e = Eth::parse(&r).unwrap();
        assert_eq!((e.dst, e.src), (GUEST_MAC, MMDS_MAC));
        let a = Arp::parse(e.payload).unwrap();
        assert_eq!(
            (a.op, a.sender_mac, a.sender_ip, a.target_ip),
            (2, MMDS_MAC, MMDS_IP, GUEST_IP)
        );
        // ARP for another address, and IPv4 to another address, pass to the tap.
        let mut other = req.clone();
        other[38..42].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(s.handle_frame(&other), Verdict::Pass);
        let mut g = Guest {
            port: 5,
            seq: 1,
            ack: 0,
            window: 100,
        };
        let mut f = g.seg(SYN, 1, b"", None);
        f[30..34].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(s.handle_frame(&f), Verdict::Pass);
        assert_eq!(s.handle_frame(&[1, 2, 3]), Verdict::Pass);
        // Another port of the MMDS address: reset, never the tap.
        g.port = 6;
        let mut f = g.seg(SYN, 1, b"", None);
        f[36..38].copy_from_slice(&443u16.to_be_bytes());
        f[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&[0, 0]);
        assert_eq!(s.handle_frame(&f), Verdict::Taken);
        let f = s.pop_frame().unwrap();
        let (t, _) = parse(&f);
        assert_eq!(
            (t.flags, t.ack, t.src_port, t.dst_port),
            (RST | ACK, 2, 443, 6)
        );
    }

    #[test]
    fn a_get_is_answered_segmented_by_mss_and_closed() {
        let mut s = stack();
        let mut g = connect(&mut s, 40000, 600);
        let (resp, fin) = exchange(
            &mut s,
            &mut g,
            b"GET /latest/meta-data/big HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let text = String::from_utf8(resp).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with(&"z".repeat(5000)));
        assert!(fin);
        // The guest closes too: the connection is gone.
        s.handle_frame(&g.seg(FIN | ACK, g.seq, b"", None));
        let t = pop(&mut s);
        assert_eq!((t.flags, t.ack), (ACK, g.seq + 1));
        assert_eq!(s.connections(), 0);
    }

    #[test]
    fn keep_alive_v2_token_then_get_in_one_connection() {
        let mut s = stack();
        s.mmds.lock().unwrap().configure(MmdsVersion::V2, false);
        let mut g = connect(&mut s, 40001, 1460);
        let (resp, fin) = exchange(
            &mut s,
            &mut g,
            b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        );
        assert!(!fin, "HTTP/1.1 keeps the connection");
        let text = String::from_utf8(resp).unwrap();
        let token = text.split("\r\n\r\n").nth(1).unwrap().to_string();
        let req =
            format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
        let (resp, _) = exchange(&mut s, &mut g, req.as_bytes());
        assert!(String::from_utf8(resp).unwrap().ends_with("\r\n\r\nami-1"));
        // A request split over two segments.
        s.handle_frame(&g.seg(ACK, g.seq, b"GET /latest/meta-data/ami-id HT", None));
        g.seq += 31;
        let t = pop(&mut s);
        assert_eq!((t.flags, t.ack, t.payload.len()), (ACK, g.seq, 0));
        let (resp, _) = exchange(&mut s, &mut g, b"TP/1.1\r\n\r\n");
        assert!(String::from_utf8(resp).unwrap().starts_with("HTTP/1.1 401"));
    }

    #[test]
    fn the_window_is_respected_and_duplicate_acks_resend() {
        let mut s = stack();
        let mut g = connect(&mut s, 40002, 1000);
        g.window = 2000;
        let req = b"GET /latest/meta-data/big HTTP/1.1\r\n\r\n";
        s.handle_frame(&g.seg(ACK | PSH, g.seq, req, None));
        g.seq += u32::try_from(req.len()).unwrap();
        let mut first = Vec::new();
        while let Some(f) = s.pop_frame() {
            first.push(f);
        }
        let bytes: usize = first.iter().map(|f| parse(f).0.payload.len()).sum();
        assert_eq!(bytes, 2000, "no more than the guest's window in flight");
        // The first segment was lost: the guest acks the start twice more.
        s.handle_frame(&g.seg(ACK, g.seq, b"", None));
        s.handle_frame(&g.seg(ACK, g.seq, b"", None));
        let again = s.pop_frame().expect("resent after duplicate acks");
        assert_eq!(parse(&again).0.seq, g.ack);
        // Out-of-order data from the guest is re-acknowledged, not taken.
        while s.pop_frame().is_some() {}
        s.handle_frame(&g.seg(ACK, g.seq + 10, b"junk", None));
        let t = pop(&mut s);
        assert_eq!(t.ack, g.seq);
    }

    #[test]
    fn strangers_are_reset_and_connections_are_bounded() {
        let mut s = stack();
        let g = Guest {
            port: 7,
            seq: 50,
            ack: 99,
            window: 100,
        };
        s.handle_frame(&g.seg(ACK, 50, b"x", None));
        let t = pop(&mut s);
        assert_eq!((t.flags, t.seq), (RST, 99));
        for p in 0..(u16::try_from(MAX_CONNECTIONS).unwrap() + 5) {
            connect(&mut s, 1000 + p, 1460);
            while s.pop_frame().is_some() {}
        }
        assert_eq!(s.connections(), MAX_CONNECTIONS);
        // A flood of requests the guest never acknowledges stays bounded.
        let mut g = connect(&mut s, 2000, 1460);
        g.window = 65535;
        for _ in 0..5000 {
            s.handle_frame(&g.seg(
                ACK,
                g.seq,
                b"GET /latest/meta-data/big HTTP/1.1\r\n\r\n",
                None,
            ));
            g.seq += 39;
        }
        assert!(s.frames.len() <= MAX_PENDING_FRAMES);
    }
}
