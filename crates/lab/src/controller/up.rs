//! `up` (plan + apply), `down`, `restart`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_net::{
    HostSysctl, HostSysctls, LabName as NetLabName, LabNet, PortSpec, PortVlan, VlanId,
};
use kobako_runtime::{Runtime, VmDir};
use kobako_state::{Db, LabLock, LabState, VmState};
use serde::Serialize;

pub use super::report::{UpReport, VmReport};
use super::{
    bridge_for, lab_run_dir, links, netpolicy, start, tap_name, vm_name, LabError, LabRecord,
    Progress,
};
use super::{net_err, BootSettings, Result};
use crate::spec::{Attachment, Lab, Vm};

/// How long `up`/`down` wait for another process changing the same lab.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What `up` will do (the diff between the lab file and what runs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub create: Vec<String>,
    pub keep: Vec<String>,
    /// VMs to recreate, with what changed (image, kernel, vCPUs, memory, NICs).
    pub replace: Vec<(String, String)>,
    /// Running VMs of the lab the file no longer declares.
    pub remove: Vec<String>,
}

impl Plan {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} to create, {} running (kept), {} to replace, {} to remove",
            self.create.len(),
            self.keep.len(),
            self.replace.len(),
            self.remove.len()
        );
        for (n, why) in &self.replace {
            s.push_str(&format!("\n  replace {n}: {why}"));
        }
        for n in &self.remove {
            s.push_str(&format!("\n  remove {n}: no longer in the lab file"));
        }
        s
    }
}

/// What needs a new VM process when it changes (everything else is applied live by the agent).
fn boot_diff(old: &Vm, new: &Vm) -> Option<String> {
    let mut why = Vec::new();
    if old.image != new.image {
        why.push(format!("image {} → {}", old.image, new.image));
    }
    if old.kernel != new.kernel {
        why.push(format!("kernel {} → {}", old.kernel, new.kernel));
    }
    if old.vcpus != new.vcpus {
        why.push(format!("vcpus {} → {}", old.vcpus, new.vcpus));
    }
    if old.memory != new.memory {
        why.push(format!("memory {}M → {}M", old.memory.0, new.memory.0));
    }
    let nics = |v: &Vm| -> Vec<(String, String)> {
        v.interfaces
            .iter()
            .map(|i| (i.name.as_str().to_string(), i.mac.to_string()))
            .collect()
    };
    if nics(old) != nics(new) {
        why.push("interfaces".into());
    }
    // A share is a device (virtio-9p): a different set needs a new VM process.
    let shares = |v: &Vm| -> Vec<(std::path::PathBuf, String)> {
        v.shares
            .iter()
            .map(|s| (s.src.clone(), s.dst.clone()))
            .collect()
    };
    if shares(old) != shares(new) {
        why.push("shares".into());
    }
    (!why.is_empty()).then(|| why.join(", "))
}

fn running(name: &str) -> bool {
    // A warm clone whose `up` died before it got its identity is replaced, not kept.
    VmDir::for_name(name).vm_pid().is_some() && !super::warm::pending(name)
}

/// The diff between `lab` and what runs (and what was last applied, from `db`).
pub fn plan(db: &Db, lab: &Lab) -> Result<Plan> {
    let old = LabRecord::load_from(db, lab.name.as_str())?;
    let mut p = Plan::default();
    let mut declared = BTreeSet::new();
    for vm in lab.vms() {
        let name = vm_name(lab, vm);
        declared.insert(name.clone());
        if !running(&name) {
            p.create.push(name);
            continue;
        }
        let before = old.as_ref().and_then(|o| o.lab.vm(&vm.id));
        match before.and_then(|b| boot_diff(b, vm)) {
            Some(why) => p.replace.push((name, why)),
            None => p.keep.push(name),
        }
    }
    let prefix = format!("{}.", lab.name.as_str());
    for d in kobako_runtime::vmdir::list() {
        if d.name.starts_with(&prefix) && !declared.contains(&d.name) {
            // Only names shaped like this lab's VMs (lab.node.vm): `lab.x` of another lab
            // named `lab.x...` cannot exist (lab names have no dots).
            if d.name[prefix.len()..].split('.').count() == 2 {
                p.remove.push(d.name);
            }
        }
    }
    Ok(p)
}

/// Build (or complete) the lab's host network. Blocking: call from `spawn_blocking`.
pub(crate) fn ensure_network(lab: &Lab) -> Result<String> {
    let e = net_err(lab.name.as_str());
    let name = NetLabName::new(lab.name.as_str()).map_err(&e)?;
    // Host ports and egress: the lab's owner and its policy decide (see `netpolicy`). The
    // ports are checked before anything is made, under a host-wide lock held until they are
    // published, so two `up`s cannot both take one port.
    let db = super::db()?;
    let owner = db.lab(lab.name.as_str())?.and_then(|r| r.owner);
    let (who, policy) = netpolicy::effective(&db, lab.name.as_str(), owner.as_deref())?;
    let _ports_lock = if lab.publish.is_empty() {
        None
    } else {
        let l = netpolicy::lock_host_ports()?;
        let denied = |source| LabError::Publish {
            lab: lab.name.as_str().to_string(),
            source,
        };
        netpolicy::check_allowed(
            &lab.publish,
            who,
            &policy,
            &netpolicy::host_config().server_ports,
        )
        .map_err(denied)?;
        let asker = match (who, owner.as_deref()) {
            (netpolicy::Principal::Member, Some(o)) => netpolicy::Asker::Member(o),
            _ => netpolicy::Asker::Admin,
        };
        netpolicy::check_free(&db, lab, who, asker)?.map_err(denied)?;
        Some(l)
    };
    drop(db);
    let net = LabNet::ensure(&name).map_err(&e)?;
    let netns = net.netns().name().to_string();
    // Networks whose gateway is the host side: the bridge gets the gateway address.
    for n in &lab.networks {
        if let (true, Some(std::net::IpAddr::V4(gw)), Some(subnet)) =
            (n.host_gateway, n.gateway, n.subnet)
        {
            let g = kobako_net::Ipv4Cidr::new(gw, subnet.prefix).map_err(&e)?;
            net.ensure_bridge(
                &kobako_net::IfName::for_key("bw", n.name.as_str()),
                Some(n.mtu),
                Some(g),
                n.vlan.is_some(),
            )
            .map_err(&e)?;
        }
    }
    for vm in lab.vms() {
        for iface in &vm.interfaces {
            let bridge = bridge_for(vm, &iface.attach);
            let vlan = match &iface.attach {
                Attachment::Network(n) => lab.network(n.as_str()).and_then(|x| x.vlan),
                _ => None,
            };
            net.ensure_bridge(&bridge, Some(iface.mtu), None, vlan.is_some())
                .map_err(&e)?;
            let mut port = PortSpec::tap(tap_name(vm, iface.name.as_str()), bridge);
            port.mtu = Some(iface.mtu);
            if let Some(v) = vlan {
                port.vlan = PortVlan::Access(VlanId::new(u32::from(v)).map_err(&e)?);
            }
            net.ensure_port(&port).map_err(&e)?;
        }
    }
    // Uplink (NAT through the host) and published ports: only when the lab asks.
    if lab.uplink.is_empty() && lab.publish.is_empty() {
        net.set_uplink(None).map_err(&e)?;
    } else {
        let mut up = kobako_net::Uplink::derived(&name);
        up.outbound = !lab.uplink.is_empty();
        up.allow = policy.uplink_allow.iter().map(|a| a.cidr()).collect();
        for p in &lab.publish {
            let std::net::IpAddr::V4(target) = p.target else {
                return Err(LabError::Unsupported(format!(
                    "published port {}: {} is not IPv4 (publishing goes to IPv4 addresses)",
                    p.host_port, p.target
                )));
            };
            up.published.push(kobako_net::PublishedPort {
                proto: match p.proto {
                    crate::spec::Proto::Tcp => kobako_net::Proto::Tcp,
                    crate::spec::Proto::Udp => kobako_net::Proto::Udp,
                },
                host_port: p.host_port,
                target,
                target_port: p.port,
            });
        }
        net.set_uplink(Some(&up)).map_err(&e)?;
    }
    // Traffic leaving the host needs the host's IPv4 forwarding: held while a lab with an
    // uplink is up, restored when the last one goes (the original value is recorded first).
    let sysctls = HostSysctls::new(kobako_net::sysctl::HOST_DIR);
    if lab.uplink.is_empty() {
        sysctls.release(&name).map_err(&e)?;
    } else {
        sysctls
            .acquire(&name, HostSysctl::Ipv4Forward, "1")
            .map_err(&e)?;
    }
    Ok(netns)
}

fn addresses(vm: &Vm) -> Vec<String> {
    vm.interfaces
        .iter()
        .flat_map(|x| {
            x.addresses
                .iter()
                .map(move |a| format!("{}:{a}", x.name.as_str()))
        })
        .collect()
}

pub(crate) async fn stop_all(rt: &Arc<dyn Runtime>, names: &[String]) -> Result<usize> {
    let stops: Vec<_> = names
        .iter()
        .map(|n| {
            let rt = rt.clone();
            let d = VmDir::for_name(n);
            tokio::spawn(async move {
                if d.exists() {
                    rt.stop(&d, Duration::from_secs(5)).await.map(|_| 1)
                } else {
                    Ok(0)
                }
            })
        })
        .collect();
    let mut n = 0;
    for s in stops {
        n += s.await??;
    }
    Ok(n)
}

/// Bring `lab` up (or converge it to the file). `boot` says how its VMs boot;
/// `owner` is recorded for a new lab.
pub async fn up(
    rt: Arc<dyn Runtime>,
    lab: &Lab,
    file: Option<String>,
    owner: Option<String>,
    boot: &BootSettings,
    progress: &dyn Progress,
) -> Result<UpReport> {
    up_some(rt, lab, file, owner, boot, progress, None).await
}

/// [`up`], booting only the VMs in `only` (runtime names) among those that do not run: the
/// others stay stopped (a VM stopped on purpose is not started by restarting its neighbour).
pub(crate) async fn up_some(
    rt: Arc<dyn Runtime>,
    lab: &Lab,
    file: Option<String>,
    owner: Option<String>,
    settings: &BootSettings,
    progress: &dyn Progress,
    only: Option<&[String]>,
) -> Result<UpReport> {
    let t0 = Instant::now();
    let name = lab.name.as_str().to_string();
    let _lock = LabLock::acquire(&name, LOCK_WAIT)?;
    let db = Arc::new(super::db()?);
    let plan = plan(&db, lab)?;
    progress.event(&format!("plan: {}", plan.summary()));

    // Record first, so a crash from here on is cleaned up by `down` and converged by `up`.
    let cgroups = record(&db, lab, file.as_deref(), owner.as_deref())?;

    progress.event("network: namespace, bridges, taps, uplink");
    let netns = network(&db, lab).await?;

    // Replaced and removed VMs go first (a replaced VM keeps its name and taps).
    let mut gone: Vec<String> = plan.remove.clone();
    gone.extend(plan.replace.iter().map(|(n, _)| n.clone()));
    if !gone.is_empty() {
        progress.event(&format!("stopping {} VM(s)", gone.len()));
        stop_all(&rt, &gone).await?;
    }

    let vms: Vec<&Vm> = lab.vms().collect();
    let mut reports = initial_reports(lab, &vms, &plan, only);

    // Boot what is missing, all at once (launches bounded; boots share the CPUs), and
    // configure each VM as soon as its agent is ready.
    let boot = Arc::new(start::Boot {
        rt: rt.clone(),
        db: db.clone(),
        sem: tokio::sync::Semaphore::new(kobako_runtime::group::default_parallelism()),
        pool: settings.warm.then(super::warm::Pool::default),
        t0: Instant::now(),
    });
    let mut tasks = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let vname = reports[i].name.clone();
        let vm: Vm = (*vm).clone();
        let cfg = match reports[i].action.as_str() {
            "left stopped" => {
                reports[i].state = "stopped".into();
                continue;
            }
            "kept" => None,
            _ => {
                let dir = VmDir::for_name(&vname);
                if dir.exists() {
                    // Half-started by a crashed `up`: start it again from scratch.
                    let _ = rt.kill(&dir).await;
                }
                match start::vm_config(settings, &vm, &vname, &netns, &cgroups) {
                    Ok(cfg) => Some(cfg),
                    Err(e) => {
                        start::finish_vm(&db, progress, &mut reports[i], Err(e))?;
                        continue;
                    }
                }
            }
        };
        let boot = boot.clone();
        tasks.push((
            i,
            tokio::spawn(async move { boot.start(vm, vname, cfg).await }),
        ));
    }
    for (i, t) in tasks {
        let r = t.await.unwrap_or_else(|e| Err(e.into()));
        start::finish_vm(&db, progress, &mut reports[i], r)?;
    }
    let (state, reason) = lab_outcome(&reports);
    db.set_lab_state(&name, state, reason.as_deref())?;
    Ok(UpReport {
        lab: name,
        state,
        vms: reports,
        removed: plan.remove,
        total_ms: t0.elapsed().as_millis() as u64,
    })
}

/// The lab's host network (namespace, bridges, taps, uplink) and its links' states; the
/// namespace's name. A network that cannot be made fails the lab with the reason.
async fn network(db: &Arc<Db>, lab: &Lab) -> Result<String> {
    let lab2 = lab.clone();
    let netns = match tokio::task::spawn_blocking(move || ensure_network(&lab2)).await {
        Ok(Ok(ns)) => ns,
        Ok(Err(e)) => {
            db.set_lab_state(lab.name.as_str(), LabState::Failed, Some(&e.to_string()))?;
            return Err(e);
        }
        Err(e) => return Err(e.into()),
    };
    let lab2 = lab.clone();
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || links::apply_links(&db2, &lab2)).await??;
    Ok(netns)
}

/// Stores the lab (spec, file, owner), its VM rows (new ones `pending`) and link states, and
/// marks it `starting`. The cgroups above each VM's: its owner's (with their quotas) and the
/// lab's.
fn record(
    db: &Db,
    lab: &Lab,
    file: Option<&str>,
    owner: Option<&str>,
) -> Result<Vec<kobako_runtime::config::CgroupLevel>> {
    let name = lab.name.as_str();
    let spec = serde_json::to_value(lab)?;
    db.put_lab(name, file, &spec, owner)?;
    let stored_owner = db.lab(name)?.and_then(|r| r.owner);
    let cgroups = super::cgroups::levels(name, stored_owner.as_deref());
    let rows: Vec<(String, String, String)> = lab
        .vms()
        .map(|v| {
            (
                vm_name(lab, v),
                v.id.node.as_str().to_string(),
                v.id.vm.as_str().to_string(),
            )
        })
        .collect();
    db.sync_vms(name, &rows)?;
    for l in &lab.links {
        let imp = (!l.impair.is_none()).then(|| serde_json::to_value(l.impair).unwrap_or_default());
        db.set_link(
            name,
            l.name.as_str(),
            l.state == crate::spec::LinkState::Up,
            imp.as_ref(),
        )?;
    }
    db.set_lab_state(name, LabState::Starting, None)?;
    Ok(cgroups)
}

/// One `pending` report per VM with what `up` is about to do to it.
fn initial_reports(lab: &Lab, vms: &[&Vm], plan: &Plan, only: Option<&[String]>) -> Vec<VmReport> {
    vms.iter()
        .map(|vm| {
            let n = vm_name(lab, vm);
            let action = if plan.keep.contains(&n) {
                "kept"
            } else if plan.replace.iter().any(|(r, _)| r == &n) {
                "replaced"
            } else if only.is_some_and(|o| !o.contains(&n)) {
                "left stopped"
            } else {
                "created"
            };
            VmReport {
                name: n,
                state: "pending".into(),
                action: action.into(),
                boot_ms: None,
                addresses: addresses(vm),
                error: None,
                warm: false,
            }
        })
        .collect()
}

/// The lab's state after `up`: ready, or degraded saying how many VMs failed or stayed stopped.
fn lab_outcome(reports: &[VmReport]) -> (LabState, Option<String>) {
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    let stopped = reports.iter().filter(|r| r.state == "stopped").count();
    match (failed, stopped) {
        (0, 0) => (LabState::Ready, None),
        (0, s) => (
            LabState::Degraded,
            Some(format!("{s} of {} VMs stopped", reports.len())),
        ),
        (n, _) => (
            LabState::Degraded,
            Some(format!("{n} of {} VMs failed", reports.len())),
        ),
    }
}

/// Take a lab down: the net daemon, every VM, the host network, then the stored state.
/// Returns how many VMs were stopped. Idempotent until the state is gone (then `NotFound`).
pub async fn down(rt: Arc<dyn Runtime>, name: &str) -> Result<usize> {
    let _lock = LabLock::acquire(name, LOCK_WAIT)?;
    let db = super::db()?;
    let rec = LabRecord::load_from(&db, name).ok().flatten();
    let prefix = format!("{name}.");
    let mut names: Vec<String> = rec.as_ref().map(|r| r.vms.clone()).unwrap_or_default();
    // Also VMs of the lab the store does not know (a crash before it was written).
    for d in kobako_runtime::vmdir::list() {
        if d.name.starts_with(&prefix)
            && d.name[prefix.len()..].split('.').count() == 2
            && !names.contains(&d.name)
        {
            names.push(d.name);
        }
    }
    let net_name = NetLabName::new(name).map_err(net_err(name))?;
    let has_net = LabNet::open(&net_name).ok().flatten().is_some();
    let stored = db.lab(name)?.is_some();
    let has_vms = names.iter().any(|n| VmDir::for_name(n).exists());
    if !has_vms && !has_net && !stored {
        return Err(LabError::NotFound(name.into()));
    }
    if stored {
        db.set_lab_state(name, LabState::Stopping, None)?;
    }
    super::netd::stop(name);
    let stopped = stop_all(&rt, &names).await?;
    tokio::task::spawn_blocking(move || {
        LabNet::delete(&net_name)?;
        HostSysctls::new(kobako_net::sysctl::HOST_DIR)
            .release(&net_name)
            .map(|_| ())
    })
    .await?
    .map_err(net_err(name))?;
    let _ = std::fs::remove_dir_all(lab_run_dir(name));
    db.delete_lab(name)?;
    db.event(
        Some(name),
        None,
        "lab.state",
        &serde_json::json!({"state": LabState::Stopped, "removed": true}),
    )?;
    Ok(stopped)
}

/// Restart VMs of a running lab: `target` is `node` (all its VMs), `node.vm`, or `None` for
/// every VM. The VMs are stopped, then the stored lab is brought up again booting only them
/// (and applying their configuration); other stopped VMs stay stopped.
pub async fn restart(
    rt: Arc<dyn Runtime>,
    name: &str,
    target: Option<&str>,
    boot: &BootSettings,
    progress: &dyn Progress,
) -> Result<UpReport> {
    let rec = LabRecord::load(name).ok_or_else(|| LabError::NotFound(name.into()))?;
    let lab = &rec.lab;
    let names = super::targets(lab, target)?;
    {
        let _lock = LabLock::acquire(name, LOCK_WAIT)?;
        progress.event(&format!("stopping {}", names.join(", ")));
        let db = super::db()?;
        stop_all(&rt, &names).await?;
        for n in &names {
            db.set_vm_state(n, VmState::Stopped, Some("restarting"), None)?;
        }
    }
    up_some(
        rt,
        lab,
        rec.file.clone(),
        rec.owner.clone(),
        boot,
        progress,
        Some(&names),
    )
    .await
}
