//! Link impairments from the store to the host: the kobako-net form of a lab file impairment,
//! every link's live impairment (stored state first, the lab file second), and applying them to
//! both endpoint taps of each link. Used by [`super::links`] (on a netem kernel) and by the net
//! daemon ([`super::netd`], which holds the userspace relays), so neither depends on the other
//! for it.

use kobako_net::LabNet;
use kobako_state::Db;

use super::{tap_name, LabError, Result};
use crate::spec::{Impairment, Lab, LinkState};

/// The kobako-net form of a lab file impairment (validated by kobako-net's builder).
pub fn to_net_impairment(i: &Impairment) -> Result<kobako_net::Impairment, kobako_net::NetError> {
    let mut b = kobako_net::Impairment::builder();
    if let Some(d) = i.delay {
        b = b.delay(d.duration());
    }
    if let Some(j) = i.jitter {
        b = b.jitter(j.duration());
    }
    if let Some(c) = i.loss {
        b = b
            .loss(c.percent.as_f64())
            .loss_correlation(c.correlation.as_f64());
    }
    if let Some(c) = i.corrupt {
        b = b
            .corrupt(c.percent.as_f64())
            .corrupt_correlation(c.correlation.as_f64());
    }
    if let Some(c) = i.duplicate {
        b = b
            .duplicate(c.percent.as_f64())
            .duplicate_correlation(c.correlation.as_f64());
    }
    if let Some(c) = i.reorder {
        b = b
            .reorder(c.percent.as_f64())
            .reorder_correlation(c.correlation.as_f64());
    }
    if let Some(r) = i.rate {
        b = b.rate_bps(r.0);
    }
    b.build()
}

/// The live impairment of every link of `lab` (store first, lab file second).
pub(super) fn desired(db: &Db, lab: &Lab) -> Result<Vec<(String, Option<Impairment>, bool)>> {
    let rows = db.links(lab.name.as_str())?;
    let mut out = Vec::new();
    for l in &lab.links {
        let row = rows.iter().find(|r| r.name == l.name.as_str());
        let (imp, up) = match row {
            Some(r) => {
                let imp = match &r.impairment {
                    Some(v) => Some(serde_json::from_value::<Impairment>(v.clone()).map_err(
                        |source| LabError::StoredImpairment {
                            link: l.name.as_str().into(),
                            source,
                        },
                    )?),
                    None => None,
                };
                (imp, r.up)
            }
            None => (
                (!l.impair.is_none()).then_some(l.impair),
                l.state == LinkState::Up,
            ),
        };
        out.push((l.name.as_str().to_string(), imp, up));
    }
    Ok(out)
}

/// Applies every link's stored impairment to `net` (both endpoint taps). Used by the
/// controller on a netem kernel and by the net daemon.
pub(super) fn apply_impairments(net: &LabNet, db: &Db, lab: &Lab) -> Result<()> {
    let e = |source| LabError::Net {
        lab: lab.name.as_str().into(),
        source,
    };
    for (link, imp, _) in desired(db, lab)? {
        let Some(l) = lab.link(&link) else { continue };
        let net_imp = match &imp {
            Some(i) => Some(to_net_impairment(i).map_err(e)?),
            None => None,
        };
        for ep in &l.endpoints {
            let Some(vm) = lab.vm(&ep.vm) else { continue };
            let tap = tap_name(vm, ep.iface.as_str());
            match &net_imp {
                Some(i) => net.set_impairment(&tap, i).map_err(e)?,
                None => net.clear_impairment(&tap).map_err(e)?,
            }
        }
    }
    Ok(())
}
