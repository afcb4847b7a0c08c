//! Live link changes: impairments and cut/heal.
//!
//! A link's impairment applies to both directions: each endpoint's tap gets it on the traffic
//! leaving towards its VM (netem semantics), so `delay 100ms` adds 100 ms each way (200 ms to a
//! round trip). Where the host kernel has netem, the qdiscs are set right here and stay in the
//! kernel; where it does not (these machines), the lab's net daemon ([`super::netd`]) holds
//! kobako-net's userspace relays and is told to re-read the store.

use kobako_state::Db;

use super::impairments::{apply_impairments, desired, to_net_impairment};
use super::{lab_net, net_err, tap_name, LabError, LabRecord, Result};
use crate::spec::{Impairment, Lab};

/// Makes the host match the stored link states and impairments. Blocking.
pub(crate) fn apply_links(db: &Db, lab: &Lab) -> Result<()> {
    let name = lab.name.as_str();
    let e = net_err(name);
    let net = lab_net(name)?;
    let want = desired(db, lab)?;
    for (link, _, up) in &want {
        let Some(l) = lab.link(link) else { continue };
        for ep in &l.endpoints {
            if let Some(vm) = lab.vm(&ep.vm) {
                net.set_link_up(&tap_name(vm, ep.iface.as_str()), *up)
                    .map_err(&e)?;
            }
        }
    }
    let any_impaired = want.iter().any(|(_, i, _)| i.is_some());
    if net.features().netem {
        apply_impairments(&net, db, lab)
    } else if any_impaired || super::netd::running(name) {
        // The relays must outlive this process: the lab's net daemon holds them.
        drop(net);
        super::netd::ensure(name)?;
        super::netd::request(name, "reload")
    } else {
        Ok(())
    }
}

fn load(lab: &str, link: &str) -> Result<(Db, LabRecord)> {
    let db = super::db()?;
    let rec = LabRecord::load_from(&db, lab)?.ok_or_else(|| LabError::NotFound(lab.into()))?;
    if rec.lab.link(link).is_none() {
        let names: Vec<&str> = rec.lab.links.iter().map(|l| l.name.as_str()).collect();
        return Err(LabError::NoSuch(format!(
            "lab '{lab}' has no link '{link}'{} (links: {})",
            crate::spec::error::suggest(link, names.iter().copied()),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    Ok((db, rec))
}

/// Sets (`Some`) or clears (`None`) the impairment of a link of a running lab, live.
pub fn impair(lab: &str, link: &str, imp: Option<Impairment>) -> Result<()> {
    let (db, rec) = load(lab, link)?;
    let imp = imp.filter(|i| !i.is_none());
    if let Some(i) = &imp {
        // Validate before storing anything.
        to_net_impairment(i).map_err(|source| LabError::Net {
            lab: lab.into(),
            source,
        })?;
    }
    let before = db.links(lab)?.into_iter().find(|r| r.name == link);
    let up = before.as_ref().map(|r| r.up).unwrap_or(true);
    let value = imp.map(|i| serde_json::to_value(i).unwrap_or_default());
    db.set_link(lab, link, up, value.as_ref())?;
    if let Err(e) = apply_links(&db, &rec.lab) {
        // Put the stored state back: the store says what is applied.
        if let Some(b) = before {
            let _ = db.set_link(lab, link, b.up, b.impairment.as_ref());
        }
        return Err(e);
    }
    Ok(())
}

/// Cuts (`up == false`) or heals a link of a running lab: both endpoints' taps go down/up, so
/// neither VM's frames cross it. The store keeps the state; `up` re-applies the file's.
pub fn set_link_state(lab: &str, link: &str, up: bool) -> Result<()> {
    let (db, rec) = load(lab, link)?;
    let imp = db
        .links(lab)?
        .into_iter()
        .find(|r| r.name == link)
        .and_then(|r| r.impairment);
    db.set_link(lab, link, up, imp.as_ref())?;
    let e = net_err(lab);
    let net = lab_net(lab)?;
    let l = rec
        .lab
        .link(link)
        .ok_or_else(|| LabError::NoSuch(format!("lab '{lab}' has no link '{link}'")))?;
    for ep in &l.endpoints {
        if let Some(vm) = rec.lab.vm(&ep.vm) {
            net.set_link_up(&tap_name(vm, ep.iface.as_str()), up)
                .map_err(&e)?;
        }
    }
    Ok(())
}

/// Takes one interface of a VM off its network (`up == false`: the host side of its tap goes
/// down, so no frame crosses it either way) or puts it back. Not stored: a scenario's
/// `partition` undoes it; `kobako up` brings every tap back up.
pub fn set_port_state(lab: &str, vm: &str, iface: &str, up: bool) -> Result<()> {
    let db = super::db()?;
    let rec = LabRecord::load_from(&db, lab)?.ok_or_else(|| LabError::NotFound(lab.into()))?;
    let v = rec.lab.find_vm(vm)?;
    let e = net_err(lab);
    let net = lab_net(lab)?;
    net.set_link_up(&tap_name(v, iface), up).map_err(&e)
}

/// Starts a pcapng capture of a link, on the tap of endpoint `end` (0 or 1): both directions
/// of the link's traffic pass there. Returns the capture and a description of where it runs.
pub fn capture<W: std::io::Write + Send + 'static>(
    lab: &str,
    link: &str,
    end: usize,
    sink: W,
    opts: kobako_net::capture::CaptureOptions,
) -> Result<(kobako_net::capture::Capture, String)> {
    let (_db, rec) = load(lab, link)?;
    let l = rec
        .lab
        .link(link)
        .ok_or_else(|| LabError::NoSuch(format!("lab '{lab}' has no link '{link}'")))?;
    let ep = l.endpoints.get(end).ok_or_else(|| {
        LabError::NoSuch(format!("a link has endpoints 1 and 2, not {}", end + 1))
    })?;
    let vm = rec
        .lab
        .vm(&ep.vm)
        .ok_or_else(|| LabError::NoSuch(format!("no VM {}", ep.vm)))?;
    let tap = tap_name(vm, ep.iface.as_str());
    let e = net_err(lab);
    let net = lab_net(lab)?;
    let c = net.capture(&tap, sink, opts).map_err(&e)?;
    Ok((c, format!("{ep} (host port {tap})")))
}

/// Traffic counters of one VM interface, read from its host port (the tap) in the lab's
/// namespace. From the VM's side: `sent` is what the tap received, `received` what it sent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IfaceCounters {
    /// `node.vm`.
    pub vm: String,
    /// The guest's interface name.
    pub iface: String,
    /// What it is plugged into: `link:NAME`, `network:NAME` or `node-network`.
    pub attach: String,
    /// The host port.
    pub tap: String,
    pub sent_bytes: u64,
    pub sent_packets: u64,
    pub received_bytes: u64,
    pub received_packets: u64,
    /// Frames dropped on the host port (both directions: an impairment's loss shows here when
    /// the kernel drops; userspace relays count their own).
    pub dropped: u64,
}

/// The counters of every VM interface of running lab `lab` whose host port exists (a stopped
/// VM's taps are gone: it is left out), in the lab's order. One netlink dump.
pub fn counters(lab: &str) -> Result<Vec<IfaceCounters>> {
    let rec = LabRecord::load(lab).ok_or_else(|| LabError::NotFound(lab.into()))?;
    let e = net_err(lab);
    let net = lab_net(lab)?;
    let stats: std::collections::HashMap<String, kobako_net::LinkStats> =
        net.rtnl().link_stats().map_err(&e)?.into_iter().collect();
    let mut out = Vec::new();
    for vm in rec.lab.vms() {
        for i in &vm.interfaces {
            let tap = tap_name(vm, i.name.as_str()).as_str().to_string();
            let Some(st) = stats.get(&tap) else { continue };
            out.push(IfaceCounters {
                vm: vm.id.to_string(),
                iface: i.name.as_str().to_string(),
                attach: match &i.attach {
                    crate::spec::Attachment::Link(l) => format!("link:{}", l.as_str()),
                    crate::spec::Attachment::Network(n) => format!("network:{}", n.as_str()),
                    crate::spec::Attachment::NodeNetwork => "node-network".into(),
                },
                tap,
                sent_bytes: st.rx_bytes,
                sent_packets: st.rx_packets,
                received_bytes: st.tx_bytes,
                received_packets: st.tx_packets,
                dropped: st.rx_dropped + st.tx_dropped,
            });
        }
    }
    Ok(out)
}
