//! Network configuration inside the guest over rtnetlink (no `ip` needed in the image):
//! find interfaces by name or MAC, rename, MTU, up, IPv4/IPv6 addresses, routes; plus hostname,
//! /etc/hosts and /etc/resolv.conf.
//!
//! Message layouts: include/uapi/linux/{netlink,rtnetlink,if_addr,if_link}.h.

use std::io;
use std::net::IpAddr;

use kobako_agent::proto::{IfaceConfig, NetConfig, RouteConfig};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// A netlink socket call that failed, or the kernel's refusal of a request.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("netlink send: {0}")]
    Send(io::Error),
    #[error("netlink recv: {0}")]
    Recv(io::Error),
    /// The kernel answered the request with this errno.
    #[error("{0}")]
    Refused(io::Error),
}

/// Why a network configuration (or a MAC change) could not be applied. Messages carry their
/// cause (the agent sends them to the host as text); they name the item that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Netlink(#[from] NlError),
    /// A request about one item (`what`, e.g. "eth1: mtu 1400") was refused or lost.
    #[error("{what}: {err}")]
    Request { what: String, err: NlError },
    #[error("address '{addr}': expected CIDR form like 10.0.0.2/24")]
    NotCidr { addr: String },
    #[error("address '{addr}': '{ip}' is not an IP address")]
    BadIp { addr: String, ip: String },
    #[error("address '{addr}': prefix must be 0..={max}")]
    BadPrefix { addr: String, max: u8 },
    #[error("no interface '{0}' in the guest")]
    NoInterface(String),
    #[error("no interface with MAC {0} in the guest")]
    NoMac(String),
    #[error("/sys/class/net: {0}")]
    ListInterfaces(io::Error),
    #[error("interface without name or mac")]
    Unnamed,
    #[error("interface name '{0}': 1 to 15 bytes")]
    BadName(String),
    #[error("route {dst}: via '{via}' is not an IP address")]
    BadVia { dst: String, via: String },
    #[error("route {0}: needs `via` or `dev`")]
    RouteWithoutTarget(String),
    #[error("MAC '{0}' is not of the form 52:54:00:12:34:56")]
    BadMac(String),
    #[error("{path}: {err}")]
    Write { path: &'static str, err: io::Error },
}

/// Wraps a refused request with the item it was about.
fn about(what: impl Into<String>) -> impl FnOnce(NlError) -> NetError {
    let what = what.into();
    move |err| NetError::Request { what, err }
}

/// A netlink route socket.
struct Nl {
    fd: i32,
    seq: u32,
}

impl Nl {
    fn open() -> Result<Nl, NlError> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NlError::Socket(io::Error::last_os_error()));
        }
        Ok(Nl { fd, seq: 1 })
    }

    /// Send one request (header added here) and wait for its ack.
    fn request(&mut self, ty: u16, flags: u16, body: &[u8]) -> Result<(), NlError> {
        self.seq += 1;
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: fd is a netlink socket; msg is a valid buffer of msg.len() bytes. The kernel is
        // the default destination of an unbound netlink socket.
        let n = unsafe { libc::send(self.fd, msg.as_ptr() as *const libc::c_void, msg.len(), 0) };
        if n < 0 {
            return Err(NlError::Send(io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < 0 {
                return Err(NlError::Recv(io::Error::last_os_error()));
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                let mlen =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let mty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
                let mseq =
                    u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                if mty == NLMSG_ERROR && mseq == self.seq && off + 20 <= n as usize {
                    let err =
                        i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or_default());
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(NlError::Refused(io::Error::from_raw_os_error(-err)))
                    };
                }
                if mlen < 16 {
                    break;
                }
                off += (mlen + 3) & !3;
            }
        }
    }
}

impl Drop for Nl {
    fn drop(&mut self) {
        // SAFETY: closing the fd we own.
        unsafe { libc::close(self.fd) };
    }
}

fn attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// Parse "10.0.0.2/24" (or "fd00::1/64").
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), NetError> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| NetError::NotCidr { addr: s.into() })?;
    let ip: IpAddr = a.parse().map_err(|_| NetError::BadIp {
        addr: s.into(),
        ip: a.into(),
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| NetError::BadPrefix {
            addr: s.into(),
            max,
        })?;
    Ok((ip, prefix))
}

fn ifindex(name: &str) -> Result<u32, NetError> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| NetError::NoInterface(name.into()))
}

fn by_mac(mac: &str) -> Result<String, NetError> {
    let want = mac.to_ascii_lowercase();
    for e in std::fs::read_dir("/sys/class/net")
        .map_err(NetError::ListInterfaces)?
        .flatten()
    {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim() == want {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(NetError::NoMac(mac.into()))
}

fn rename(nl: &mut Nl, from: &str, to: &str) -> Result<(), NetError> {
    if to.is_empty() || to.len() > 15 {
        return Err(NetError::BadName(to.into()));
    }
    let idx = ifindex(from)?;
    // A link must be down to be renamed.
    nl.request(RTM_NEWLINK, 0, &ifinfomsg(idx, 0, libc::IFF_UP as u32))
        .map_err(about(format!("{from}: down")))?;
    let mut b = ifinfomsg(idx, 0, 0);
    let mut n = to.as_bytes().to_vec();
    n.push(0);
    attr(&mut b, IFLA_IFNAME, &n);
    nl.request(RTM_NEWLINK, 0, &b)
        .map_err(about(format!("{from}: rename to {to}")))
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![libc::AF_UNSPEC as u8, 0];
    b.extend_from_slice(&0u16.to_ne_bytes()); // type
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

fn configure_iface(nl: &mut Nl, c: &IfaceConfig) -> Result<String, NetError> {
    let mut name = if c.name.is_empty() {
        by_mac(c.mac.as_deref().ok_or(NetError::Unnamed)?)?
    } else {
        c.name.clone()
    };
    let idx = ifindex(&name)?;
    if let Some(new) = &c.rename {
        if new != &name {
            rename(nl, &name, new)?;
            name = new.clone();
        }
    }
    if let Some(mtu) = c.mtu {
        let mut b = ifinfomsg(idx, 0, 0);
        attr(&mut b, IFLA_MTU, &mtu.to_ne_bytes());
        nl.request(RTM_NEWLINK, 0, &b)
            .map_err(about(format!("{name}: mtu {mtu}")))?;
    }
    for a in &c.addresses {
        let (ip, prefix) = parse_cidr(a)?;
        let mut b = vec![family(&ip), prefix, 0, RT_SCOPE_UNIVERSE];
        b.extend_from_slice(&idx.to_ne_bytes());
        let bytes = ip_bytes(&ip);
        attr(&mut b, IFA_LOCAL, &bytes);
        attr(&mut b, IFA_ADDRESS, &bytes);
        if let IpAddr::V4(v4) = ip {
            if prefix < 31 {
                let host_bits = 32 - u32::from(prefix);
                let bcast = u32::from(v4) | ((1u64 << host_bits) - 1) as u32;
                attr(&mut b, IFA_BROADCAST, &bcast.to_be_bytes());
            }
        }
        nl.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &b)
            .map_err(about(format!("{name}: address {a}")))?;
    }
    let up = if c.up { libc::IFF_UP as u32 } else { 0 };
    nl.request(RTM_NEWLINK, 0, &ifinfomsg(idx, up, libc::IFF_UP as u32))
        .map_err(about(format!(
            "{name}: set {}",
            if c.up { "up" } else { "down" }
        )))?;
    Ok(name)
}

fn add_route(nl: &mut Nl, r: &RouteConfig) -> Result<(), NetError> {
    let (dst, dst_len) = if r.dst == "default" {
        let fam_v6 = r.via.as_deref().is_some_and(|v| v.contains(':'));
        let any: IpAddr = if fam_v6 {
            "::".parse().unwrap_or(IpAddr::from([0u8; 4]))
        } else {
            IpAddr::from([0u8; 4])
        };
        (any, 0)
    } else {
        parse_cidr(&r.dst)?
    };
    let via: Option<IpAddr> = match &r.via {
        Some(v) => Some(v.parse().map_err(|_| NetError::BadVia {
            dst: r.dst.clone(),
            via: v.clone(),
        })?),
        None => None,
    };
    if via.is_none() && r.dev.is_none() {
        return Err(NetError::RouteWithoutTarget(r.dst.clone()));
    }
    let scope = if via.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let mut b = vec![
        family(&dst),
        dst_len,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        scope,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes());
    if dst_len > 0 {
        attr(&mut b, RTA_DST, &ip_bytes(&dst));
    }
    if let Some(g) = via {
        attr(&mut b, RTA_GATEWAY, &ip_bytes(&g));
    }
    if let Some(dev) = &r.dev {
        attr(&mut b, RTA_OIF, &ifindex(dev)?.to_ne_bytes());
    }
    if let Some(m) = r.metric {
        attr(&mut b, RTA_PRIORITY, &m.to_ne_bytes());
    }
    nl.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &b)
        .map_err(about(format!("route {}", r.dst)))
}

/// Gives the interface whose MAC is `old` the MAC `new` (virtio-net tells the device, so the
/// host side filters on the new one too).
pub fn set_mac(old: &str, new: &str) -> Result<(), NetError> {
    let bytes: Vec<u8> = new
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| NetError::BadMac(new.into()))?;
    if bytes.len() != 6 {
        return Err(NetError::BadMac(new.into()));
    }
    let name = by_mac(old)?;
    let mut nl = Nl::open()?;
    let mut b = ifinfomsg(ifindex(&name)?, 0, 0);
    attr(&mut b, IFLA_ADDRESS, &bytes);
    nl.request(RTM_NEWLINK, 0, &b)
        .map_err(about(format!("{name}: MAC {new}")))
}

/// Apply a whole configuration; stops at the first error and says which item failed.
pub fn apply(cfg: &NetConfig) -> Result<(), NetError> {
    if let Some(h) = &cfg.hostname {
        crate::init::set_hostname(h);
    }
    let mut nl = Nl::open()?;
    // Renames can collide (eth0 -> eth1 while eth1 -> eth2): move every interface that gets a
    // new name to a temporary name first, then configure each under its final name.
    let mut ifaces = cfg.interfaces.clone();
    for (n, i) in ifaces.iter_mut().enumerate() {
        let Some(new) = i.rename.clone() else {
            continue;
        };
        let cur = if i.name.is_empty() {
            by_mac(i.mac.as_deref().ok_or(NetError::Unnamed)?)?
        } else {
            i.name.clone()
        };
        if cur != new {
            let tmp = format!("kbtmp{n}");
            rename(&mut nl, &cur, &tmp)?;
            i.name = tmp;
        } else {
            i.name = cur;
        }
    }
    for i in &ifaces {
        configure_iface(&mut nl, i)?;
    }
    for r in &cfg.routes {
        add_route(&mut nl, r)?;
    }
    if !cfg.hosts.is_empty() || cfg.hostname.is_some() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut text = format!(
            "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {}\n",
            host.trim()
        );
        for l in &cfg.hosts {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write("/etc/hosts", text).map_err(|err| NetError::Write {
            path: "/etc/hosts",
            err,
        })?;
    }
    if !cfg.dns.is_empty() {
        let text: String = cfg
            .dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect();
        std::fs::write("/etc/resolv.conf", text).map_err(|err| NetError::Write {
            path: "/etc/resolv.conf",
            err,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_the_text_the_host_sees() {
        let msg = |s: &str| parse_cidr(s).map(|_| ()).unwrap_err().to_string();
        assert_eq!(
            msg("10.0.0.2"),
            "address '10.0.0.2': expected CIDR form like 10.0.0.2/24"
        );
        assert_eq!(
            msg("10.0.0.x/24"),
            "address '10.0.0.x/24': '10.0.0.x' is not an IP address"
        );
        assert_eq!(
            msg("fd00::1/129"),
            "address 'fd00::1/129': prefix must be 0..=128"
        );
        let refused =
            about("eth1: mtu 1400")(NlError::Refused(io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(refused
            .to_string()
            .starts_with("eth1: mtu 1400: Invalid argument"));
        assert_eq!(
            NetError::from(NlError::Send(io::Error::from_raw_os_error(libc::ENOBUFS)))
                .to_string()
                .split(" (")
                .next(),
            Some("netlink send: No buffer space available")
        );
    }
}
