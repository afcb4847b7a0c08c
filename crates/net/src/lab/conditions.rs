//! Link conditions of a port: cut and healed (administratively down/up), impaired (netem, or
//! the userspace relay where the kernel has none) and shaped (token bucket), live.

use super::legs::leg_names;
use super::LabNet;
use crate::error::{NetError, Result};
use crate::impair::{Impairment, Shaping};
use crate::relay;
use crate::rtnl::{Link, LinkChange, PortVlan};
use crate::types::IfName;

impl LabNet {
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
}
