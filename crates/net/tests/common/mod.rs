//! Shared fixtures for the namespace tests: root check, self-cleaning labs and endpoint
//! namespaces, and an ICMP pinger that runs inside a namespace (no `ping` binary needed).

#![allow(dead_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use kobako_net::{
    IfName, Ipv4Cidr, LabName, LabNet, LinkChange, MacAddr, Netns, PortSpec, PortVlan, Rtnl,
};

/// These tests need root (namespaces, netlink writes). Fail loudly rather than skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "kobako-net namespace tests must run as root (euid {uid})"
    );
}

pub fn ifn(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

pub fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

/// A lab deleted on drop (also when the test panics).
pub struct TestLab {
    pub net: Option<LabNet>,
    pub name: LabName,
}

impl TestLab {
    pub fn new(name: &str) -> TestLab {
        require_root();
        let name = LabName::new(name).unwrap();
        // A previous aborted run may have left it behind.
        LabNet::delete(&name).unwrap();
        let net = LabNet::ensure(&name).unwrap();
        TestLab {
            net: Some(net),
            name,
        }
    }

    pub fn net(&self) -> &LabNet {
        self.net.as_ref().unwrap()
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Some(n) = self.net.take() {
            let _ = n.destroy();
        }
        let _ = LabNet::delete(&self.name);
    }
}

/// An endpoint namespace (stands in for a VM) deleted on drop.
pub struct Endpoint {
    pub ns: Netns,
    pub name: String,
}

impl Endpoint {
    pub fn new(name: &str) -> Endpoint {
        require_root();
        let _ = Netns::delete(name);
        let ns = Netns::create(name).unwrap();
        let rt = Rtnl::open(&ns).unwrap();
        let lo = rt.require("lo").unwrap();
        rt.set_link(
            &lo,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        Endpoint {
            ns,
            name: name.to_string(),
        }
    }

    pub fn rtnl(&self) -> Rtnl {
        Rtnl::open(&self.ns).unwrap()
    }

    /// Gives `eth0` an address (and optionally a default route).
    pub fn address(&self, addr: &str, gw: Option<Ipv4Addr>) {
        let rt = self.rtnl();
        let l = rt.require("eth0").unwrap();
        rt.add_addr(&l, cidr(addr)).unwrap();
        if let Some(g) = gw {
            rt.add_route(None, Some(g), Some(&l)).unwrap();
        }
    }

    /// Pings `dst` `count` times, one at a time, `timeout` each.
    pub fn ping(&self, dst: Ipv4Addr, count: u16, timeout: Duration) -> PingResult {
        ping_in(&self.ns, dst, count, timeout)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = Netns::delete(&self.name);
    }
}

/// Attaches endpoint `ep` to `bridge` of `lab` through port `port`, with `eth0` in the
/// endpoint carrying `addr`.
pub fn attach(lab: &LabNet, bridge: &str, port: &str, ep: &Endpoint, addr: &str, vlan: PortVlan) {
    let mut spec = PortSpec::veth(ifn(port), ifn(bridge), &ep.ns, ifn("eth0"));
    if let kobako_net::PortKind::Veth { peer_mac, .. } = &mut spec.kind {
        *peer_mac = Some(MacAddr::derived(
            lab.name().as_str(),
            &ep.name,
            &ep.name,
            "eth0",
        ));
    }
    spec.vlan = vlan;
    lab.ensure_port(&spec).unwrap();
    if !addr.is_empty() {
        ep.address(addr, None);
    }
}

#[derive(Debug, Clone)]
pub struct PingResult {
    pub sent: u16,
    pub received: u16,
    pub rtts: Vec<Duration>,
}

impl PingResult {
    pub fn min_rtt(&self) -> Option<Duration> {
        self.rtts.iter().min().copied()
    }
    pub fn max_rtt(&self) -> Option<Duration> {
        self.rtts.iter().max().copied()
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        s += w as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

pub fn ping_in(ns: &Netns, dst: Ipv4Addr, count: u16, timeout: Duration) -> PingResult {
    ns.run(move || ping_here(dst, count, timeout).unwrap())
        .unwrap()
}

fn ping_here(dst: Ipv4Addr, count: u16, timeout: Duration) -> io::Result<PingResult> {
    // SAFETY: plain socket call; fd checked and owned.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let id: u16 = (std::process::id() as u16) ^ (dst.octets()[3] as u16) ^ 0x4b42;
    let mut res = PingResult {
        sent: 0,
        received: 0,
        rtts: Vec::new(),
    };
    // SAFETY: zeroed sockaddr_in is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
    for seq in 0..count {
        let mut pkt = vec![8u8, 0, 0, 0];
        pkt.extend_from_slice(&id.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&[0x6b; 56]);
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        let start = Instant::now();
        // SAFETY: valid fd, buffer and sockaddr.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        res.sent += 1;
        if n < 0 {
            // e.g. ENETUNREACH: counts as lost.
            std::thread::sleep(timeout.min(Duration::from_millis(100)));
            continue;
        }
        let mut buf = [0u8; 2048];
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if r <= 0 {
                continue;
            }
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let b = &buf[..n as usize];
            let ihl = ((b[0] & 0x0f) as usize) * 4;
            if b.len() < ihl + 8 {
                continue;
            }
            let icmp = &b[ihl..];
            let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
            if icmp[0] == 0
                && src == dst
                && u16::from_be_bytes([icmp[4], icmp[5]]) == id
                && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
            {
                res.received += 1;
                res.rtts.push(start.elapsed());
                break;
            }
        }
        // Pace a little so replies of lost probes do not pile up.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(res)
}
