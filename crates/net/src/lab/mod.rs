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
//!
//! This module holds the lab's namespace and its lifecycle (create, open, list, delete,
//! inventory), the kernel feature probe and the per-port state; [`ports`] makes bridges, taps
//! and veths, [`legs`] the relay legs and per-VLAN bridges of the userspace fallback,
//! [`conditions`] cuts, impairs and shapes ports, and [`uplink`] the uplink with its nft rules.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::capture::{self, Capture, CaptureOptions};
use crate::error::Result;
use crate::impair::{Impairment, Shaping};
use crate::netns::{Netns, NsThread};
use crate::nft::Nft;
use crate::relay::Relay;
use crate::rtnl::{BridgeOpts, LinkChange, PortVlan, Rtnl};
use crate::types::{IfName, LabName};

pub mod conditions;
pub mod legs;
pub mod ports;
pub mod uplink;

pub use ports::{PortKind, PortSpec};
pub use uplink::{Proto, PublishedPort, Uplink, EGRESS_BLOCKED};

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
