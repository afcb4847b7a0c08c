//! rtnetlink operations on one network namespace: links (bridge, veth, tap attributes),
//! bridge VLAN entries, addresses, routes and qdiscs.
//!
//! [`Rtnl`] owns one NETLINK_ROUTE socket created inside its namespace; every method is a
//! blocking request/ack (microseconds), safe to call from any thread (the socket is behind a
//! mutex). Creation methods are idempotent: an existing object of the right kind is reused and
//! brought to the requested state.
//!
//! Constants come from include/uapi/linux/{rtnetlink,if_link,if_bridge,pkt_sched}.h.

use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::error::{NetError, Result};
use crate::netlink::{
    self, attrs, get_str, get_u32, Msg, NlSocket, NETLINK_ROUTE, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REPLACE,
};
use crate::netns::Netns;
use crate::types::{check_mtu, IfName, Ipv4Cidr, MacAddr, VlanId};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_STATS64: u16 = 23;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_GROUP: u16 = 27;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BR_STP_STATE: u16 = 5;
const IFLA_BR_VLAN_FILTERING: u16 = 7;
const IFLA_BR_VLAN_DEFAULT_PVID: u16 = 39;
const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
const BRIDGE_VLAN_INFO_PVID: u16 = 0x2;
const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 0x4;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

const TCA_KIND: u16 = 1;
pub(crate) const TCA_OPTIONS: u16 = 2;
/// `TC_H_ROOT`: the root (egress) qdisc slot of a device.
pub(crate) const TC_H_ROOT: u32 = 0xffff_ffff;

const AF_UNSPEC: u8 = 0;
const AF_BRIDGE: u8 = 7;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 1;

/// Encodes a `struct ifinfomsg` (16 bytes).
pub(crate) fn ifinfomsg(family: u8, index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = family;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// Encodes a `struct tcmsg` (20 bytes).
pub(crate) fn tcmsg(index: i32, handle: u32, parent: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b
}

/// What the kernel reports about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index in its namespace.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `IFLA_INFO_KIND` ("bridge", "veth", "tun" ...), `None` for loopback and physical NICs.
    pub kind: Option<String>,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Hardware address.
    pub mac: Option<MacAddr>,
    /// For bridges: whether 802.1Q VLAN filtering is on.
    pub vlan_filtering: bool,
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < 16 {
        return None;
    }
    let index = i32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]) as u32;
    let flags = u32::from_ne_bytes([payload[8], payload[9], payload[10], payload[11]]);
    let mut l = Link {
        index,
        name: String::new(),
        kind: None,
        master: None,
        mtu: 0,
        up: flags & IFF_UP != 0,
        mac: None,
        vlan_filtering: false,
    };
    for (ty, p) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => l.name = get_str(p),
            IFLA_MTU => l.mtu = get_u32(p).unwrap_or(0),
            IFLA_MASTER => l.master = get_u32(p).filter(|&m| m != 0),
            IFLA_ADDRESS if p.len() == 6 => {
                l.mac = Some(MacAddr([p[0], p[1], p[2], p[3], p[4], p[5]]))
            }
            IFLA_LINKINFO => {
                for (t, q) in attrs(p) {
                    if t == IFLA_INFO_KIND {
                        l.kind = Some(get_str(q));
                    }
                    if t == IFLA_INFO_DATA && l.kind.as_deref() == Some("bridge") {
                        for (u, r) in attrs(q) {
                            if u == IFLA_BR_VLAN_FILTERING {
                                l.vlan_filtering = r.first() == Some(&1);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(l)
}

/// An interface's traffic counters since it was created (`IFLA_STATS64`), as the interface
/// sees it: for a VM's tap, `rx` is what the VM sent and `tx` what it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LinkStats {
    /// Packets received by the interface.
    pub rx_packets: u64,
    /// Packets it transmitted.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Packets dropped before transmission.
    pub tx_dropped: u64,
}

/// The name and counters of a `RTM_NEWLINK` payload (None: no name, or no `IFLA_STATS64`
/// of at least the eight counters read).
fn parse_stats(payload: &[u8]) -> Option<(String, LinkStats)> {
    if payload.len() < 16 {
        return None;
    }
    let (mut name, mut stats) = (None, None);
    for (ty, p) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => name = Some(get_str(p)),
            IFLA_STATS64 if p.len() >= 64 => {
                let at = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&p[i * 8..i * 8 + 8]);
                    u64::from_ne_bytes(b)
                };
                stats = Some(LinkStats {
                    rx_packets: at(0),
                    tx_packets: at(1),
                    rx_bytes: at(2),
                    tx_bytes: at(3),
                    rx_errors: at(4),
                    tx_errors: at(5),
                    rx_dropped: at(6),
                    tx_dropped: at(7),
                });
            }
            _ => {}
        }
    }
    Some((name?, stats?))
}

/// One qdisc as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// Device index.
    pub ifindex: u32,
    /// Kind ("netem", "tbf", "noqueue" ...).
    pub kind: String,
    /// Handle (major:minor packed).
    pub handle: u32,
    /// Parent handle (`TC_H_ROOT` for root qdiscs).
    pub parent: u32,
}

/// Options for a bridge.
#[derive(Debug, Clone, Copy, Default)]
pub struct BridgeOpts {
    /// MTU of the bridge device.
    pub mtu: Option<u32>,
    /// Enable 802.1Q VLAN filtering (`CONFIG_BRIDGE_VLAN_FILTERING`), with no default PVID so
    /// that ports carry only the VLANs configured on them.
    pub vlan_filtering: bool,
}

/// Per-port VLAN membership on a VLAN-filtering bridge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PortVlan {
    /// No VLAN configuration: the port is an ordinary member of its bridge.
    #[default]
    None,
    /// Access port: untagged frames belong to this VLAN (PVID), egress is untagged.
    Access(VlanId),
    /// Trunk port: carries these VLANs tagged, plus optionally a native (untagged) VLAN.
    Trunk {
        /// VLANs carried tagged.
        tagged: Vec<VlanId>,
        /// VLAN for untagged frames.
        native: Option<VlanId>,
    },
}

/// A rtnetlink handle on one namespace.
#[derive(Debug)]
pub struct Rtnl {
    ns: Netns,
    sock: Mutex<NlSocket>,
    group: Option<u32>,
}

impl Rtnl {
    /// Opens a route netlink socket inside `ns`.
    pub fn open(ns: &Netns) -> Result<Rtnl> {
        let sock = ns
            .enter(|| NlSocket::new(NETLINK_ROUTE))?
            .map_err(NetError::io(format!(
                "open netlink socket in {}",
                ns.name()
            )))?;
        Ok(Rtnl {
            ns: ns.clone(),
            sock: Mutex::new(sock),
            group: None,
        })
    }

    /// Puts every link this handle creates into device group `group` (`IFLA_GROUP`), so that
    /// [`Rtnl::delete_group`] can remove them all in one kernel batch.
    pub fn with_group(mut self, group: u32) -> Rtnl {
        self.group = Some(group);
        self
    }

    /// The device group new links are put in.
    pub fn group(&self) -> Option<u32> {
        self.group
    }

    /// Deletes every link of device `group` in one request: the kernel unregisters them as
    /// one batch (one RCU grace period instead of one per device), and veth peers in other
    /// namespaces go with them. No link in the group is fine.
    pub fn delete_group(&self, group: u32) -> Result<()> {
        let mut m = Msg::new(RTM_DELLINK, 0).header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        m.attr_u32(IFLA_GROUP, group);
        match self.sock().request(m) {
            Ok(()) => Ok(()),
            Err(e) if e.errno == libc::ENODEV => Ok(()),
            Err(e) => Err(NetError::nl(format!(
                "delete link group {group} in {}",
                self.ns.name()
            ))(e)),
        }
    }

    /// The namespace this handle works on.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    fn sock(&self) -> std::sync::MutexGuard<'_, NlSocket> {
        // A poisoned lock only means another thread panicked mid-request; the socket itself
        // is still usable (each request is self-contained).
        self.sock.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn request(&self, msg: Msg, op: impl Into<String>) -> Result<()> {
        self.sock().request(msg).map_err(NetError::nl(op))
    }

    /// Looks up a link by name.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut m = Msg::new(RTM_GETLINK, 0).header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.sock().get(m) {
            Ok(r) => Ok(parse_link(&r.payload)),
            Err(e) if e.errno == libc::ENODEV => Ok(None),
            Err(e) => Err(NetError::nl(format!(
                "look up {name} in {}",
                self.ns.name()
            ))(e)),
        }
    }

    /// Looks up a link that must exist.
    pub fn require(&self, name: &str) -> Result<Link> {
        self.link(name)?.ok_or_else(|| NetError::UnknownInterface {
            ns: self.ns.name().to_string(),
            name: name.to_string(),
        })
    }

    /// All links of the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let m = Msg::new(RTM_GETLINK, NLM_F_DUMP).header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        let replies = self
            .sock()
            .dump(m)
            .map_err(NetError::nl(format!("list links in {}", self.ns.name())))?;
        Ok(replies
            .iter()
            .filter(|r| r.ty == RTM_NEWLINK)
            .filter_map(|r| parse_link(&r.payload))
            .collect())
    }

    /// The traffic counters of every link of the namespace, by name (one dump).
    pub fn link_stats(&self) -> Result<Vec<(String, LinkStats)>> {
        let m = Msg::new(RTM_GETLINK, NLM_F_DUMP).header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        let replies = self.sock().dump(m).map_err(NetError::nl(format!(
            "read link counters in {}",
            self.ns.name()
        )))?;
        Ok(replies
            .iter()
            .filter(|r| r.ty == RTM_NEWLINK)
            .filter_map(|r| parse_stats(&r.payload))
            .collect())
    }

    fn expect_kind(&self, l: &Link, expected: &'static str) -> Result<()> {
        if l.kind.as_deref() == Some(expected) {
            Ok(())
        } else {
            Err(NetError::Conflict {
                ns: self.ns.name().to_string(),
                name: l.name.clone(),
                found: l.kind.clone().unwrap_or_else(|| "device".into()),
                expected,
            })
        }
    }

    /// Creates a bridge (or reuses an existing one) and brings it up.
    pub fn ensure_bridge(&self, name: &IfName, opts: BridgeOpts) -> Result<Link> {
        if let Some(mtu) = opts.mtu {
            check_mtu(mtu)?;
        }
        if let Some(l) = self.link(name.as_str())? {
            self.expect_kind(&l, "bridge")?;
        } else {
            let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
                .header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
            m.attr_str(IFLA_IFNAME, name.as_str());
            if let Some(mtu) = opts.mtu {
                m.attr_u32(IFLA_MTU, mtu);
            }
            if let Some(g) = self.group {
                m.attr_u32(IFLA_GROUP, g);
            }
            m.nest(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "bridge");
            m.nest(IFLA_INFO_DATA).attr_u32(IFLA_BR_STP_STATE, 0);
            if opts.vlan_filtering {
                // Keep the kernel's default PVID 1: ports without a VLAN role share the
                // untagged VLAN 1, as on a plain bridge (and as in the per-VLAN fallback).
                m.attr_u8(IFLA_BR_VLAN_FILTERING, 1)
                    .attr_u16(IFLA_BR_VLAN_DEFAULT_PVID, 1);
            }
            m.nest_end().nest_end();
            match self.sock().request(m) {
                Ok(()) => {}
                Err(e) if e.errno == libc::EEXIST => {}
                Err(e) if opts.vlan_filtering && e.errno == libc::EOPNOTSUPP => {
                    return Err(NetError::Unsupported(format!(
                        "bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING): {e}"
                    )))
                }
                Err(e) => {
                    return Err(NetError::nl(format!(
                        "create bridge {name} in {}",
                        self.ns.name()
                    ))(e))
                }
            }
        }
        let l = self.require(name.as_str())?;
        self.set_link(
            &l,
            LinkChange {
                up: Some(true),
                mtu: opts.mtu,
                ..Default::default()
            },
        )?;
        self.require(name.as_str())
    }

    /// Creates a veth pair `name` (here) ↔ `peer` (in `peer_ns`, or here when `None`), or
    /// reuses an existing `name` that is a veth.
    pub fn ensure_veth(
        &self,
        name: &IfName,
        mac: Option<MacAddr>,
        peer: &IfName,
        peer_ns: Option<&Netns>,
        peer_mac: Option<MacAddr>,
        mtu: Option<u32>,
    ) -> Result<Link> {
        if let Some(mtu) = mtu {
            check_mtu(mtu)?;
        }
        if let Some(l) = self.link(name.as_str())? {
            self.expect_kind(&l, "veth")?;
            return Ok(l);
        }
        use std::os::fd::{AsFd, AsRawFd};
        let mut m =
            Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL).header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        m.attr_str(IFLA_IFNAME, name.as_str());
        if let Some(mac) = mac {
            m.attr(IFLA_ADDRESS, &mac.0);
        }
        if let Some(mtu) = mtu {
            m.attr_u32(IFLA_MTU, mtu);
        }
        if let Some(g) = self.group {
            m.attr_u32(IFLA_GROUP, g);
        }
        m.nest(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "veth");
        m.nest(IFLA_INFO_DATA).nest(VETH_INFO_PEER);
        m.raw(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        m.attr_str(IFLA_IFNAME, peer.as_str());
        if let Some(mac) = peer_mac {
            m.attr(IFLA_ADDRESS, &mac.0);
        }
        if let Some(mtu) = mtu {
            m.attr_u32(IFLA_MTU, mtu);
        }
        if let Some(ns) = peer_ns {
            m.attr_u32(IFLA_NET_NS_FD, ns.as_fd().as_raw_fd() as u32);
        }
        m.nest_end().nest_end().nest_end();
        let peer_ns_name = peer_ns.map(|n| n.name()).unwrap_or(self.ns.name());
        self.request(
            m,
            format!(
                "create veth {name} ({}) <-> {peer} ({peer_ns_name})",
                self.ns.name()
            ),
        )?;
        self.require(name.as_str())
    }

    /// Changes admin state, master, MTU or MAC of a link.
    pub fn set_link(&self, l: &Link, c: LinkChange) -> Result<()> {
        let (mut flags, mut change) = (0, 0);
        if let Some(up) = c.up {
            change |= IFF_UP;
            if up {
                flags |= IFF_UP;
            }
        }
        let mut m =
            Msg::new(RTM_NEWLINK, 0).header(&ifinfomsg(AF_UNSPEC, l.index as i32, flags, change));
        if let Some(mtu) = c.mtu {
            check_mtu(mtu)?;
            m.attr_u32(IFLA_MTU, mtu);
        }
        if let Some(master) = c.master {
            m.attr_u32(IFLA_MASTER, master.unwrap_or(0));
        }
        if let Some(mac) = c.mac {
            m.attr(IFLA_ADDRESS, &mac.0);
        }
        if let Some(g) = c.group {
            m.attr_u32(IFLA_GROUP, g);
        }
        self.request(m, format!("configure {} in {}", l.name, self.ns.name()))
    }

    /// Deletes a link by name; absent is fine.
    pub fn delete_link(&self, name: &str) -> Result<()> {
        let mut m = Msg::new(RTM_DELLINK, 0).header(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.sock().request(m) {
            Ok(()) => Ok(()),
            Err(e) if e.errno == libc::ENODEV => Ok(()),
            Err(e) => Err(NetError::nl(format!("delete {name} in {}", self.ns.name()))(e)),
        }
    }

    /// Replaces the VLAN membership of a port of a VLAN-filtering bridge.
    /// A port joins a VLAN-filtering bridge in VLAN 1 (PVID, untagged); a port given a VLAN
    /// role leaves VLAN 1 unless the role includes it.
    pub fn set_port_vlans(&self, port: &Link, old: &PortVlan, new: &PortVlan) -> Result<()> {
        let mut remove = vlan_entries(old);
        let wanted = vlan_entries(new);
        if *new != PortVlan::None && !wanted.iter().any(|(v, _)| *v == 1) {
            remove.push((1, 0));
        }
        for (vid, _) in remove {
            let m = bridge_vlan_msg(RTM_DELLINK, port.index, vid, 0);
            match self.sock().request(m) {
                Ok(()) => {}
                Err(e) if e.errno == libc::ENOENT || e.errno == libc::EINVAL => {}
                Err(e) => {
                    return Err(NetError::nl(format!(
                        "remove VLAN {vid} from {}",
                        port.name
                    ))(e))
                }
            }
        }
        for (vid, flags) in vlan_entries(new) {
            let m = bridge_vlan_msg(RTM_SETLINK, port.index, vid, flags);
            self.request(m, format!("add VLAN {vid} to {}", port.name))?;
        }
        Ok(())
    }

    /// Adds an IPv4 address (replacing an identical one).
    pub fn add_addr(&self, l: &Link, cidr: Ipv4Cidr) -> Result<()> {
        let mut h = [0u8; 8];
        h[0] = AF_INET;
        h[1] = cidr.prefix();
        h[4..8].copy_from_slice(&l.index.to_ne_bytes());
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE).header(&h);
        m.attr(IFA_LOCAL, &cidr.addr().octets());
        m.attr(IFA_ADDRESS, &cidr.addr().octets());
        self.request(m, format!("add {cidr} to {} in {}", l.name, self.ns.name()))
    }

    /// IPv4 addresses of a link.
    pub fn addrs(&self, l: &Link) -> Result<Vec<Ipv4Cidr>> {
        Ok(self
            .all_addrs()?
            .into_iter()
            .filter(|(i, _)| *i == l.index)
            .map(|(_, c)| c)
            .collect())
    }

    /// Every IPv4 address of the namespace as `(ifindex, address/prefix)`.
    pub fn all_addrs(&self) -> Result<Vec<(u32, Ipv4Cidr)>> {
        let mut h = [0u8; 8];
        h[0] = AF_INET;
        let m = Msg::new(RTM_GETADDR, NLM_F_DUMP).header(&h);
        let replies = self.sock().dump(m).map_err(NetError::nl(format!(
            "list addresses in {}",
            self.ns.name()
        )))?;
        let mut out = Vec::new();
        for r in replies {
            let p = &r.payload;
            if p.len() < 8 {
                continue;
            }
            let index = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            for (ty, a) in attrs(&p[8..]) {
                if ty == IFA_LOCAL && a.len() == 4 {
                    let addr = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                    out.push((index, Ipv4Cidr::new(addr, p[1])?));
                }
            }
        }
        Ok(out)
    }

    /// Adds or replaces a route; `dst` `None` is the default route.
    pub fn add_route(
        &self,
        dst: Option<Ipv4Cidr>,
        gateway: Option<Ipv4Addr>,
        oif: Option<&Link>,
    ) -> Result<()> {
        let mut h = [0u8; 12];
        h[0] = AF_INET;
        h[1] = dst.map(|d| d.prefix()).unwrap_or(0);
        h[4] = 254; // RT_TABLE_MAIN
        h[5] = 4; // RTPROT_STATIC
        h[6] = if gateway.is_some() { 0 } else { 253 }; // RT_SCOPE_UNIVERSE / RT_SCOPE_LINK
        h[7] = 1; // RTN_UNICAST
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE).header(&h);
        if let Some(d) = dst {
            m.attr(RTA_DST, &d.addr().octets());
        }
        if let Some(g) = gateway {
            m.attr(RTA_GATEWAY, &g.octets());
        }
        if let Some(l) = oif {
            m.attr_u32(RTA_OIF, l.index);
        }
        let what = dst
            .map(|d| d.to_string())
            .unwrap_or_else(|| "default".into());
        self.request(m, format!("add route {what} in {}", self.ns.name()))
    }

    /// Replaces the root qdisc of `l` with `kind`, whose `TCA_OPTIONS` payload `opts` writes.
    pub(crate) fn replace_root_qdisc(
        &self,
        l: &Link,
        handle: u32,
        kind: &str,
        opts: impl FnOnce(&mut Msg),
    ) -> Result<()> {
        let m = qdisc_msg(l.index, handle, TC_H_ROOT, kind, opts);
        self.request(
            m,
            format!("set {kind} qdisc on {} in {}", l.name, self.ns.name()),
        )
    }

    /// Adds or replaces a child qdisc under `parent`.
    pub(crate) fn replace_child_qdisc(
        &self,
        l: &Link,
        handle: u32,
        parent: u32,
        kind: &str,
        opts: impl FnOnce(&mut Msg),
    ) -> Result<()> {
        let m = qdisc_msg(l.index, handle, parent, kind, opts);
        self.request(
            m,
            format!("set {kind} qdisc on {} in {}", l.name, self.ns.name()),
        )
    }

    /// Removes the root qdisc of `l` (back to the default); none is fine.
    pub fn delete_root_qdisc(&self, l: &Link) -> Result<()> {
        let m = Msg::new(RTM_DELQDISC, 0).header(&tcmsg(l.index as i32, 0, TC_H_ROOT));
        match self.sock().request(m) {
            Ok(()) => Ok(()),
            // ENOENT: no qdisc configured; EINVAL: "Cannot delete qdisc with handle of zero".
            Err(e) if e.errno == libc::ENOENT || e.errno == libc::EINVAL => Ok(()),
            Err(e) => Err(NetError::nl(format!(
                "remove qdisc of {} in {}",
                l.name,
                self.ns.name()
            ))(e)),
        }
    }

    /// All qdiscs of the namespace.
    pub fn qdiscs(&self) -> Result<Vec<Qdisc>> {
        let m = Msg::new(RTM_GETQDISC, NLM_F_DUMP).header(&tcmsg(0, 0, 0));
        let replies = self
            .sock()
            .dump(m)
            .map_err(NetError::nl(format!("list qdiscs in {}", self.ns.name())))?;
        let mut out = Vec::new();
        for r in replies {
            let p = &r.payload;
            if p.len() < 20 {
                continue;
            }
            let mut q = Qdisc {
                ifindex: u32::from_ne_bytes([p[4], p[5], p[6], p[7]]),
                handle: u32::from_ne_bytes([p[8], p[9], p[10], p[11]]),
                parent: u32::from_ne_bytes([p[12], p[13], p[14], p[15]]),
                kind: String::new(),
            };
            for (ty, a) in attrs(&p[20..]) {
                if ty == TCA_KIND {
                    q.kind = get_str(a);
                }
            }
            out.push(q);
        }
        Ok(out)
    }
}

pub(crate) fn qdisc_msg(
    index: u32,
    handle: u32,
    parent: u32,
    kind: &str,
    opts: impl FnOnce(&mut Msg),
) -> Msg {
    let mut m = Msg::new(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE).header(&tcmsg(
        index as i32,
        handle,
        parent,
    ));
    m.attr_str(TCA_KIND, kind);
    m.nest(TCA_OPTIONS);
    opts(&mut m);
    m.nest_end();
    m
}

/// A change to a link; `None` fields are left alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkChange {
    /// Admin up/down.
    pub up: Option<bool>,
    /// `Some(Some(i))` enslaves to bridge `i`, `Some(None)` releases.
    pub master: Option<Option<u32>>,
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC address.
    pub mac: Option<MacAddr>,
    /// Device group.
    pub group: Option<u32>,
}

fn vlan_entries(v: &PortVlan) -> Vec<(u16, u16)> {
    match v {
        PortVlan::None => vec![],
        PortVlan::Access(id) => vec![(id.get(), BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED)],
        PortVlan::Trunk { tagged, native } => {
            let mut out: Vec<(u16, u16)> = tagged.iter().map(|t| (t.get(), 0)).collect();
            if let Some(n) = native {
                out.retain(|(v, _)| *v != n.get());
                out.push((n.get(), BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED));
            }
            out
        }
    }
}

/// `RTM_SETLINK`/`RTM_DELLINK` with family AF_BRIDGE and `IFLA_AF_SPEC { IFLA_BRIDGE_VLAN_INFO }`,
/// as `bridge vlan add/del dev PORT vid VID [pvid] [untagged]` sends it.
pub(crate) fn bridge_vlan_msg(ty: u16, index: u32, vid: u16, flags: u16) -> Msg {
    let mut m = Msg::new(ty, 0).header(&ifinfomsg(AF_BRIDGE, index as i32, 0, 0));
    let mut info = [0u8; 4];
    info[0..2].copy_from_slice(&flags.to_ne_bytes());
    info[2..4].copy_from_slice(&vid.to_ne_bytes());
    m.nest(IFLA_AF_SPEC)
        .attr(IFLA_BRIDGE_VLAN_INFO, &info)
        .nest_end();
    m
}

// Keep the netlink module's helpers reachable for other modules' encoders.
#[allow(unused_imports)]
pub(crate) use netlink::align4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_vlan_access_encoding() {
        // bridge vlan add dev <ifindex 5> vid 10 pvid untagged
        let m = bridge_vlan_msg(
            RTM_SETLINK,
            5,
            10,
            BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED,
        );
        let p = m.payload();
        let mut want = ifinfomsg(AF_BRIDGE, 5, 0, 0).to_vec();
        // IFLA_AF_SPEC (len 12, type 26) { IFLA_BRIDGE_VLAN_INFO (len 8, type 2) flags=6 vid=10 }
        want.extend_from_slice(&[12, 0, 26, 0, 8, 0, 2, 0, 6, 0, 10, 0]);
        assert_eq!(p, &want[..]);
    }

    #[test]
    fn stats_of_a_link_message() {
        fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
            let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
            v.extend(ty.to_ne_bytes());
            v.extend(data);
            while !v.len().is_multiple_of(4) {
                v.push(0);
            }
            v
        }
        let mut p = ifinfomsg(AF_UNSPEC, 7, 0, 0).to_vec();
        p.extend(attr(IFLA_IFNAME, b"tap0\0"));
        // rtnl_link_stats64 is longer than the eight counters read (24 in 6.1): all 24 here.
        let counters: Vec<u8> = (1u64..=24).flat_map(|n| (n * 100).to_ne_bytes()).collect();
        p.extend(attr(IFLA_STATS64, &counters));
        let (name, st) = parse_stats(&p).unwrap();
        assert_eq!(name, "tap0");
        assert_eq!(
            (st.rx_packets, st.tx_packets, st.rx_bytes, st.tx_bytes),
            (100, 200, 300, 400)
        );
        assert_eq!((st.rx_dropped, st.tx_dropped), (700, 800));
        // A truncated counters attribute or a missing name gives nothing (never a panic).
        let mut short = ifinfomsg(AF_UNSPEC, 7, 0, 0).to_vec();
        short.extend(attr(IFLA_IFNAME, b"tap0\0"));
        short.extend(attr(IFLA_STATS64, &counters[..40]));
        assert_eq!(parse_stats(&short), None);
        assert_eq!(parse_stats(&p[..10]), None);
    }

    #[test]
    fn trunk_entries() {
        let t = PortVlan::Trunk {
            tagged: vec![VlanId::new(10).unwrap(), VlanId::new(20).unwrap()],
            native: Some(VlanId::new(20).unwrap()),
        };
        assert_eq!(vlan_entries(&t), vec![(10, 0), (20, 6)]);
    }
}
