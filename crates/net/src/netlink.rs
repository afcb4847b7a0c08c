//! A small synchronous netlink layer shared by rtnetlink (links, addresses, routes, qdiscs)
//! and nfnetlink (nf_tables batches).
//!
//! Owns: message building (`Msg`), attribute parsing (`attrs`), and one blocking socket type
//! (`NlSocket`) that sends a request and waits for its ack, a dump, or a batch of acks.
//! A netlink socket is bound to the network namespace of the thread that created it, so a
//! socket for a lab namespace is created once on a short-lived thread that entered it
//! (see [`crate::netns::Netns::run`]) and is then used from any thread.
//!
//! Wire format: `include/uapi/linux/netlink.h` — 16-byte `nlmsghdr`, then a family header,
//! then TLV attributes (`nlattr`, 4-byte aligned).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(crate) const NETLINK_ROUTE: i32 = 0;
pub(crate) const NETLINK_NETFILTER: i32 = 12;

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_MULTI: u16 = 0x2;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
/// Set by the kernel on an ack whose copy of the request was left out (NETLINK_CAP_ACK).
const NLM_F_CAPPED: u16 = 0x100;
/// Set by the kernel on an ack that carries extended-ack TLVs (NETLINK_EXT_ACK).
const NLM_F_ACK_TLVS: u16 = 0x200;

const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Nested-attribute flag (`NLA_F_NESTED`); nf_tables expects it, rtnetlink tolerates it.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub(crate) const NLMSG_HDRLEN: usize = 16;

/// Rounds up to the 4-byte netlink alignment.
pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An error reported by the kernel for one netlink request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetlinkError {
    /// Positive errno (e.g. `libc::EEXIST`).
    pub errno: i32,
    /// The kernel's extended-ack message, when it sent one.
    pub message: Option<String>,
}

impl NetlinkError {
    pub(crate) fn io(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

impl std::fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.io())?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NetlinkError {}

impl From<io::Error> for NetlinkError {
    fn from(e: io::Error) -> Self {
        NetlinkError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: Some(e.to_string()),
        }
    }
}

/// A netlink message under construction: header, family header, attributes.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// Starts a message of `ty` with `flags` (`NLM_F_REQUEST` is added).
    pub(crate) fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // len, set in finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends a fixed family header (`ifinfomsg`, `tcmsg`, `nfgenmsg` ...), padded.
    pub(crate) fn header(mut self, bytes: &[u8]) -> Msg {
        self.push_aligned(bytes);
        self
    }

    fn push_aligned(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        let pad = align4(self.buf.len()) - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }

    /// Appends one attribute.
    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Msg {
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.push_aligned(payload);
        self
    }

    pub(crate) fn attr_u8(&mut self, ty: u16, v: u8) -> &mut Msg {
        self.attr(ty, &[v])
    }
    pub(crate) fn attr_u16(&mut self, ty: u16, v: u16) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }
    pub(crate) fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }
    pub(crate) fn attr_u32_be(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_be_bytes())
    }
    pub(crate) fn attr_u64(&mut self, ty: u16, v: u64) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }
    /// A NUL-terminated string attribute.
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Opens a nested attribute; close it with [`Msg::nest_end`].
    pub(crate) fn nest(&mut self, ty: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self
    }

    /// Appends raw bytes inside the current attribute (for netem's struct-then-attrs layout).
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Msg {
        self.push_aligned(bytes);
        self
    }

    pub(crate) fn nest_end(&mut self) -> &mut Msg {
        if let Some(start) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// Bytes after the netlink header (family header + attributes); for encoding tests.
    #[cfg(test)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buf[NLMSG_HDRLEN..]
    }

    /// Final bytes with length and sequence number filled in.
    pub(crate) fn finish(mut self, seq: u32) -> Vec<u8> {
        debug_assert!(self.nests.is_empty(), "unclosed netlink nest");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// Iterates over the attributes in `buf` as `(type without flags, payload)`.
pub(crate) fn attrs(buf: &[u8]) -> AttrIter<'_> {
    AttrIter { buf }
}

pub(crate) struct AttrIter<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            return None;
        }
        let payload = &self.buf[4..len];
        let next = align4(len).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some((ty, payload))
    }
}

pub(crate) fn get_u32(p: &[u8]) -> Option<u32> {
    p.get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses a NUL-terminated string attribute.
pub(crate) fn get_str(p: &[u8]) -> String {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

/// One raw received message: type, flags, sequence number, bytes after the header.
type RawMsg = (u16, u16, u32, Vec<u8>);

/// One received message: type, flags and the bytes after the netlink header.
pub(crate) struct Reply {
    pub(crate) ty: u16,
    pub(crate) payload: Vec<u8>,
}

/// A blocking netlink socket bound to the namespace it was created in.
#[derive(Debug)]
pub(crate) struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens a socket of `protocol` in the calling thread's network namespace.
    pub(crate) fn new(protocol: i32) -> io::Result<NlSocket> {
        // SAFETY: plain socket(2) call; the returned fd is checked and then owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a valid fd and a pointer to a live c_int of the given size.
            // Failure is harmless (older kernels): we only lose the extended error message.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
        }
        // Large receive buffer: dumps of many links or a batch of many acks.
        let size: libc::c_int = 4 << 20;
        // SAFETY: as above.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        // Pick a pseudo-random start so two sockets in one process do not share sequence numbers.
        let seq = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1))
            | 1;
        Ok(NlSocket {
            fd,
            seq,
            buf: vec![0u8; 64 * 1024],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut addr: libc::sockaddr_nl = {
            // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
            unsafe { std::mem::zeroed() }
        };
        addr.nl_family = libc::AF_NETLINK as u16;
        loop {
            // SAFETY: valid fd, buffer pointer/len from a live slice, valid sockaddr_nl.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(());
        }
    }

    /// Receives one datagram and splits it into messages.
    fn recv(&mut self) -> io::Result<Vec<RawMsg>> {
        let n = loop {
            // SAFETY: valid fd; the buffer is owned by self and its length is passed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            break n as usize;
        };
        let mut out = Vec::new();
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let h = &self.buf[off..];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let ty = u16::from_ne_bytes([h[4], h[5]]);
            let flags = u16::from_ne_bytes([h[6], h[7]]);
            let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
            if len < NLMSG_HDRLEN || off + len > n {
                break;
            }
            out.push((ty, flags, seq, h[NLMSG_HDRLEN..len].to_vec()));
            off += align4(len);
        }
        Ok(out)
    }

    /// Sends one request with `NLM_F_ACK` and waits for its ack.
    pub(crate) fn request(&mut self, mut msg: Msg) -> Result<(), NetlinkError> {
        let flags_off = 6;
        let flags = u16::from_ne_bytes([msg.buf[flags_off], msg.buf[flags_off + 1]]) | NLM_F_ACK;
        msg.buf[flags_off..flags_off + 2].copy_from_slice(&flags.to_ne_bytes());
        let seq = self.next_seq();
        self.send(&msg.finish(seq))?;
        loop {
            for (ty, flags, rseq, payload) in self.recv()? {
                if rseq != seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    return parse_ack(flags, &payload);
                }
            }
        }
    }

    /// Sends a dump request and collects every reply message.
    pub(crate) fn dump(&mut self, msg: Msg) -> Result<Vec<Reply>, NetlinkError> {
        let seq = self.next_seq();
        self.send(&msg.finish(seq))?;
        let mut out = Vec::new();
        loop {
            for (ty, flags, rseq, payload) in self.recv()? {
                if rseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        parse_ack(flags, &payload)?;
                        return Ok(out);
                    }
                    _ => {
                        out.push(Reply { ty, payload });
                        if flags & NLM_F_MULTI == 0 {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// Sends a request that the kernel answers with one message (e.g. RTM_GETLINK by name).
    pub(crate) fn get(&mut self, msg: Msg) -> Result<Reply, NetlinkError> {
        let seq = self.next_seq();
        self.send(&msg.finish(seq))?;
        loop {
            for (ty, flags, rseq, payload) in self.recv()? {
                if rseq != seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    parse_ack(flags, &payload)?;
                    continue;
                }
                return Ok(Reply { ty, payload });
            }
        }
    }

    /// Sends several messages in one datagram (an nf_tables batch) and waits for the ack of
    /// the last one that asked for an ack; the first error aborts and is returned.
    /// Every message in `msgs` except batch begin/end must carry `NLM_F_ACK`.
    pub(crate) fn batch(&mut self, msgs: Vec<Msg>, acked: &[bool]) -> Result<(), NetlinkError> {
        let mut bytes = Vec::new();
        let mut expect = Vec::new();
        for (m, &ack) in msgs.into_iter().zip(acked) {
            let seq = self.next_seq();
            if ack {
                expect.push(seq);
            }
            bytes.extend_from_slice(&m.finish(seq));
        }
        self.send(&bytes)?;
        let mut pending: std::collections::HashSet<u32> = expect.iter().copied().collect();
        let mut first_err = None;
        while !pending.is_empty() {
            let msgs = self.recv()?;
            for (ty, flags, rseq, payload) in msgs {
                if ty != NLMSG_ERROR || !pending.remove(&rseq) {
                    continue;
                }
                if let Err(e) = parse_ack(flags, &payload) {
                    // The kernel aborts the batch at the first error and acks nothing after it.
                    first_err.get_or_insert(e);
                    pending.clear();
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Parses an `NLMSG_ERROR` payload: `struct nlmsgerr` then (capped) extended-ack TLVs.
fn parse_ack(flags: u16, payload: &[u8]) -> Result<(), NetlinkError> {
    let errno = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(-libc::EIO);
    if errno == 0 {
        return Ok(());
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // nlmsgerr = error (4) + the request's nlmsghdr (16) [+ request payload unless capped].
        let mut off = 4 + NLMSG_HDRLEN;
        if flags & NLM_F_CAPPED == 0 {
            if let Some(h) = payload.get(4..8) {
                let req_len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                off = 4 + align4(req_len);
            }
        }
        if let Some(tlvs) = payload.get(off..) {
            for (ty, p) in attrs(tlvs) {
                if ty == NLMSGERR_ATTR_MSG {
                    message = Some(get_str(p));
                }
            }
        }
    }
    Err(NetlinkError {
        errno: -errno,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_nested_attributes() {
        let mut m = Msg::new(16, 0).header(&[0u8; 16]);
        m.attr_str(3, "kbx")
            .nest(18)
            .attr_str(1, "bridge")
            .nest_end();
        let b = m.finish(7);
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        let attrs: Vec<_> = attrs(&b[32..]).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0], (3, &b"kbx\0"[..]));
        assert_eq!(attrs[1].0, 18);
        let inner: Vec<_> = super::attrs(attrs[1].1).collect();
        assert_eq!(inner, vec![(1, &b"bridge\0"[..])]);
    }

    #[test]
    fn attr_iter_stops_on_garbage() {
        let junk = [0xffu8, 0xff, 1, 0, 9, 9];
        assert_eq!(attrs(&junk).count(), 0);
    }
}
