//! The lab controller: bring a resolved [`Lab`] up on this host and take it down again.
//!
//! `up` is idempotent and converges: the host network is ensured object by object (kobako-net
//! calls are idempotent), VMs that already run are kept and reconfigured, missing ones are
//! created and booted in parallel, and every VM then gets its addresses, routes, hosts, files
//! and services through its agent. A crash half-way is repaired by the next `up`; `down` removes
//! every VM process, tap, bridge, namespace and overlay of the lab, and is fine to repeat.
//!
//! What is stored: `/var/lib/kobako/labs/<lab>.json` (or `$KOBAKO_STATE/labs`) holds the resolved
//! lab and the names of its VMs (a first version of the state store; SQLite comes with the
//! server). Everything else is read back from the host (VM runtime directories, namespaces).
//!
//! Not yet here (see the issue notes): impairments and link state on this host's kernel need a
//! long-lived process (kobako-net's userspace relay); uplink/published ports.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_agent::proto::{self, IfaceConfig, NetConfig, RouteConfig, ServiceSpec};
use kobako_net::{IfName, LabName as NetLabName, LabNet, PortSpec, PortVlan, VlanId};
use kobako_runtime::agent::AgentClient;
use kobako_runtime::config::{Nic, VmConfig};
use kobako_runtime::{Runtime, VmDir};
use serde::{Deserialize, Serialize};

use crate::spec::{Attachment, FileSource, Lab, Vm};

/// Errors of the controller, each naming the lab object involved.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("host network of lab '{lab}': {source}")]
    Net {
        lab: String,
        #[source]
        source: kobako_net::NetError,
    },
    #[error("VM {vm}: {message}")]
    Vm { vm: String, message: String },
    #[error("lab '{0}' is not up (see `kobako ls`)")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Where lab state lives.
pub fn state_dir() -> PathBuf {
    std::env::var_os("KOBAKO_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kobako"))
        .join("labs")
}

/// What is stored about a lab that is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabRecord {
    pub name: String,
    pub file: Option<String>,
    pub lab: Lab,
    /// Runtime names of its VMs (`<lab>.<node>.<vm>`).
    pub vms: Vec<String>,
}

impl LabRecord {
    fn path(name: &str) -> PathBuf {
        state_dir().join(format!("{name}.json"))
    }

    pub fn load(name: &str) -> Option<LabRecord> {
        let data = std::fs::read(Self::path(name)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn save(&self) -> Result<()> {
        let p = Self::path(&self.name);
        std::fs::create_dir_all(state_dir()).map_err(|e| LabError::Other(e.to_string()))?;
        let tmp = p.with_extension("tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|e| LabError::Other(e.to_string()))?;
        std::fs::write(&tmp, data).map_err(|e| LabError::Other(e.to_string()))?;
        std::fs::rename(&tmp, &p).map_err(|e| LabError::Other(e.to_string()))
    }

    /// All labs with a record.
    pub fn list() -> Vec<LabRecord> {
        let mut v: Vec<LabRecord> = std::fs::read_dir(state_dir())
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_suffix(".json").and_then(LabRecord::load)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// The runtime name of a lab VM.
pub fn vm_name(lab: &Lab, vm: &Vm) -> String {
    format!(
        "{}.{}.{}",
        lab.name.as_str(),
        vm.id.node.as_str(),
        vm.id.vm.as_str()
    )
}

fn tap_name(vm: &Vm, iface: &str) -> IfName {
    IfName::for_key(
        "t",
        &format!("{}.{}:{iface}", vm.id.node.as_str(), vm.id.vm.as_str()),
    )
}

fn bridge_for(vm: &Vm, att: &Attachment) -> IfName {
    match att {
        Attachment::NodeNetwork => IfName::for_key("bn", vm.id.node.as_str()),
        Attachment::Network(n) => IfName::for_key("bw", n.as_str()),
        Attachment::Link(l) => IfName::for_key("bl", l.as_str()),
    }
}

/// Progress reports for the CLI (one line per event).
pub trait Progress: Send + Sync {
    fn event(&self, line: &str);
}

/// Turns a VM's image/kernel words into a bootable config (the CLI knows the image store).
pub type Resolver = dyn Fn(&Vm, &str) -> std::result::Result<VmConfig, String> + Send + Sync;

/// One VM's outcome of `up`.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    pub name: String,
    pub state: String,
    pub boot_ms: Option<u64>,
    pub addresses: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub lab: String,
    pub vms: Vec<VmReport>,
    pub total_ms: u64,
}

impl UpReport {
    pub fn ok(&self) -> bool {
        self.vms.iter().all(|v| v.error.is_none())
    }
}

fn net_err(lab: &Lab) -> impl Fn(kobako_net::NetError) -> LabError + '_ {
    move |source| LabError::Net {
        lab: lab.name.as_str().to_string(),
        source,
    }
}

/// Build (or complete) the lab's host network. Blocking: call from `spawn_blocking`.
fn ensure_network(lab: &Lab) -> Result<String> {
    let e = net_err(lab);
    let name = NetLabName::new(lab.name.as_str()).map_err(&e)?;
    let net = LabNet::ensure(&name).map_err(&e)?;
    let netns = net.netns().name().to_string();
    for vm in lab.nodes.iter().flat_map(|n| n.vms.iter()) {
        for iface in &vm.interfaces {
            let bridge = bridge_for(vm, &iface.attach);
            let vlan = match &iface.attach {
                Attachment::Network(n) => lab
                    .networks
                    .iter()
                    .find(|x| &x.name == n)
                    .and_then(|x| x.vlan),
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
    for link in &lab.links {
        if link.state == crate::spec::LinkState::Down {
            for ep in &link.endpoints {
                if let Some(vm) = lab
                    .nodes
                    .iter()
                    .flat_map(|n| n.vms.iter())
                    .find(|v| v.id == ep.vm)
                {
                    net.set_link_up(&tap_name(vm, ep.iface.as_str()), false)
                        .map_err(&e)?;
                }
            }
        }
    }
    Ok(netns)
}

/// What the agent applies in a VM.
fn guest_config(vm: &Vm) -> (NetConfig, Vec<ServiceSpec>) {
    let mut cfg = NetConfig {
        hostname: Some(format!("{}-{}", vm.id.node.as_str(), vm.id.vm.as_str())),
        ..Default::default()
    };
    let mut default_set = false;
    for i in &vm.interfaces {
        cfg.interfaces.push(IfaceConfig {
            name: String::new(),
            mac: Some(i.mac.to_string()),
            rename: Some(i.name.as_str().to_string()),
            addresses: i.addresses.iter().map(|c| c.to_string()).collect(),
            mtu: Some(i.mtu),
            up: true,
        });
        if let (Some(gw), false, false) = (i.gateway, i.no_gateway, default_set) {
            // The interface's own address is never its gateway (the router itself).
            if !i.addresses.iter().any(|a| a.addr == gw) {
                cfg.routes.push(RouteConfig {
                    dst: "default".into(),
                    via: Some(gw.to_string()),
                    dev: Some(i.name.as_str().to_string()),
                    metric: None,
                });
                default_set = true;
            }
        }
    }
    for r in &vm.routes {
        cfg.routes.push(RouteConfig {
            dst: r.to.to_string(),
            via: Some(r.via.to_string()),
            dev: None,
            metric: None,
        });
    }
    cfg.hosts = vm.hosts.iter().map(|(n, ip)| format!("{ip} {n}")).collect();
    let services = vm
        .services
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            command: s.command.clone(),
            restart: match s.restart {
                crate::spec::Restart::Always => proto::Restart::Always,
                crate::spec::Restart::OnFailure => proto::Restart::OnFailure,
                crate::spec::Restart::Never => proto::Restart::Never,
            },
            env: vm.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: None,
        })
        .collect();
    (cfg, services)
}

async fn configure(client: &AgentClient, vm: &Vm) -> std::result::Result<(), String> {
    let (net, services) = guest_config(vm);
    client.net_config(net).await.map_err(|e| e.to_string())?;
    for f in &vm.files {
        let data = match &f.source {
            FileSource::Inline(s) => s.clone().into_bytes(),
            FileSource::Host(p) => {
                std::fs::read(p).map_err(|e| format!("file {}: {e}", p.display()))?
            }
        };
        if let Some(parent) = std::path::Path::new(&f.dst).parent() {
            let _ = client.mkdir(&parent.to_string_lossy(), 0o755, true).await;
        }
        client
            .put_file(&data[..], data.len() as u64, &f.dst, f.mode, &|_| {})
            .await
            .map_err(|e| format!("file {}: {e}", f.dst))?;
    }
    if !services.is_empty() {
        client
            .set_services(services)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Bring `lab` up (or converge it). `resolve` builds each VM's runtime config.
pub async fn up(
    rt: Arc<dyn Runtime>,
    lab: &Lab,
    file: Option<String>,
    resolve: &Resolver,
    progress: &dyn Progress,
) -> Result<UpReport> {
    let t0 = Instant::now();
    let vms: Vec<&Vm> = lab.nodes.iter().flat_map(|n| n.vms.iter()).collect();
    // Record first, so a crash from here on is cleaned up by `down` and converged by `up`.
    let record = LabRecord {
        name: lab.name.as_str().to_string(),
        file,
        lab: lab.clone(),
        vms: vms.iter().map(|v| vm_name(lab, v)).collect(),
    };
    record.save()?;
    progress.event(&format!(
        "network: namespace and {} bridges/taps",
        vms.len()
    ));
    let lab2 = lab.clone();
    let netns = tokio::task::spawn_blocking(move || ensure_network(&lab2))
        .await
        .map_err(|e| LabError::Other(e.to_string()))??;

    // Split: VMs already running are kept; the rest are created.
    let mut cfgs = Vec::new();
    let mut order = Vec::new();
    let mut reports: Vec<VmReport> = Vec::new();
    let mut running: Vec<(usize, VmDir)> = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let name = vm_name(lab, vm);
        reports.push(VmReport {
            name: name.clone(),
            state: "pending".into(),
            boot_ms: None,
            addresses: vm
                .interfaces
                .iter()
                .flat_map(|x| {
                    x.addresses
                        .iter()
                        .map(|a| format!("{}:{a}", x.name.as_str()))
                })
                .collect(),
            error: None,
        });
        let dir = VmDir::for_name(&name);
        if dir.exists() && dir.vm_pid().is_some() {
            running.push((i, dir));
            continue;
        }
        if dir.exists() {
            let _ = rt.kill(&dir).await;
        }
        match resolve(vm, &name) {
            Ok(mut cfg) => {
                cfg.name = name;
                cfg.netns = Some(netns.clone());
                cfg.nics = vm
                    .interfaces
                    .iter()
                    .map(|x| Nic {
                        tap: tap_name(vm, x.name.as_str()).as_str().to_string(),
                        mac: x.mac.to_string(),
                    })
                    .collect();
                cfgs.push(cfg);
                order.push(i);
            }
            Err(e) => {
                reports[i].state = "failed".into();
                reports[i].error = Some(e);
            }
        }
    }
    progress.event(&format!(
        "booting {} VM(s) ({} already running)",
        cfgs.len(),
        running.len()
    ));
    let results = kobako_runtime::group::start_all(
        rt.clone(),
        cfgs,
        kobako_runtime::group::default_parallelism(),
    )
    .await;
    let mut clients: Vec<(usize, AgentClient)> = Vec::new();
    for (i, r) in order.into_iter().zip(results) {
        match r {
            Ok(s) => {
                let ms = s.ready_after.as_millis() as u64;
                progress.event(&format!("  {} ready in {ms} ms", reports[i].name));
                reports[i].boot_ms = Some(ms);
                clients.push((i, s.client));
            }
            Err(e) => {
                progress.event(&format!("  {} failed: {e}", reports[i].name));
                reports[i].state = "failed".into();
                reports[i].error = Some(e.to_string());
            }
        }
    }
    for (i, dir) in running {
        match kobako_runtime::wait_ready(&dir, Duration::from_secs(60)).await {
            Ok((c, _)) => clients.push((i, c)),
            Err(e) => {
                reports[i].state = "failed".into();
                reports[i].error = Some(e.to_string());
            }
        }
    }
    // Configure all in parallel.
    let jobs = clients.iter().map(|(i, c)| {
        let vm = vms[*i];
        async move { (*i, configure(c, vm).await) }
    });
    let mut outcomes = Vec::new();
    for j in jobs {
        outcomes.push(j.await);
    }
    for (i, r) in outcomes {
        match r {
            Ok(()) => reports[i].state = "ready".into(),
            Err(e) => {
                reports[i].state = "failed".into();
                reports[i].error = Some(format!("configuring: {e}"));
            }
        }
    }
    Ok(UpReport {
        lab: lab.name.as_str().to_string(),
        vms: reports,
        total_ms: t0.elapsed().as_millis() as u64,
    })
}

/// Take a lab down: every VM, then the host network, then the record. Idempotent.
pub async fn down(rt: Arc<dyn Runtime>, name: &str) -> Result<usize> {
    let prefix = format!("{name}.");
    let mut names: Vec<String> = LabRecord::load(name).map(|r| r.vms).unwrap_or_default();
    // Also VMs of the lab that the record does not know (a crash before it was written).
    for d in kobako_runtime::vmdir::list() {
        if d.name.starts_with(&prefix) && !names.contains(&d.name) {
            names.push(d.name);
        }
    }
    let net_name = NetLabName::new(name).map_err(|source| LabError::Net {
        lab: name.into(),
        source,
    })?;
    let has_net = LabNet::open(&net_name).ok().flatten().is_some();
    if names.is_empty() && !has_net && LabRecord::load(name).is_none() {
        return Err(LabError::NotFound(name.into()));
    }
    let stops: Vec<_> = names
        .iter()
        .map(|n| {
            let rt = rt.clone();
            let d = VmDir::for_name(n);
            tokio::spawn(async move {
                if d.exists() {
                    rt.stop(&d, Duration::from_secs(5)).await
                } else {
                    Ok(())
                }
            })
        })
        .collect();
    let mut stopped = 0;
    for s in stops {
        match s.await {
            Ok(Ok(())) => stopped += 1,
            Ok(Err(e)) => return Err(LabError::Other(e.to_string())),
            Err(e) => return Err(LabError::Other(e.to_string())),
        }
    }
    tokio::task::spawn_blocking(move || LabNet::delete(&net_name))
        .await
        .map_err(|e| LabError::Other(e.to_string()))?
        .map_err(|source| LabError::Net {
            lab: name.into(),
            source,
        })?;
    let _ = std::fs::remove_file(LabRecord::path(name));
    Ok(stopped)
}

/// Cut (`up == false`) or heal a link of a running lab: both endpoints' taps go down/up, so
/// neither VM's frames cross it. The record keeps the new state, so `up` re-applies it.
pub fn set_link_state(name: &str, link: &str, up: bool) -> Result<()> {
    let mut rec = LabRecord::load(name).ok_or_else(|| LabError::NotFound(name.into()))?;
    let lab = rec.lab.clone();
    let Some(l) = lab.links.iter().find(|l| l.name.as_str() == link) else {
        let names: Vec<&str> = lab.links.iter().map(|l| l.name.as_str()).collect();
        return Err(LabError::Other(format!(
            "lab '{name}' has no link '{link}' (links: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    let e = net_err(&lab);
    let net_name = NetLabName::new(name).map_err(&e)?;
    let net = LabNet::open(&net_name)
        .map_err(&e)?
        .ok_or_else(|| LabError::NotFound(name.into()))?;
    for ep in &l.endpoints {
        if let Some(vm) = lab
            .nodes
            .iter()
            .flat_map(|n| n.vms.iter())
            .find(|v| v.id == ep.vm)
        {
            net.set_link_up(&tap_name(vm, ep.iface.as_str()), up)
                .map_err(&e)?;
        }
    }
    if let Some(stored) = rec.lab.links.iter_mut().find(|x| x.name.as_str() == link) {
        stored.state = if up {
            crate::spec::LinkState::Up
        } else {
            crate::spec::LinkState::Down
        };
    }
    rec.save()
}
