//! Ports of a lab network: bridges for networks and point-to-point links, taps for VMs and
//! veths to endpoint namespaces, attached to their bridge and VLANs (kernel VLAN filtering, or
//! the userspace fallback's per-VLAN bridges and trunk relays), and their removal.

use std::os::fd::OwnedFd;

use super::legs::leg_names;
use super::{short_hash, LabNet};
use crate::error::{NetError, Result};
use crate::netns::Netns;
use crate::relay;
use crate::rtnl::{BridgeOpts, Link, LinkChange, PortVlan, Rtnl};
use crate::tap::{self, TapFlags};
use crate::types::{check_mtu, IfName, Ipv4Cidr, MacAddr};

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

impl LabNet {
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
}
