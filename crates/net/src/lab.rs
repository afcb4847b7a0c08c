//! [`LabNet`]: everything of one lab's host network, in one namespace `kb-<lab>`.
//!
//! Layout of a lab:
//! ```text
//!  host netns                     | lab netns kb-<lab>
//!  kbu<hash> (uplink, optional) ---- uplink ─ [nft kobako-<lab>: masquerade, DNAT]
//!  [nft kobako-<lab>: masquerade,   |   bridge per network / p2p link (optional gateway address)
//!   DNAT of published host ports]   |     ├─ tap per VM interface (persistent; runtime attaches)
//!                                   |     └─ veth to an endpoint netns (tests, containers)
//! ```
//! Every method is idempotent: it compares what exists with what is asked and only makes the
//! difference, so re-running after a crash finishes the job. [`LabNet::delete`] removes every
//! object of a lab (links in the lab namespace — which takes the host ends of veths with them —
//! nft tables on both sides, the host uplink, the namespace) and is fine to call twice.
//!
//! Kernel features are probed once per process ([`Features`]); where the kernel lacks netem or
//! bridge VLAN filtering the same API is served by the userspace relay ([`crate::relay`]) and
//! per-VLAN bridges, so labs behave the same on minimal host kernels.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::capture::{self, Capture, CaptureOptions};
use crate::error::{NetError, Result};
use crate::impair::{Impairment, Shaping};
use crate::netns::{Netns, NsThread};
use crate::nft::{Chain, Expr, Hook, Nft, L4};
use crate::relay::{self, Leg, Relay};
use crate::rtnl::{BridgeOpts, Link, LinkChange, PortVlan, Rtnl};
use crate::tap::{self, TapFlags};
use crate::types::{check_mtu, IfName, Ipv4Cidr, LabName, MacAddr};

/// Device group of every link kobako creates in a lab namespace ("kb"), so the whole lab
/// can be deleted in one kernel batch.
pub const LAB_GROUP: u32 = 0x6b62;

/// Name of the lab side of the uplink veth, inside the lab namespace.
pub const UPLINK_IFNAME: &str = "uplink";

/// What the running kernel can do, probed once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `sch_netem` is available: impairments are kernel qdiscs.
    pub netem: bool,
    /// Bridge VLAN filtering is available: VLANs are bridge VLAN entries.
    pub vlan_filtering: bool,
}

/// The kind of a lab port.
#[derive(Debug, Clone)]
pub enum PortKind {
    /// A persistent tap for a VM runtime.
    Tap,
    /// A veth pair whose other end lives in `peer_ns` as `peer_name` (an endpoint namespace,
    /// a container, or a test).
    Veth {
        /// Namespace of the far end.
        peer_ns: Netns,
        /// Name of the far end.
        peer_name: IfName,
        /// MAC of the far end (use [`MacAddr::derived`]).
        peer_mac: Option<MacAddr>,
    },
}

/// A port of a lab network: a tap or veth in the lab namespace, attached to a bridge.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Name in the lab namespace.
    pub name: IfName,
    /// Tap or veth.
    pub kind: PortKind,
    /// Bridge to join (must exist), or none.
    pub bridge: Option<IfName>,
    /// MAC of the lab-side device.
    pub mac: Option<MacAddr>,
    /// MTU (both ends for veths).
    pub mtu: Option<u32>,
    /// VLAN membership.
    pub vlan: PortVlan,
}

impl PortSpec {
    /// A tap on `bridge` with no VLAN configuration.
    pub fn tap(name: IfName, bridge: IfName) -> PortSpec {
        PortSpec {
            name,
            kind: PortKind::Tap,
            bridge: Some(bridge),
            mac: None,
            mtu: None,
            vlan: PortVlan::None,
        }
    }

    /// A veth on `bridge` whose far end is `peer_name` in `peer_ns`.
    pub fn veth(name: IfName, bridge: IfName, peer_ns: &Netns, peer_name: IfName) -> PortSpec {
        PortSpec {
            name,
            kind: PortKind::Veth {
                peer_ns: peer_ns.clone(),
                peer_name,
                peer_mac: None,
            },
            bridge: Some(bridge),
            mac: None,
            mtu: None,
            vlan: PortVlan::None,
        }
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP
    Tcp,
    /// UDP
    Udp,
}

/// A host port forwarded to `target:target_port` inside the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    /// Protocol.
    pub proto: Proto,
    /// Port on the host's addresses.
    pub host_port: u16,
    /// VM address inside the lab.
    pub target: Ipv4Addr,
    /// VM port.
    pub target_port: u16,
}

/// Outbound NAT through the host and published ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Host end of the uplink veth, with its prefix (the transfer network).
    pub host_addr: Ipv4Cidr,
    /// Lab end of the uplink veth (in the same prefix).
    pub lab_addr: Ipv4Addr,
    /// Host ports forwarded into the lab.
    pub published: Vec<PublishedPort>,
    /// Whether lab traffic may leave through the host (NAT to the outside). Without it the
    /// uplink only carries published ports: the host forwards nothing the lab starts.
    /// Either way the lab can never open a connection to the host itself. Traffic leaving
    /// the host also needs the host's `net.ipv4.ip_forward` (see [`crate::sysctl`]).
    pub outbound: bool,
    /// Ranges of [`EGRESS_BLOCKED`] this lab may reach anyway (an admin's decision, e.g. a
    /// lab that must talk to a LAN). The host's own addresses and other labs stay closed.
    pub allow: Vec<Ipv4Cidr>,
}

/// Destinations outbound lab traffic never reaches unless [`Uplink::allow`] opens them:
/// "this network", private (RFC 1918), shared address space (RFC 6598: other labs' uplinks),
/// loopback, link-local (cloud metadata at 169.254.169.254), multicast and reserved/broadcast.
/// The host's own addresses are closed separately and always (the input hook).
pub const EGRESS_BLOCKED: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

impl Uplink {
    /// A transfer /30 in 100.64.0.0/10 (shared address space, RFC 6598) derived from the lab
    /// name, so each lab gets a stable, distinct pair of addresses.
    pub fn derived(lab: &LabName) -> Uplink {
        let d = Sha256::digest(lab.as_str().as_bytes());
        // 2^20 /30 blocks in 100.64.0.0/10.
        let block = ((d[0] as u32) << 12 | (d[1] as u32) << 4 | (d[2] as u32 >> 4)) & 0xf_ffff;
        let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + block * 4;
        Uplink {
            host_addr: Ipv4Cidr::from_parts(Ipv4Addr::from(base + 1), 30),
            lab_addr: Ipv4Addr::from(base + 2),
            published: Vec::new(),
            outbound: true,
            allow: Vec::new(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NetError::InvalidArgument(m));
        let p = self.host_addr.prefix();
        if p == 0 || p > 30 {
            return bad(format!("uplink prefix /{p} must be 1..=30"));
        }
        let mask = u32::MAX << (32 - p);
        let h = u32::from(self.host_addr.addr());
        let l = u32::from(self.lab_addr);
        if h & mask != l & mask || h == l {
            return bad(format!(
                "uplink lab address {} must be a different address in {}",
                self.lab_addr, self.host_addr
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for pp in &self.published {
            if pp.host_port == 0 || pp.target_port == 0 {
                return bad("published port 0".into());
            }
            if !seen.insert((pp.proto, pp.host_port)) {
                return bad(format!("host port {} published twice", pp.host_port));
            }
        }
        Ok(())
    }
}

/// The forward rules of an outbound uplink (`kbu` = the lab's host end), in order:
/// 1. `iifname kbu oifname "kbu*" drop` — never into another lab (its uplink or published ports);
/// 2. `iifname kbu ct state established,related accept` — answers (published ports to LAN
///    clients included);
/// 3. `iifname kbu ip daddr ALLOWED accept` for each range the lab's policy opens;
/// 4. `iifname kbu ip daddr BLOCKED drop` for each of [`EGRESS_BLOCKED`].
///
/// The host's own addresses never reach this chain (they are delivered locally: the input
/// chain drops what the lab starts), so `allow` cannot open them.
pub(crate) fn egress_rules(host_if: &IfName, allow: &[Ipv4Cidr]) -> Vec<Vec<Expr>> {
    let from = || -> Vec<Expr> { Expr::iifname_eq(host_if).into() };
    let mut rules = Vec::new();
    let mut r = from();
    r.push(Expr::Meta(7));
    r.push(Expr::Cmp(true, b"kbu".to_vec()));
    r.push(Expr::Verdict(false));
    rules.push(r);
    let mut r = from();
    r.extend(Expr::ct_established_or_related());
    r.push(Expr::Verdict(true));
    rules.push(r);
    for a in allow {
        let mut r = from();
        r.extend(Expr::daddr_in(*a));
        r.push(Expr::Verdict(true));
        rules.push(r);
    }
    for &(a, p) in EGRESS_BLOCKED {
        let mut r = from();
        r.extend(Expr::daddr_in(Ipv4Cidr::from_parts(a, p)));
        r.push(Expr::Verdict(false));
        rules.push(r);
    }
    rules
}

/// Per-port state kept in memory for the fallback datapath.
#[derive(Debug, Clone)]
struct PortState {
    bridge: Option<IfName>,
    vlan: PortVlan,
    impairment: Option<Impairment>,
    shaping: Option<Shaping>,
    /// A fallback trunk: the relay is the port's datapath, not just its impairment.
    trunk_relay: bool,
}

/// The host network of one lab.
#[derive(Debug)]
pub struct LabNet {
    name: LabName,
    ns: Netns,
    rt: Rtnl,
    features: Features,
    ports: Mutex<HashMap<String, PortState>>,
    relays: Mutex<HashMap<String, Relay>>,
}

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    format!("{:02x}{:02x}{:02x}", d[0], d[1], d[2])
}

/// Name of the per-VLAN bridge used for `bridge`'s VLAN `vid` when the kernel has no VLAN
/// filtering: `kbv<6 hex>.<vid>` (≤ 14 bytes).
fn vlan_bridge_name(bridge: &IfName, vid: u16) -> IfName {
    IfName(format!("kbv{}.{}", short_hash(bridge.as_str()), vid))
}

/// Names of the relay leg veth pair of a port (`a` joins the bridge, `b` is read by the relay).
fn leg_names(port: &IfName, vid: Option<u16>) -> (IfName, IfName) {
    let tag = vid.map(|v| v.to_string()).unwrap_or_else(|| "u".into());
    let base = format!("kl{}.{}", short_hash(port.as_str()), tag);
    (IfName(format!("{base}a")), IfName(format!("{base}b")))
}

/// Whether [`set_userspace`] forced the userspace fallback for this process.
static USERSPACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Forces the userspace fallback (relays instead of VLAN filtering, no netem) on any kernel for
/// this process: the binary passes `KOBAKO_NET_USERSPACE` (set and not `0`). Call it at start,
/// before the first lab network is set up: the kernel's features are probed once.
pub fn set_userspace(on: bool) {
    USERSPACE.store(on, std::sync::atomic::Ordering::SeqCst);
}

fn probe(rt: &Rtnl) -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(|| {
        if USERSPACE.load(std::sync::atomic::Ordering::SeqCst) {
            return Features {
                netem: false,
                vlan_filtering: false,
            };
        }
        let netem = match rt.link("lo") {
            Ok(Some(lo)) => {
                let ok = rt
                    .replace_root_qdisc(&lo, 0x10000, "netem", |m| {
                        Impairment::default().encode_netem(m)
                    })
                    .is_ok();
                if ok {
                    let _ = rt.delete_root_qdisc(&lo);
                }
                ok
            }
            _ => false,
        };
        let probe_name = IfName("kbprobe0".into());
        let vlan_filtering = rt
            .ensure_bridge(
                &probe_name,
                BridgeOpts {
                    mtu: None,
                    vlan_filtering: true,
                },
            )
            .map(|l| l.vlan_filtering)
            .unwrap_or(false);
        let _ = rt.delete_link(probe_name.as_str());
        tracing::info!(netem, vlan_filtering, "kobako-net kernel features");
        Features {
            netem,
            vlan_filtering,
        }
    })
}

impl LabNet {
    /// Creates the lab's namespace (or reopens it) with loopback up.
    pub fn ensure(name: &LabName) -> Result<LabNet> {
        let ns = Netns::create(&name.netns_name())?;
        Self::from_ns(name, ns)
    }

    /// Opens an existing lab, `None` if its namespace does not exist.
    pub fn open(name: &LabName) -> Result<Option<LabNet>> {
        match Netns::open(&name.netns_name())? {
            Some(ns) => Ok(Some(Self::from_ns(name, ns)?)),
            None => Ok(None),
        }
    }

    fn from_ns(name: &LabName, ns: Netns) -> Result<LabNet> {
        let rt = Rtnl::open(&ns)?.with_group(LAB_GROUP);
        let lo = rt.require("lo")?;
        if !lo.up {
            rt.set_link(
                &lo,
                LinkChange {
                    up: Some(true),
                    ..Default::default()
                },
            )?;
        }
        // The lab namespace is plumbing, not a host on the lab's networks: its bridges, taps
        // and legs get no IPv6 addresses, so it sends no router solicitations, MLD reports or
        // DAD probes into guest networks (and captures show only guest traffic). Bridging of
        // the guests' IPv6 is unaffected. Absent on kernels without IPv6: ignored.
        let _ = ns.set_sysctl("ipv6/conf/default/disable_ipv6", "1");
        let features = probe(&rt);
        Ok(LabNet {
            name: name.clone(),
            ns,
            rt,
            features,
            ports: Mutex::new(HashMap::new()),
            relays: Mutex::new(HashMap::new()),
        })
    }

    /// Names of the labs that have a namespace on this host.
    pub fn list() -> Result<Vec<LabName>> {
        Ok(Netns::list("kb-")?
            .into_iter()
            .filter_map(|n| LabName::new(&n[3..]).ok())
            .collect())
    }

    /// Removes everything of lab `name`; absent or half-deleted labs are fine.
    pub fn delete(name: &LabName) -> Result<()> {
        tracing::debug!(lab = %name, "delete lab");
        let host = Netns::host()?;
        if let Some(ns) = Netns::open(&name.netns_name())? {
            let rt = Rtnl::open(&ns)?;
            rt.delete_group(LAB_GROUP)?;
            // Deleting links explicitly (rather than leaving it to namespace teardown, which the
            // kernel runs asynchronously) removes the peers of veths — host uplink, endpoints —
            // before we return. Everything kobako made is in LAB_GROUP and goes in one batch;
            // stragglers (made by others, or before a crash set their group) one by one,
            // bridges last so ports are released first.
            let links = rt.links()?;
            for l in links
                .iter()
                .filter(|l| l.name != "lo" && l.kind.as_deref() != Some("bridge"))
            {
                rt.delete_link(&l.name)?;
            }
            for l in links.iter().filter(|l| l.kind.as_deref() == Some("bridge")) {
                rt.delete_link(&l.name)?;
            }
        }
        Netns::delete(&name.netns_name())?;
        Nft::open(&host)?.delete_table(&name.nft_table())?;
        Rtnl::open(&host)?.delete_link(name.uplink_host_ifname().as_str())?;
        Ok(())
    }

    /// Removes lab `name` the way `ip netns del` does: the host side (nft table, uplink veth —
    /// which takes its lab end with it) synchronously, then the namespace's name; the kernel
    /// frees the namespace and the devices in it in the background once nothing refers to it
    /// (no VM process, no open socket). Returns in milliseconds instead of ~6 ms per bridge port;
    /// use [`LabNet::delete`] when the devices must be gone on return (e.g. veth peers in other
    /// namespaces).
    pub fn delete_detached(name: &LabName) -> Result<()> {
        tracing::debug!(lab = %name, "delete lab (detached)");
        let host = Netns::host()?;
        Nft::open(&host)?.delete_table(&name.nft_table())?;
        Rtnl::open(&host)?.delete_link(name.uplink_host_ifname().as_str())?;
        Netns::delete(&name.netns_name())
    }

    /// Stops this handle's relays and removes the lab ([`LabNet::delete`]).
    pub fn destroy(self) -> Result<()> {
        self.stop_relays();
        Self::delete(&self.name)
    }

    /// Stops this handle's relays and removes the lab ([`LabNet::delete_detached`]).
    pub fn destroy_detached(self) -> Result<()> {
        self.stop_relays();
        Self::delete_detached(&self.name)
    }

    fn stop_relays(&self) {
        let relays: Vec<Relay> = self
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, r)| r)
            .collect();
        for r in &relays {
            r.signal_stop();
        }
        drop(relays);
    }

    /// The lab's name.
    pub fn name(&self) -> &LabName {
        &self.name
    }

    /// The lab's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// rtnetlink handle on the lab namespace.
    pub fn rtnl(&self) -> &Rtnl {
        &self.rt
    }

    /// Kernel features in use.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Runs `f` on a thread inside the lab namespace.
    pub fn run<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> Result<R> {
        self.ns.run(f)
    }

    /// Spawns a long-lived thread inside the lab namespace.
    pub fn spawn<F, R>(&self, name: &str, f: F) -> Result<NsThread<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.ns.spawn(name, f)
    }

    /// Creates (or reuses) a bridge for a network or point-to-point link, up, optionally with a
    /// gateway address for the lab namespace itself (routing, uplink NAT, published ports).
    /// `vlan_aware` requests 802.1Q VLAN filtering (kernel) or per-VLAN bridges (fallback).
    pub fn ensure_bridge(
        &self,
        name: &IfName,
        mtu: Option<u32>,
        gateway: Option<Ipv4Cidr>,
        vlan_aware: bool,
    ) -> Result<Link> {
        let l = self.rt.ensure_bridge(
            name,
            BridgeOpts {
                mtu,
                vlan_filtering: vlan_aware && self.features.vlan_filtering,
            },
        )?;
        if let Some(g) = gateway {
            self.rt.add_addr(&l, g)?;
        }
        Ok(l)
    }

    fn port_state(&self, name: &IfName) -> Option<PortState> {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name.as_str())
            .cloned()
    }

    fn update_port(&self, name: &IfName, f: impl FnOnce(&mut PortState)) {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let st = ports.entry(name.as_str().to_string()).or_insert(PortState {
            bridge: None,
            vlan: PortVlan::None,
            impairment: None,
            shaping: None,
            trunk_relay: false,
        });
        f(st);
    }

    /// Creates (or completes) a port: the device, its MTU/MAC, its bridge and VLANs, up.
    /// Everything is validated before anything is created.
    pub fn ensure_port(&self, spec: &PortSpec) -> Result<Link> {
        tracing::debug!(lab = %self.name, port = %spec.name, vlan = ?spec.vlan, "ensure port");
        if let Some(mtu) = spec.mtu {
            check_mtu(mtu)?;
        }
        if let PortVlan::Trunk { tagged, native } = &spec.vlan {
            if tagged.is_empty() && native.is_none() {
                return Err(NetError::InvalidArgument(format!(
                    "trunk port {} carries no VLAN",
                    spec.name
                )));
            }
        }
        let bridge = match &spec.bridge {
            Some(b) => Some(self.rt.require(b.as_str())?),
            None => None,
        };
        if bridge.is_none() && spec.vlan != PortVlan::None {
            return Err(NetError::InvalidArgument(format!(
                "port {} has VLANs but no bridge",
                spec.name
            )));
        }
        let link = match &spec.kind {
            PortKind::Tap => {
                match self.rt.link(spec.name.as_str())? {
                    Some(l) if l.kind.as_deref() != Some("tun") => {
                        return Err(NetError::Conflict {
                            ns: self.ns.name().into(),
                            name: spec.name.to_string(),
                            found: l.kind.unwrap_or_else(|| "device".into()),
                            expected: "tap",
                        })
                    }
                    Some(_) => {}
                    None => tap::create_tap(&self.ns, &spec.name)?,
                }
                self.rt.require(spec.name.as_str())?
            }
            PortKind::Veth {
                peer_ns,
                peer_name,
                peer_mac,
            } => {
                let l = self.rt.ensure_veth(
                    &spec.name,
                    spec.mac,
                    peer_name,
                    Some(peer_ns),
                    *peer_mac,
                    spec.mtu,
                )?;
                // Bring the far end up too; its addresses are the endpoint's business.
                let prt = Rtnl::open(peer_ns)?;
                if let Some(p) = prt.link(peer_name.as_str())? {
                    prt.set_link(
                        &p,
                        LinkChange {
                            up: Some(true),
                            mtu: spec.mtu,
                            ..Default::default()
                        },
                    )?;
                }
                l
            }
        };
        let res = self.attach(&link, spec, bridge.as_ref());
        if res.is_err() && matches!(spec.kind, PortKind::Tap | PortKind::Veth { .. }) {
            // Nothing half-made: a port that could not be attached is removed again.
            let _ = self.rt.delete_link(spec.name.as_str());
        }
        res?;
        self.update_port(&spec.name, |st| {
            st.bridge = spec.bridge.clone();
            st.vlan = spec.vlan.clone();
        });
        // Re-apply impairments remembered for this port (e.g. after re-creation).
        if let Some(st) = self.port_state(&spec.name) {
            if let Some(i) = st.impairment {
                self.set_impairment(&spec.name, &i)?;
            }
        }
        self.rt.require(spec.name.as_str())
    }

    fn attach(&self, link: &Link, spec: &PortSpec, bridge: Option<&Link>) -> Result<()> {
        let mut change = LinkChange {
            up: Some(true),
            mtu: spec.mtu,
            ..Default::default()
        };
        if matches!(spec.kind, PortKind::Tap) {
            change.mac = spec.mac;
            change.group = self.rt.group();
        }
        let Some(br) = bridge else {
            self.rt.set_link(link, change)?;
            return Ok(());
        };
        // An impairment relay running for this port stands in for it on the bridge: keep the
        // port off the bridge (both on it would loop frames) and point the relay's leg there.
        let relayed = {
            let trunk = self.port_state(&spec.name).is_some_and(|s| s.trunk_relay);
            !trunk
                && self
                    .relays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(spec.name.as_str())
                    .is_some_and(|r| r.is_running())
        };
        let mut plug = |target: &Link, vlan: &PortVlan| -> Result<()> {
            if relayed {
                change.master = Some(None);
                self.rt.set_link(link, change)?;
                let (a, _) = leg_names(&spec.name, None);
                let la = self.rt.require(a.as_str())?;
                self.rt.set_link(
                    &la,
                    LinkChange {
                        master: Some(Some(target.index)),
                        ..Default::default()
                    },
                )?;
                if target.vlan_filtering {
                    self.rt.set_port_vlans(&la, &PortVlan::None, vlan)?;
                }
            } else {
                change.master = Some(Some(target.index));
                self.rt.set_link(link, change)?;
                if target.vlan_filtering {
                    self.rt.set_port_vlans(link, &PortVlan::None, vlan)?;
                }
            }
            Ok(())
        };
        match (&spec.vlan, br.vlan_filtering) {
            (PortVlan::None, _) | (_, true) => plug(br, &spec.vlan)?,
            (PortVlan::Access(vid), false) => {
                let sub = self.ensure_vlan_bridge(br, vid.get())?;
                plug(&sub, &PortVlan::None)?;
            }
            (PortVlan::Trunk { tagged, native }, false) => {
                // Replace (not duplicate) a previous trunk relay.
                self.relays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(spec.name.as_str());
                change.master = Some(None);
                self.rt.set_link(link, change)?;
                let mut legs = Vec::new();
                for vid in tagged {
                    let sub = self.ensure_vlan_bridge(br, vid.get())?;
                    legs.push(self.ensure_leg(&spec.name, Some(vid.get()), &sub, spec.mtu)?);
                }
                if let Some(n) = native {
                    let sub = self.ensure_vlan_bridge(br, n.get())?;
                    legs.push(self.ensure_leg(&spec.name, None, &sub, spec.mtu)?);
                }
                let imp = self.port_state(&spec.name).and_then(|s| s.impairment);
                let r = relay::start(&self.ns, link.index, legs, false, imp)?;
                self.relays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(spec.name.to_string(), r);
                self.update_port(&spec.name, |st| st.trunk_relay = true);
            }
        }
        Ok(())
    }

    /// The bridge that carries `vid` of `br` when the kernel has no VLAN filtering. VLAN 1 is
    /// the untagged default VLAN that plain ports share, i.e. `br` itself (as with the
    /// kernel's default PVID 1).
    fn ensure_vlan_bridge(&self, br: &Link, vid: u16) -> Result<Link> {
        if vid == 1 {
            return Ok(br.clone());
        }
        let name = vlan_bridge_name(&IfName(br.name.clone()), vid);
        self.rt.ensure_bridge(
            &name,
            BridgeOpts {
                mtu: Some(br.mtu),
                vlan_filtering: false,
            },
        )
    }

    /// Creates the veth pair of a relay leg, `a` enslaved to `into`, both up.
    fn ensure_leg(
        &self,
        port: &IfName,
        vid: Option<u16>,
        into: &Link,
        mtu: Option<u32>,
    ) -> Result<Leg> {
        let (a, b) = leg_names(port, vid);
        let la = self.rt.ensure_veth(&a, None, &b, None, None, mtu)?;
        self.rt.set_link(
            &la,
            LinkChange {
                up: Some(true),
                master: Some(Some(into.index)),
                ..Default::default()
            },
        )?;
        let lb = self.rt.require(b.as_str())?;
        self.rt.set_link(
            &lb,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )?;
        Ok(Leg {
            vid,
            ifindex: lb.index,
        })
    }

    /// Deletes a port (and its relay and legs); absent is fine.
    pub fn delete_port(&self, name: &IfName) -> Result<()> {
        self.relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name.as_str());
        let prefix = format!("kl{}.", short_hash(name.as_str()));
        for l in self.rt.links()? {
            if l.name.starts_with(&prefix) {
                self.rt.delete_link(&l.name)?;
            }
        }
        self.rt.delete_link(name.as_str())?;
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name.as_str());
        Ok(())
    }

    /// Opens tap `name` (in the lab namespace) for a runtime. A tap takes one fd at a time:
    /// EBUSY while another process (a running VM) holds it.
    pub fn open_tap(&self, name: &IfName, flags: TapFlags) -> Result<OwnedFd> {
        let l = self.rt.require(name.as_str())?;
        if l.kind.as_deref() != Some("tun") {
            return Err(NetError::Conflict {
                ns: self.ns.name().into(),
                name: name.to_string(),
                found: l.kind.unwrap_or_else(|| "device".into()),
                expected: "tap",
            });
        }
        tap::open_tap(&self.ns, name, flags)
    }

    /// Lets an unprivileged runtime (user `uid` / group `gid`) attach to tap `name`.
    pub fn set_tap_owner(&self, name: &IfName, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        let l = self.rt.require(name.as_str())?;
        if l.kind.as_deref() != Some("tun") {
            return Err(NetError::Conflict {
                ns: self.ns.name().into(),
                name: name.to_string(),
                found: l.kind.unwrap_or_else(|| "device".into()),
                expected: "tap",
            });
        }
        tap::set_owner(&self.ns, name, uid, gid)
    }

    /// Cuts (`false`) or heals (`true`) a link endpoint: the port goes administratively
    /// down/up, so its endpoint loses carrier and nothing is forwarded to or from it.
    pub fn set_link_up(&self, port: &IfName, up: bool) -> Result<()> {
        tracing::debug!(lab = %self.name, %port, up, "set link state");
        let l = self.rt.require(port.as_str())?;
        self.rt.set_link(
            &l,
            LinkChange {
                up: Some(up),
                ..Default::default()
            },
        )
    }

    /// Sets or changes, live, the impairment of traffic leaving `port` towards its endpoint.
    pub fn set_impairment(&self, port: &IfName, imp: &Impairment) -> Result<()> {
        tracing::debug!(lab = %self.name, %port, ?imp, netem = self.features.netem, "set impairment");
        let l = self.rt.require(port.as_str())?;
        if imp.is_none() {
            return self.clear_impairment(port);
        }
        if self.features.netem {
            self.rt
                .replace_root_qdisc(&l, 0x10000, "netem", |m| imp.encode_netem(m))?;
            let shaping = self.port_state(port).and_then(|s| s.shaping);
            if let Some(s) = shaping {
                self.rt
                    .replace_child_qdisc(&l, 0x100000, 0x10001, "tbf", |m| s.encode_tbf(m))?;
            }
        } else {
            self.ensure_impair_relay(port, &l, Some(imp.clone()))?;
        }
        self.update_port(port, |st| st.impairment = Some(imp.clone()));
        Ok(())
    }

    /// Removes the impairment of `port`; none is fine.
    pub fn clear_impairment(&self, port: &IfName) -> Result<()> {
        tracing::debug!(lab = %self.name, %port, "clear impairment");
        let l = self.rt.require(port.as_str())?;
        let st = self.port_state(port);
        if self.features.netem {
            self.rt.delete_root_qdisc(&l)?;
            if let Some(s) = st.as_ref().and_then(|s| s.shaping) {
                self.rt
                    .replace_root_qdisc(&l, 0x10000, "tbf", |m| s.encode_tbf(m))?;
            }
        } else {
            let trunk = st.as_ref().is_some_and(|s| s.trunk_relay);
            let mut relays = self.relays.lock().unwrap_or_else(|e| e.into_inner());
            if trunk {
                if let Some(r) = relays.get(port.as_str()) {
                    r.set(None);
                }
            } else if relays.remove(port.as_str()).is_some() || self.leg_exists(port)? {
                drop(relays);
                // Put the port back where the leg was, then drop the leg.
                let (a, _) = leg_names(port, None);
                let master = self.rt.link(a.as_str())?.and_then(|x| x.master);
                self.rt.set_link(
                    &l,
                    LinkChange {
                        master: Some(master),
                        ..Default::default()
                    },
                )?;
                // A VLAN-filtering bridge forgets a port's VLANs when it leaves; restore them.
                let filtering = match master {
                    Some(m) => self
                        .rt
                        .links()?
                        .iter()
                        .any(|x| x.index == m && x.vlan_filtering),
                    None => false,
                };
                if let (true, Some(st)) = (filtering, st.as_ref()) {
                    self.rt.set_port_vlans(&l, &PortVlan::None, &st.vlan)?;
                }
                self.rt.delete_link(a.as_str())?;
            }
        }
        self.update_port(port, |st| st.impairment = None);
        Ok(())
    }

    fn leg_exists(&self, port: &IfName) -> Result<bool> {
        Ok(self.rt.link(leg_names(port, None).0.as_str())?.is_some())
    }

    /// Inserts (or updates) the relay that impairs a non-trunk port.
    fn ensure_impair_relay(&self, port: &IfName, l: &Link, imp: Option<Impairment>) -> Result<()> {
        let mut relays = self.relays.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = relays.get(port.as_str()) {
            if r.is_running() {
                r.set(imp);
                return Ok(());
            }
        }
        // Where does the port forward to? Its bridge now, or (after a restart of this
        // process) the bridge its leg is enslaved to.
        let (a, _) = leg_names(port, None);
        let master = match l.master {
            Some(m) => Some(m),
            None => self.rt.link(a.as_str())?.and_then(|x| x.master),
        };
        let Some(master) = master else {
            return Err(NetError::InvalidArgument(format!(
                "port {port} is not on a bridge; nothing to impair"
            )));
        };
        let into = self
            .rt
            .links()?
            .into_iter()
            .find(|x| x.index == master)
            .ok_or_else(|| NetError::UnknownInterface {
                ns: self.ns.name().into(),
                name: format!("bridge #{master}"),
            })?;
        let leg = self.ensure_leg(port, None, &into, Some(l.mtu))?;
        self.rt.set_link(
            l,
            LinkChange {
                master: Some(None),
                ..Default::default()
            },
        )?;
        let vlan = self.port_state(port).map(|s| s.vlan).unwrap_or_default();
        // On a VLAN-filtering bridge the leg takes over the port's VLAN membership and the
        // relay is a transparent wire. Otherwise plain ports pass tagged frames through
        // untouched, like the bridge would; access ports (on a per-VLAN bridge) drop tagged
        // frames, like an access port does.
        let transparent = if into.vlan_filtering {
            let la = self.rt.require(a.as_str())?;
            self.rt.set_port_vlans(&la, &PortVlan::None, &vlan)?;
            true
        } else {
            !matches!(vlan, PortVlan::Access(_))
        };
        let r = relay::start(&self.ns, l.index, vec![leg], transparent, imp)?;
        relays.insert(port.to_string(), r);
        Ok(())
    }

    /// Sets (or with `None` removes) a token-bucket rate limit on traffic leaving `port`.
    pub fn set_shaping(&self, port: &IfName, shaping: Option<Shaping>) -> Result<()> {
        let l = self.rt.require(port.as_str())?;
        let netem_on = self.features.netem
            && self
                .port_state(port)
                .is_some_and(|s| s.impairment.is_some());
        match (shaping, netem_on) {
            (Some(s), true) => self
                .rt
                .replace_child_qdisc(&l, 0x100000, 0x10001, "tbf", |m| s.encode_tbf(m))?,
            (Some(s), false) => self
                .rt
                .replace_root_qdisc(&l, 0x10000, "tbf", |m| s.encode_tbf(m))?,
            (None, true) => {
                // Re-writing netem drops its child.
                if let Some(i) = self.port_state(port).and_then(|s| s.impairment) {
                    self.rt
                        .replace_root_qdisc(&l, 0x10000, "netem", |m| i.encode_netem(m))?;
                }
            }
            (None, false) => self.rt.delete_root_qdisc(&l)?,
        }
        self.update_port(port, |st| st.shaping = shaping);
        Ok(())
    }

    /// Configures (or with `None` removes) the uplink: a veth `uplink` ↔ `kbu<hash>` to the
    /// host, a default route in the lab, masquerading on both sides and DNAT for published
    /// ports. Re-applying replaces the rules atomically.
    pub fn set_uplink(&self, uplink: Option<&Uplink>) -> Result<()> {
        tracing::debug!(lab = %self.name, ?uplink, "set uplink");
        let host = Netns::host()?;
        let host_if = self.name.uplink_host_ifname();
        let table = self.name.nft_table();
        let Some(u) = uplink else {
            Nft::open(&host)?.delete_table(&table)?;
            Nft::open(&self.ns)?.delete_table(&table)?;
            self.rt.delete_link(UPLINK_IFNAME)?;
            return Ok(());
        };
        u.validate()?;
        let hrt = Rtnl::open(&host)?;
        // The transfer network must not already be in use on the host by anything else
        // (e.g. another lab whose derived /30 collides): that would break both.
        let own = hrt.link(host_if.as_str())?.map(|l| l.index);
        let (mask, net) = {
            let m = u32::MAX << (32 - u32::from(u.host_addr.prefix()));
            (m, u32::from(u.host_addr.addr()) & m)
        };
        for (idx, c) in hrt.all_addrs()? {
            if Some(idx) != own && u32::from(c.addr()) & mask == net {
                return Err(NetError::InvalidArgument(format!(
                    "uplink network {} overlaps host address {c} (interface #{idx}); \
                     choose another transfer network",
                    u.host_addr
                )));
            }
        }
        let up_if = IfName(UPLINK_IFNAME.into());
        let lab_l = self
            .rt
            .ensure_veth(&up_if, None, &host_if, Some(&host), None, None)?;
        let host_l = hrt.require(host_if.as_str())?;
        // IPv4 only: without IPv6 on either end (the lab end inherits the lab namespace's
        // `disable_ipv6`), no IPv6 packet from the lab reaches the host or beyond it — no
        // link-local (fe80::/10), no metadata (fd00:ec2::254), no host addresses. Absent on
        // kernels without IPv6: ignored.
        let _ = host.set_sysctl(&format!("ipv6/conf/{host_if}/disable_ipv6"), "1");
        hrt.add_addr(&host_l, u.host_addr)?;
        hrt.set_link(
            &host_l,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )?;
        self.rt
            .add_addr(&lab_l, Ipv4Cidr::new(u.lab_addr, u.host_addr.prefix())?)?;
        self.rt.set_link(
            &lab_l,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )?;
        self.rt
            .add_route(None, Some(u.host_addr.addr()), Some(&lab_l))?;
        self.ns.set_sysctl("ipv4/ip_forward", "1")?;

        let l4 = |p: Proto| if p == Proto::Tcp { L4::Tcp } else { L4::Udp };
        // Lab side: VMs leave as the lab's uplink address; published ports go to their VM.
        let mut lab_pre = Vec::new();
        for p in &u.published {
            let mut r: Vec<Expr> = Expr::iifname_eq(&up_if).into();
            r.extend(Expr::dport_eq(l4(p.proto), p.host_port));
            r.extend(Expr::dnat(p.target, p.target_port));
            lab_pre.push(r);
        }
        let mut lab_post: Vec<Expr> = Expr::oifname(&up_if, true).into();
        lab_post.push(Expr::Masq);
        Nft::open(&self.ns)?.replace_table(
            &table,
            &[
                Chain {
                    name: "prerouting",
                    kind: "nat",
                    hook: Hook::Prerouting,
                    priority: -100,
                    rules: lab_pre,
                },
                Chain {
                    name: "postrouting",
                    kind: "nat",
                    hook: Hook::Postrouting,
                    priority: 100,
                    rules: vec![lab_post],
                },
            ],
        )?;
        // Host side: the lab's traffic leaving through other interfaces is masqueraded;
        // published host ports (to any local address) go to the lab's uplink address.
        let mut host_dnat = Vec::new();
        for p in &u.published {
            let mut r: Vec<Expr> = Expr::daddr_local().into();
            r.extend(Expr::dport_eq(l4(p.proto), p.host_port));
            r.extend(Expr::dnat(u.lab_addr, p.host_port));
            host_dnat.push(r);
        }
        // The lab never opens connections to the host itself (its API, sshd, ...): only
        // answers to connections the host made (published ports) come in. Without
        // `outbound`, the host forwards nothing the lab starts either.
        let guard = || {
            let mut established: Vec<Expr> = Expr::iifname_eq(&host_if).into();
            established.extend(Expr::ct_established_or_related());
            established.push(Expr::Verdict(true));
            let mut drop: Vec<Expr> = Expr::iifname_eq(&host_if).into();
            drop.push(Expr::Verdict(false));
            vec![established, drop]
        };
        let mut host_post: Vec<Expr> = Expr::saddr_eq(u.lab_addr).into();
        host_post.extend(Expr::oifname(&host_if, false));
        host_post.push(Expr::Masq);
        Nft::open(&host)?.replace_table(
            &table,
            &[
                Chain {
                    name: "prerouting",
                    kind: "nat",
                    hook: Hook::Prerouting,
                    priority: -100,
                    rules: host_dnat.clone(),
                },
                Chain {
                    name: "output",
                    kind: "nat",
                    hook: Hook::Output,
                    priority: -100,
                    rules: host_dnat,
                },
                Chain {
                    name: "postrouting",
                    kind: "nat",
                    hook: Hook::Postrouting,
                    priority: 100,
                    rules: vec![host_post],
                },
                Chain {
                    name: "input",
                    kind: "filter",
                    hook: Hook::Input,
                    priority: 0,
                    rules: guard(),
                },
                Chain {
                    name: "forward",
                    kind: "filter",
                    hook: Hook::Forward,
                    priority: 0,
                    rules: if u.outbound {
                        egress_rules(&host_if, &u.allow)
                    } else {
                        guard()
                    },
                },
            ],
        )?;
        Ok(())
    }

    /// Starts a pcapng capture of `iface` (any interface in the lab namespace) into `sink`.
    pub fn capture<W: Write + Send + 'static>(
        &self,
        iface: &IfName,
        sink: W,
        opts: CaptureOptions,
    ) -> Result<Capture> {
        capture::start(&self.ns, iface, sink, opts)
    }

    /// Every object of this lab on the host, for inspection and leak checks: links in the lab
    /// namespace, the host uplink, nft tables on both sides.
    pub fn inventory(name: &LabName) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let host = Netns::host()?;
        if let Some(ns) = Netns::open(&name.netns_name())? {
            out.push(format!("netns {}", name.netns_name()));
            let rt = Rtnl::open(&ns)?;
            for l in rt.links()? {
                if l.name != "lo" {
                    out.push(format!("link {} ({})", l.name, l.kind.unwrap_or_default()));
                }
            }
            for q in rt.qdiscs()? {
                // Default qdiscs the kernel attaches have handle 0; ours have explicit ones.
                if q.handle != 0 {
                    out.push(format!("qdisc {} on #{}", q.kind, q.ifindex));
                }
            }
            for t in Nft::open(&ns)?.tables()? {
                out.push(format!("nft lab {t}"));
            }
        }
        if Rtnl::open(&host)?
            .link(name.uplink_host_ifname().as_str())?
            .is_some()
        {
            out.push(format!("host link {}", name.uplink_host_ifname()));
        }
        if Nft::open(&host)?.tables()?.contains(&name.nft_table()) {
            out.push(format!("host nft {}", name.nft_table()));
        }
        Ok(out)
    }
}

impl Drop for LabNet {
    /// Relays are this handle's threads: they stop with it (all at once, not one by one).
    /// Keep the handle alive for as long as the lab runs.
    fn drop(&mut self) {
        self.stop_relays();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_fit() {
        let b = IfName::new("a23456789012345").unwrap();
        assert!(vlan_bridge_name(&b, 4094).as_str().len() <= 15);
        let (a, z) = leg_names(&b, Some(4094));
        assert!(a.as_str().len() <= 15 && z.as_str().len() <= 15, "{a} {z}");
    }

    #[test]
    fn egress_rules_order() {
        let kbu = IfName::new("kbu12345678").unwrap();
        let allow = ["10.0.0.0/8".parse().unwrap()];
        let r = egress_rules(&kbu, &allow);
        // other labs, answers, one allowed range, then every blocked range
        assert_eq!(r.len(), 3 + EGRESS_BLOCKED.len());
        assert_eq!(r[0].last(), Some(&Expr::Verdict(false)));
        assert!(r[1].contains(&Expr::CtState));
        assert_eq!(r[2].last(), Some(&Expr::Verdict(true)));
        assert!(r[2].contains(&Expr::Cmp(true, vec![10, 0, 0, 0])));
        assert!(r[3..]
            .iter()
            .all(|x| x.last() == Some(&Expr::Verdict(false))));
        // Every rule is about this lab's traffic only.
        assert!(r.iter().all(|x| x[..2] == Expr::iifname_eq(&kbu)));
    }

    #[test]
    fn derived_uplink_is_valid() {
        let u = Uplink::derived(&LabName::new("shop").unwrap());
        u.validate().unwrap();
        assert_eq!(u.host_addr.prefix(), 30);
        let o = u32::from(u.lab_addr);
        assert!(Ipv4Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 10).is_ok());
        assert_eq!(o >> 22, u32::from(Ipv4Addr::new(100, 64, 0, 0)) >> 22);
    }
}
