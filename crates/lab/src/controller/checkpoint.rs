//! Lab checkpoints: every VM's snapshot plus the lab's network state, as one unit.
//!
//! `<state>/checkpoints/<lab>/<name>/`:
//! ```text
//! checkpoint.json   lab spec, link states and impairments, VM names, times
//! vms/<vm>/         one VM snapshot each (kobako_runtime::snapshot)
//! ```
//! Taking one: every VM of the lab is stopped at (nearly) the same instant, each is saved,
//! then all continue. It is written to a staging directory and renamed into place only when
//! complete, so a failure half-way (a VM that cannot be saved, a crash) never registers a half
//! checkpoint; every VM is continued either way.
//!
//! Restoring one replaces the lab's VMs with restored ones (same names, taps and addresses:
//! they continue from the checkpoint), sets the checkpoint's link states and impairments, and
//! records the checkpoint's spec as the lab's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_runtime::{Runtime, VmDir};
use kobako_state::{LabLock, LabState, LinkRow, VmState};
use serde::{Deserialize, Serialize};

use super::report::{UpReport, VmReport};
use super::up::ensure_network;
use super::{links, vm_name, LabError, LabRecord, Progress, Result};
use crate::spec::Lab;

const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What a checkpoint holds besides the VM snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointFile {
    pub lab: String,
    pub name: String,
    pub created_ms: i64,
    pub file: Option<String>,
    pub spec: Lab,
    pub links: Vec<LinkRow>,
    pub vms: Vec<String>,
    /// How long the guests were stopped.
    pub paused_ms: u64,
}

/// A checkpoint as listed.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    pub lab: String,
    pub name: String,
    pub created_ms: i64,
    pub vms: usize,
    pub bytes: u64,
    pub paused_ms: u64,
    pub path: PathBuf,
}

fn root(lab: &str) -> PathBuf {
    kobako_state::state_root().join("checkpoints").join(lab)
}

/// The checkpoint-name rule (the one the API and the CLI go through): 1-48 ASCII letters,
/// digits, `-` or `_`, not starting with `-` (a checkpoint is a directory of that name).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidName(format!(
            "checkpoint name '{name}': use 1-48 letters, digits, '-' or '_'"
        )))
    }
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Checkpoints of `lab`, oldest first.
pub fn list(lab: &str) -> Result<Vec<CheckpointInfo>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root(lab)) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') {
            continue;
        }
        let Ok(text) = std::fs::read(e.path().join("checkpoint.json")) else {
            continue;
        };
        let Ok(c) = serde_json::from_slice::<CheckpointFile>(&text) else {
            continue;
        };
        out.push(CheckpointInfo {
            lab: c.lab,
            name: c.name,
            created_ms: c.created_ms,
            vms: c.vms.len(),
            bytes: dir_size(&e.path()),
            paused_ms: c.paused_ms,
            path: e.path(),
        });
    }
    out.sort_by_key(|c| c.created_ms);
    Ok(out)
}

/// Deletes a checkpoint.
pub fn delete(lab: &str, name: &str) -> Result<()> {
    check_name(name)?;
    let d = root(lab).join(name);
    if !d.join("checkpoint.json").exists() {
        return Err(LabError::NoSuch(format!(
            "lab '{lab}' has no checkpoint '{name}' (see `kobako checkpoint {lab} --list`)"
        )));
    }
    std::fs::remove_dir_all(&d).map_err(LabError::io(d.display().to_string()))
}

/// Deletes every checkpoint of `lab` (memory images, device states, disk copies) and what
/// an interrupted one left (staging directories): the lab is being deleted. Returns how many
/// checkpoints there were.
pub fn delete_all(lab: &str) -> Result<usize> {
    if lab.is_empty() || lab.starts_with('.') || lab.contains(['/', '\\', '\0']) {
        return Err(LabError::InvalidName(format!(
            "lab name '{lab}' is not a directory name"
        )));
    }
    let d = root(lab);
    let n = list(lab)?.len();
    match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(LabError::io(d.display().to_string())(e)),
    }
}

/// Takes checkpoint `name` of the running lab `lab`.
pub async fn checkpoint(
    rt: Arc<dyn Runtime>,
    lab: &str,
    name: &str,
    progress: &dyn Progress,
) -> Result<CheckpointInfo> {
    check_name(name)?;
    let _lock = LabLock::acquire(lab, LOCK_WAIT)?;
    let db = super::db()?;
    let rec = LabRecord::load_from(&db, lab)?.ok_or_else(|| LabError::NotFound(lab.into()))?;
    let dest = root(lab).join(name);
    if dest.exists() {
        return Err(LabError::Conflict(format!(
            "lab '{lab}' already has a checkpoint '{name}' (delete it with `kobako checkpoint {lab} {name} --delete` or pick another name)"
        )));
    }
    if let Some(v) = rec.lab.vms().find(|v| !v.shares.is_empty()) {
        return Err(LabError::Unsupported(format!(
            "lab '{lab}': VM {} has shared directories, and QEMU cannot checkpoint a VM with a \
             9p export; remove its `shares:` (copy the files in with `files:`) to checkpoint the lab",
            v.id
        )));
    }
    let vms: Vec<VmDir> = rec.vms.iter().map(|n| VmDir::for_name(n)).collect();
    if let Some(v) = vms.iter().find(|v| v.vm_pid().is_none()) {
        return Err(LabError::Vm {
            vm: v.name.clone(),
            message: "is not running; a checkpoint needs every VM (`kobako up` or `kobako restart` it first)".into(),
        });
    }
    let staging = root(lab).join(format!(".staging-{name}-{}", std::process::id()));
    std::fs::create_dir_all(staging.join("vms"))
        .map_err(LabError::io(staging.display().to_string()))?;
    let links_now = db.links(lab)?;
    let t0 = Instant::now();
    // One instant for the whole lab: stop every guest first, then save them one by one.
    let stops: Vec<_> = vms
        .iter()
        .map(|v| {
            let v = v.clone();
            tokio::spawn(async move { kobako_runtime::snapshot::stop_guest(&v).await })
        })
        .collect();
    let mut result: Result<()> = Ok(());
    for (v, s) in vms.iter().zip(stops) {
        let r = s
            .await
            .unwrap_or_else(|e| Err(kobako_runtime::RuntimeError::Qmp(e.to_string())));
        if let Err(e) = r {
            result = Err(LabError::Vm {
                vm: v.name.clone(),
                message: format!("pausing: {e}"),
            });
        }
    }
    if result.is_ok() {
        progress.event(&format!("{} VMs paused; saving", vms.len()));
        for v in &vms {
            let t = Instant::now();
            match rt
                .snapshot(v, &staging.join("vms").join(&v.name), true)
                .await
            {
                Ok(m) => progress.event(&format!(
                    "  {}: {} MiB in {} ms",
                    v.name,
                    (m.memory.size + m.root.as_ref().map(|r| r.size).unwrap_or(0)) >> 20,
                    t.elapsed().as_millis()
                )),
                Err(e) => {
                    result = Err(LabError::Vm {
                        vm: v.name.clone(),
                        message: format!("saving: {e}"),
                    });
                    break;
                }
            }
        }
    }
    // Every VM continues, whatever happened.
    for v in &vms {
        let _ = rt.resume(v).await;
    }
    let paused_ms = t0.elapsed().as_millis() as u64;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let file = CheckpointFile {
        lab: lab.into(),
        name: name.into(),
        created_ms: kobako_state::now_ms(),
        file: rec.file.clone(),
        spec: rec.lab.clone(),
        links: links_now,
        vms: rec.vms.clone(),
        paused_ms,
    };
    let write = || -> std::io::Result<()> {
        std::fs::write(
            staging.join("checkpoint.json"),
            serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&staging, &dest)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(LabError::io(format!("saving checkpoint {name}"))(e));
    }
    db.event(
        Some(lab),
        None,
        "lab.checkpoint",
        &serde_json::json!({"name": name, "paused_ms": paused_ms}),
    )?;
    Ok(CheckpointInfo {
        lab: lab.into(),
        name: name.into(),
        created_ms: file.created_ms,
        vms: file.vms.len(),
        bytes: dir_size(&dest),
        paused_ms,
        path: dest,
    })
}

/// Brings lab `lab` back to checkpoint `name` (its VMs, link states and impairments).
pub async fn restore(
    rt: Arc<dyn Runtime>,
    lab: &str,
    name: &str,
    progress: &dyn Progress,
) -> Result<UpReport> {
    check_name(name)?;
    let t0 = Instant::now();
    let dir = root(lab).join(name);
    let cp: CheckpointFile = std::fs::read(dir.join("checkpoint.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .ok_or_else(|| {
            LabError::NoSuch(format!(
                "lab '{lab}' has no checkpoint '{name}' (see `kobako checkpoint {lab} --list`)"
            ))
        })?;
    let _lock = LabLock::acquire(lab, LOCK_WAIT)?;
    let db = Arc::new(super::db()?);
    // Check every snapshot fits this host and is intact (checksums) before anything is
    // stopped: a refused restore leaves the running lab as it was. QEMU's state format is
    // bound to its version; the own VMM's snapshots will get their own check.
    let overlays = kobako_state::state_root().join("vms");
    for v in &cp.vms {
        let snap = dir.join("vms").join(v);
        kobako_runtime::snapshot::load(&PathBuf::from("qemu-system-x86_64"), &snap, true).map_err(
            |e| LabError::Vm {
                vm: v.clone(),
                message: e.to_string(),
            },
        )?;
    }
    let spec = serde_json::to_value(&cp.spec)?;
    let owner = db.lab(lab)?.and_then(|r| r.owner);
    db.put_lab(lab, cp.file.as_deref(), &spec, owner.as_deref())?;
    db.sync_vms(
        lab,
        &cp.spec
            .vms()
            .map(|v| {
                (
                    vm_name(&cp.spec, v),
                    v.id.node.as_str().to_string(),
                    v.id.vm.as_str().to_string(),
                )
            })
            .collect::<Vec<_>>(),
    )?;
    db.set_lab_state(
        lab,
        LabState::Starting,
        Some(&format!("restoring checkpoint {name}")),
    )?;
    let spec2 = cp.spec.clone();
    let netns = tokio::task::spawn_blocking(move || ensure_network(&spec2)).await??;
    let cgroups = super::cgroups::levels(lab, owner.as_deref());
    // The lab's current VMs go; the checkpoint's come back under the same names.
    let mut current: Vec<String> = cp.vms.clone();
    let prefix = format!("{lab}.");
    for d in kobako_runtime::vmdir::list() {
        if d.name.starts_with(&prefix) && !current.contains(&d.name) {
            current.push(d.name);
        }
    }
    progress.event(&format!("stopping {} VM(s)", current.len()));
    let kills: Vec<_> = current
        .iter()
        .map(|n| {
            let rt = rt.clone();
            let d = VmDir::for_name(n);
            tokio::spawn(async move {
                if d.exists() {
                    let _ = rt.kill(&d).await;
                }
            })
        })
        .collect();
    for k in kills {
        let _ = k.await;
    }
    let mut tasks = Vec::new();
    for v in &cp.vms {
        let snap = dir.join("vms").join(v);
        let rt = rt.clone();
        let db = db.clone();
        let name = v.clone();
        // Its readiness checks (a checkpoint from before `ready:` has none).
        let vm = cp.spec.vms().find(|x| vm_name(&cp.spec, x) == *v).cloned();
        let netns = netns.clone();
        let cgroups = cgroups.clone();
        let overlay = overlays.join(v);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut cfg = rt
                .restore_config(&snap, &name, &overlay, false)
                .map_err(|e| e.to_string())?;
            cfg.netns = Some(netns);
            cfg.cgroups = cgroups;
            let dir = rt.create(&cfg).await.map_err(|e| e.to_string())?;
            let _ = db.set_vm_state(&name, VmState::Booting, Some("restoring"), None);
            if let Err(e) = rt.start(&dir).await {
                let _ = dir.remove();
                return Err(e.to_string());
            }
            let (client, _) =
                match kobako_runtime::wait_ready(&dir, Duration::from_secs(cfg.ready_timeout_secs))
                    .await
                {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = rt.kill(&dir).await;
                        return Err(e.to_string());
                    }
                };
            // Same identity, but its own RNG stream and today's clock (a checkpoint restored
            // twice must not replay the same random numbers).
            kobako_runtime::snapshot::fresh_identity(&client, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            // The services were running when the checkpoint was taken; the checks say they
            // still answer (a restored clock or a lost connection can break them).
            if let Some(vm) = vm.filter(|vm| !vm.ready.is_empty()) {
                super::ready::wait_ready(&client, &vm, &name, |c| {
                    let why = format!("restored, waiting for {c}");
                    let _ = db.set_vm_state(&name, VmState::AgentUp, Some(&why), None);
                })
                .await
                .map_err(|e| e.to_string())?;
            }
            Ok::<u64, String>(t.elapsed().as_millis() as u64)
        }));
    }
    let mut reports = Vec::new();
    for (v, t) in cp.vms.iter().zip(tasks) {
        let r = t
            .await
            .unwrap_or_else(|e| Err(format!("restore task failed: {e}")));
        let mut rep = VmReport {
            name: v.clone(),
            state: "ready".into(),
            action: "restored".into(),
            boot_ms: None,
            addresses: Vec::new(),
            error: None,
            warm: false,
        };
        match r {
            Ok(ms) => {
                db.set_vm_state(v, VmState::Ready, None, Some(ms as i64))?;
                progress.event(&format!("  {v} restored, ready in {ms} ms"));
                rep.boot_ms = Some(ms);
            }
            Err(e) => {
                db.set_vm_state(v, VmState::Failed, Some(&e), None)?;
                progress.event(&format!("  {v} failed: {e}"));
                rep.state = "failed".into();
                rep.error = Some(e);
            }
        }
        reports.push(rep);
    }
    // The checkpoint's link states and impairments.
    for l in &cp.links {
        db.set_link(lab, &l.name, l.up, l.impairment.as_ref())?;
    }
    let spec2 = cp.spec.clone();
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || links::apply_links(&db2, &spec2)).await??;
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    let (state, reason) = match failed {
        0 => (LabState::Ready, None),
        n => (
            LabState::Degraded,
            Some(format!("{n} of {} VMs failed to restore", reports.len())),
        ),
    };
    db.set_lab_state(lab, state, reason.as_deref())?;
    db.event(
        Some(lab),
        None,
        "lab.restore",
        &serde_json::json!({"checkpoint": name}),
    )?;
    Ok(UpReport {
        lab: lab.into(),
        state,
        vms: reports,
        removed: Vec::new(),
        total_ms: t0.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names() {
        for ok in ["a", "before-upgrade", "run_2", &"x".repeat(48)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a/b", "..", "a b", "é", &"x".repeat(49)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(
                e.contains("use 1-48 letters, digits, '-' or '_'"),
                "{bad}: {e}"
            );
        }
    }
}
