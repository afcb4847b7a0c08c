//! The few frame formats the MMDS network stack reads and writes: Ethernet II, ARP for IPv4,
//! IPv4 without options on the way out, TCP with the MSS option. Reading never trusts a
//! length field: every accessor checks the slice it was given (a guest writes these bytes).

pub const ETH_HDR: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const IPV4_HDR: usize = 20;
pub const PROTO_TCP: u8 = 6;
pub const TCP_HDR: usize = 20;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn arr<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

/// An Ethernet II frame's addresses, type and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eth<'a> {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
    pub payload: &'a [u8],
}

impl<'a> Eth<'a> {
    pub fn parse(f: &'a [u8]) -> Option<Eth<'a>> {
        Some(Eth {
            dst: arr(f, 0)?,
            src: arr(f, 6)?,
            ethertype: be16(f, 12)?,
            payload: f.get(ETH_HDR..)?,
        })
    }
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
    pub target_ip: [u8; 4],
}

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
const ARP_LEN: usize = 28;

impl Arp {
    pub fn parse(p: &[u8]) -> Option<Arp> {
        // Ethernet (1) / IPv4 (0x0800), 6-byte and 4-byte addresses.
        if be16(p, 0)? != 1 || be16(p, 2)? != ETHERTYPE_IPV4 || p.get(4..6)? != [6, 4] {
            return None;
        }
        Some(Arp {
            op: be16(p, 6)?,
            sender_mac: arr(p, 8)?,
            sender_ip: arr(p, 14)?,
            target_ip: arr(p, 24)?,
        })
    }
}

/// The reply to an ARP request for `ip`, which `mac` owns, as a whole Ethernet frame.
pub fn arp_reply(req: &Arp, mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HDR + ARP_LEN);
    f.extend_from_slice(&req.sender_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&ARP_REPLY.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&req.sender_mac);
    f.extend_from_slice(&req.sender_ip);
    f
}

/// An IPv4 packet's header fields the stack needs and its payload (options skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'a> {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// More-fragments set or a non-zero fragment offset.
    pub fragment: bool,
    pub payload: &'a [u8],
}

impl<'a> Ipv4<'a> {
    pub fn parse(p: &'a [u8]) -> Option<Ipv4<'a>> {
        let vihl = *p.first()?;
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < IPV4_HDR {
            return None;
        }
        let total = usize::from(be16(p, 2)?);
        if total < ihl || total > p.len() {
            return None;
        }
        let frag = be16(p, 6)?;
        Some(Ipv4 {
            src: arr(p, 12)?,
            dst: arr(p, 16)?,
            proto: *p.get(9)?,
            fragment: frag & 0x2000 != 0 || frag & 0x1fff != 0,
            // Ethernet padding after `total` is not payload.
            payload: p.get(ihl..total)?,
        })
    }
}

/// A TCP segment's header fields and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// The MSS option, when the segment carries one.
    pub mss: Option<u16>,
    pub payload: &'a [u8],
}

impl<'a> Tcp<'a> {
    pub fn parse(s: &'a [u8]) -> Option<Tcp<'a>> {
        let off = usize::from(*s.get(12)? >> 4) * 4;
        if off < TCP_HDR || off > s.len() {
            return None;
        }
        Some(Tcp {
            src_port: be16(s, 0)?,
            dst_port: be16(s, 2)?,
            seq: be32(s, 4)?,
            ack: be32(s, 8)?,
            flags: *s.get(13)?,
            window: be16(s, 14)?,
            mss: mss_option(s.get(TCP_HDR..off)?),
            payload: s.get(off..)?,
        })
    }

    /// Sequence space the segment uses: its payload, plus one for SYN and for FIN.
    pub fn seq_len(&self) -> u32 {
        let n = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        n.wrapping_add(u32::from(self.flags & SYN != 0))
            .wrapping_add(u32::from(self.flags & FIN != 0))
    }
}

/// The MSS (kind 2) among TCP options.
fn mss_option(mut o: &[u8]) -> Option<u16> {
    while let Some(&kind) = o.first() {
        match kind {
            0 => return None,
            1 => o = &o[1..],
            _ => {
                let len = usize::from(*o.get(1)?);
                if len < 2 || len > o.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    return be16(o, 2);
                }
                o = &o[len..];
            }
        }
    }
    None
}

/// The Internet checksum (RFC 1071) of `parts` concatenated, starting from `sum`.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                None => odd = Some(b),
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// One outgoing TCP segment's addressing and header.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOut {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Sent as an MSS option (on SYN-ACK).
    pub mss: Option<u16>,
    /// The IPv4 identification field.
    pub ip_id: u16,
}

impl SegmentOut {
    /// The whole Ethernet frame with `payload`, both checksums filled in.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mss_opt = self.mss.map(|m| {
            let [hi, lo] = m.to_be_bytes();
            [2, 4, hi, lo]
        });
        let opts: &[u8] = mss_opt.as_ref().map_or(&[], |o| &o[..]);
        let tcp_len = TCP_HDR + opts.len() + payload.len();
        let ip_len = IPV4_HDR + tcp_len;
        let mut f = Vec::with_capacity(ETH_HDR + ip_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        // IPv4: version 4, IHL 5, DF, TTL 64.
        let ip_start = f.len();
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&u16::try_from(ip_len).unwrap_or(u16::MAX).to_be_bytes());
        f.extend_from_slice(&self.ip_id.to_be_bytes());
        f.extend_from_slice(&0x4000u16.to_be_bytes());
        f.extend_from_slice(&[64, PROTO_TCP, 0, 0]);
        f.extend_from_slice(&self.src_ip);
        f.extend_from_slice(&self.dst_ip);
        let ip_sum = checksum(&[&f[ip_start..]]);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
        // TCP.
        let tcp_start = f.len();
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        let words = u8::try_from((TCP_HDR + opts.len()) / 4).unwrap_or(5);
        f.extend_from_slice(&[words << 4, self.flags]);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        f.extend_from_slice(opts);
        f.extend_from_slice(payload);
        let len = u16::try_from(tcp_len).unwrap_or(u16::MAX).to_be_bytes();
        let pseudo = [
            &self.src_ip[..],
            &self.dst_ip[..],
            &[0, PROTO_TCP],
            &len[..],
            &f[tcp_start..],
        ];
        let sum = checksum(&pseudo);
        f[tcp_start + 16..tcp_start + 18].copy_from_slice(&sum.to_be_bytes());
        f
    }
}

/// Whether the IPv4 header checksum and the TCP checksum of an Ethernet frame hold (tests, and
/// anyone checking what the stack sends).
pub fn checksums_ok(frame: &[u8]) -> bool {
    let Some(ip) = frame.get(ETH_HDR..) else {
        return false;
    };
    let Some(p) = Ipv4::parse(ip) else {
        return false;
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if checksum(&[&ip[..ihl]]) != 0 {
        return false;
    }
    let len = u16::try_from(p.payload.len())
        .unwrap_or(u16::MAX)
        .to_be_bytes();
    checksum(&[&p.src[..], &p.dst[..], &[0, p.proto], &len[..], p.payload]) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_segment_parses_back_with_valid_checksums() {
        let s = SegmentOut {
            src_mac: [6, 1, 0x23, 0x45, 0x67, 1],
            dst_mac: [6, 0, 0, 0, 0, 2],
            src_ip: [169, 254, 169, 254],
            dst_ip: [10, 0, 0, 2],
            src_port: 80,
            dst_port: 40000,
            seq: 0xfffffff0,
            ack: 7,
            flags: SYN | ACK,
            window: 1000,
            mss: Some(1460),
            ip_id: 9,
        };
        // Odd payload length: the checksum pads the last byte.
        let f = s.frame(b"hello");
        assert!(checksums_ok(&f));
        let e = Eth::parse(&f).unwrap();
        assert_eq!((e.src, e.ethertype), (s.src_mac, ETHERTYPE_IPV4));
        let ip = Ipv4::parse(e.payload).unwrap();
        assert_eq!(
            (ip.src, ip.dst, ip.proto, ip.fragment),
            (s.src_ip, s.dst_ip, 6, false)
        );
        let t = Tcp::parse(ip.payload).unwrap();
        assert_eq!(
            (t.src_port, t.dst_port, t.seq, t.ack),
            (80, 40000, 0xfffffff0, 7)
        );
        assert_eq!(
            (t.flags, t.window, t.mss, t.payload),
            (SYN | ACK, 1000, Some(1460), &b"hello"[..])
        );
        assert_eq!(t.seq_len(), 6);
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(!checksums_ok(&bad));
    }

    #[test]
    fn hostile_lengths_never_panic() {
        // An IPv4 total length beyond the frame, a TCP data offset beyond the segment, an
        // option running past its end: refused, not read out of bounds.
        let mut ip = vec![0x45u8; 40];
        ip[2..4].copy_from_slice(&400u16.to_be_bytes());
        assert!(Ipv4::parse(&ip).is_none());
        let mut tcp = vec![0u8; 20];
        tcp[12] = 0xf0;
        assert!(Tcp::parse(&tcp).is_none());
        let mut tcp = vec![0u8; 24];
        tcp[12] = 0x60;
        tcp[20..24].copy_from_slice(&[2, 40, 0, 0]);
        assert_eq!(Tcp::parse(&tcp).unwrap().mss, None);
        for n in 0..64 {
            let junk: Vec<u8> = (0..n)
                .map(|i: u32| i.wrapping_mul(37).to_le_bytes()[0])
                .collect();
            let _ = Eth::parse(&junk).map(|e| Arp::parse(e.payload));
            let _ = Ipv4::parse(&junk).map(|p| Tcp::parse(p.payload));
        }
        assert!(Arp::parse(&[0u8; 27]).is_none());
    }
}
