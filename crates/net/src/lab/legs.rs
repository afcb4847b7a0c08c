//! The userspace fallback's devices, for kernels without bridge VLAN filtering or netem:
//! per-VLAN bridges (`kbv…`) and the veth legs (`kl…`) through which a relay stands in for a
//! port on its bridge.

use super::{short_hash, LabNet};
use crate::error::Result;
use crate::relay::Leg;
use crate::rtnl::{BridgeOpts, Link, LinkChange};
use crate::types::IfName;

/// Name of the per-VLAN bridge used for `bridge`'s VLAN `vid` when the kernel has no VLAN
/// filtering: `kbv<6 hex>.<vid>` (≤ 14 bytes).
pub(super) fn vlan_bridge_name(bridge: &IfName, vid: u16) -> IfName {
    IfName(format!("kbv{}.{}", short_hash(bridge.as_str()), vid))
}

/// Names of the relay leg veth pair of a port (`a` joins the bridge, `b` is read by the relay).
pub(super) fn leg_names(port: &IfName, vid: Option<u16>) -> (IfName, IfName) {
    let tag = vid.map(|v| v.to_string()).unwrap_or_else(|| "u".into());
    let base = format!("kl{}.{}", short_hash(port.as_str()), tag);
    (IfName(format!("{base}a")), IfName(format!("{base}b")))
}
impl LabNet {
    /// The bridge that carries `vid` of `br` when the kernel has no VLAN filtering. VLAN 1 is
    /// the untagged default VLAN that plain ports share, i.e. `br` itself (as with the
    /// kernel's default PVID 1).
    pub(super) fn ensure_vlan_bridge(&self, br: &Link, vid: u16) -> Result<Link> {
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
    pub(super) fn ensure_leg(
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
}
