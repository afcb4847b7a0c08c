//! The host-network boundary as a trait ([`LabNetwork`]), implemented by [`LabNet`] and by
//! [`RecordingNetwork`], an in-memory fake that records every call and enforces the same
//! preconditions (unknown interfaces, bridges that must exist), so the lab controller's
//! planning and reconcile logic can be unit-tested without root or namespaces.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::error::{NetError, Result};
use crate::impair::{Impairment, Shaping};
use crate::lab::{LabNet, PortSpec, Uplink};
use crate::rtnl::PortVlan;
use crate::types::{IfName, Ipv4Cidr};

/// What the lab controller needs from one lab's host network.
pub trait LabNetwork: Send + Sync {
    /// See [`LabNet::ensure_bridge`].
    fn ensure_bridge(
        &self,
        name: &IfName,
        mtu: Option<u32>,
        gateway: Option<Ipv4Cidr>,
        vlan_aware: bool,
    ) -> Result<()>;
    /// See [`LabNet::ensure_port`].
    fn ensure_port(&self, spec: &PortSpec) -> Result<()>;
    /// See [`LabNet::delete_port`].
    fn delete_port(&self, name: &IfName) -> Result<()>;
    /// See [`LabNet::set_impairment`].
    fn set_impairment(&self, port: &IfName, imp: &Impairment) -> Result<()>;
    /// See [`LabNet::clear_impairment`].
    fn clear_impairment(&self, port: &IfName) -> Result<()>;
    /// See [`LabNet::set_shaping`].
    fn set_shaping(&self, port: &IfName, shaping: Option<Shaping>) -> Result<()>;
    /// See [`LabNet::set_link_up`].
    fn set_link_up(&self, port: &IfName, up: bool) -> Result<()>;
    /// See [`LabNet::set_uplink`].
    fn set_uplink(&self, uplink: Option<&Uplink>) -> Result<()>;
}

impl LabNetwork for LabNet {
    fn ensure_bridge(
        &self,
        name: &IfName,
        mtu: Option<u32>,
        gateway: Option<Ipv4Cidr>,
        vlan_aware: bool,
    ) -> Result<()> {
        LabNet::ensure_bridge(self, name, mtu, gateway, vlan_aware).map(|_| ())
    }
    fn ensure_port(&self, spec: &PortSpec) -> Result<()> {
        LabNet::ensure_port(self, spec).map(|_| ())
    }
    fn delete_port(&self, name: &IfName) -> Result<()> {
        LabNet::delete_port(self, name)
    }
    fn set_impairment(&self, port: &IfName, imp: &Impairment) -> Result<()> {
        LabNet::set_impairment(self, port, imp)
    }
    fn clear_impairment(&self, port: &IfName) -> Result<()> {
        LabNet::clear_impairment(self, port)
    }
    fn set_shaping(&self, port: &IfName, shaping: Option<Shaping>) -> Result<()> {
        LabNet::set_shaping(self, port, shaping)
    }
    fn set_link_up(&self, port: &IfName, up: bool) -> Result<()> {
        LabNet::set_link_up(self, port, up)
    }
    fn set_uplink(&self, uplink: Option<&Uplink>) -> Result<()> {
        LabNet::set_uplink(self, uplink)
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub enum NetCall {
    /// `ensure_bridge`
    EnsureBridge {
        /// Bridge name.
        name: IfName,
        /// MTU.
        mtu: Option<u32>,
        /// Gateway address.
        gateway: Option<Ipv4Cidr>,
        /// VLAN aware.
        vlan_aware: bool,
    },
    /// `ensure_port`
    EnsurePort {
        /// Port name.
        name: IfName,
        /// Bridge.
        bridge: Option<IfName>,
        /// VLANs.
        vlan: PortVlan,
    },
    /// `delete_port`
    DeletePort(IfName),
    /// `set_impairment`
    SetImpairment(IfName, Impairment),
    /// `clear_impairment`
    ClearImpairment(IfName),
    /// `set_shaping`
    SetShaping(IfName, Option<Shaping>),
    /// `set_link_up`
    SetLinkUp(IfName, bool),
    /// `set_uplink`
    SetUplink(Option<Uplink>),
}

/// A fake [`LabNetwork`] that records calls and tracks which bridges/ports exist.
#[derive(Debug, Default)]
pub struct RecordingNetwork {
    calls: Mutex<Vec<NetCall>>,
    links: Mutex<HashSet<String>>,
}

impl RecordingNetwork {
    /// An empty fake.
    pub fn new() -> RecordingNetwork {
        RecordingNetwork::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<NetCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, c: NetCall) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    fn has(&self, n: &IfName) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(n.as_str())
    }

    fn require(&self, n: &IfName) -> Result<()> {
        if self.has(n) {
            Ok(())
        } else {
            Err(NetError::UnknownInterface {
                ns: "fake".into(),
                name: n.to_string(),
            })
        }
    }

    fn add(&self, n: &IfName) {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n.to_string());
    }
}

impl LabNetwork for RecordingNetwork {
    fn ensure_bridge(
        &self,
        name: &IfName,
        mtu: Option<u32>,
        gateway: Option<Ipv4Cidr>,
        vlan_aware: bool,
    ) -> Result<()> {
        if let Some(m) = mtu {
            crate::types::check_mtu(m)?;
        }
        self.add(name);
        self.record(NetCall::EnsureBridge {
            name: name.clone(),
            mtu,
            gateway,
            vlan_aware,
        });
        Ok(())
    }
    fn ensure_port(&self, spec: &PortSpec) -> Result<()> {
        if let Some(m) = spec.mtu {
            crate::types::check_mtu(m)?;
        }
        if let Some(b) = &spec.bridge {
            self.require(b)?;
        }
        self.add(&spec.name);
        self.record(NetCall::EnsurePort {
            name: spec.name.clone(),
            bridge: spec.bridge.clone(),
            vlan: spec.vlan.clone(),
        });
        Ok(())
    }
    fn delete_port(&self, name: &IfName) -> Result<()> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name.as_str());
        self.record(NetCall::DeletePort(name.clone()));
        Ok(())
    }
    fn set_impairment(&self, port: &IfName, imp: &Impairment) -> Result<()> {
        self.require(port)?;
        self.record(NetCall::SetImpairment(port.clone(), imp.clone()));
        Ok(())
    }
    fn clear_impairment(&self, port: &IfName) -> Result<()> {
        self.require(port)?;
        self.record(NetCall::ClearImpairment(port.clone()));
        Ok(())
    }
    fn set_shaping(&self, port: &IfName, shaping: Option<Shaping>) -> Result<()> {
        self.require(port)?;
        self.record(NetCall::SetShaping(port.clone(), shaping));
        Ok(())
    }
    fn set_link_up(&self, port: &IfName, up: bool) -> Result<()> {
        self.require(port)?;
        self.record(NetCall::SetLinkUp(port.clone(), up));
        Ok(())
    }
    fn set_uplink(&self, uplink: Option<&Uplink>) -> Result<()> {
        self.record(NetCall::SetUplink(uplink.cloned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_records_and_checks() {
        let f = RecordingNetwork::new();
        let br = IfName::new("lan").unwrap();
        let p = IfName::new("vm-eth0").unwrap();
        assert!(f.set_link_up(&p, false).is_err());
        assert!(f
            .ensure_port(&PortSpec::tap(p.clone(), br.clone()))
            .is_err());
        f.ensure_bridge(&br, None, None, false).unwrap();
        f.ensure_port(&PortSpec::tap(p.clone(), br.clone()))
            .unwrap();
        f.set_link_up(&p, false).unwrap();
        let net: &dyn LabNetwork = &f;
        net.clear_impairment(&p).unwrap();
        assert_eq!(f.calls().len(), 4);
        assert_eq!(f.calls()[2], NetCall::SetLinkUp(p.clone(), false));
    }
}
