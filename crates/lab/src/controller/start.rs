//! Bringing one lab VM to ready for `up`: its runtime configuration, a warm clone or a cold
//! boot (or the running VM when kept), configuration through its agent, its readiness checks;
//! then what is stored and reported of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_runtime::agent::AgentClient;
use kobako_runtime::config::{CgroupLevel, Nic, VmConfig};
use kobako_runtime::{Runtime, VmDir};
use kobako_state::{Db, VmState};

use super::configure::{configure, ConfigureError};
use super::ready::ReadyError;
use super::report::VmReport;
use super::{tap_name, BootSettings, Progress, Result};
use crate::spec::Vm;

/// Why `up` could not bring a VM to ready; its text is the VM's stored reason.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No runtime configuration could be made (image, kernel, disks).
    #[error(transparent)]
    Boot(#[from] kobako_boot::BootError),
    /// Creating or starting the VM, or reaching its agent, failed.
    #[error(transparent)]
    Runtime(#[from] kobako_runtime::RuntimeError),
    /// The agent did not take the VM's configuration.
    #[error("configuring: {0}")]
    Configure(#[from] ConfigureError),
    /// A readiness check did not pass.
    #[error(transparent)]
    Ready(#[from] ReadyError),
    /// The start task itself ended abnormally (a bug: it panicked).
    #[error("start task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The runtime configuration of lab VM `vm` (runtime name `vname`): image, kernel and disks as
/// `settings` boot them, in the lab's namespace and cgroups, with a NIC per interface.
pub(super) fn vm_config(
    settings: &BootSettings,
    vm: &Vm,
    vname: &str,
    netns: &str,
    cgroups: &[CgroupLevel],
) -> std::result::Result<VmConfig, StartError> {
    let mut cfg = settings.vm_config(vm, vname)?;
    cfg.name = vname.to_string();
    cfg.netns = Some(netns.to_string());
    cfg.free_page_reporting = settings.free_page_reporting;
    cfg.cgroups = cgroups.to_vec();
    cfg.shares = vm
        .shares
        .iter()
        .map(|s| kobako_runtime::config::Share {
            path: s.src.clone(),
            tag: s.tag.clone(),
        })
        .collect();
    cfg.nics = vm
        .interfaces
        .iter()
        .map(|x| Nic {
            tap: tap_name(vm, x.name.as_str()).as_str().to_string(),
            mac: x.mac.to_string(),
        })
        .collect();
    Ok(cfg)
}

/// What one `up` shares between its VMs' start tasks.
pub(super) struct Boot {
    pub(super) rt: Arc<dyn Runtime>,
    pub(super) db: Arc<Db>,
    /// Bounds concurrent launches (boots themselves share the CPUs).
    pub(super) sem: tokio::sync::Semaphore,
    pub(super) pool: Option<super::warm::Pool>,
    /// When booting started (boot times count from here).
    pub(super) t0: Instant,
}

/// A VM `up` brought to ready.
pub(super) struct Started {
    /// Time to its agent answering, from the start of the boots (None: it was running).
    boot_ms: Option<u64>,
    /// Time until its readiness checks passed, from the start of the boots.
    ready_ms: u64,
    /// A warm clone rather than a cold boot.
    warm: bool,
    /// Why it booted cold when a clone was tried.
    note: Option<String>,
    /// Its readiness checks and how long they took (None: it has none).
    checks: Option<String>,
}

impl Boot {
    /// Brings one VM to ready: a warm clone, a cold boot (`cfg`), or the running VM (`cfg`
    /// None: kept); then configures it and runs its readiness checks.
    pub(super) async fn start(
        &self,
        vm: Vm,
        vname: String,
        cfg: Option<VmConfig>,
    ) -> std::result::Result<Started, StartError> {
        let db = &self.db;
        // A warm clone when there is (or can be made) a warm snapshot of this configuration;
        // a cold boot otherwise, or when the clone fails.
        let (cloned, note) = match (&self.pool, &cfg) {
            (Some(pool), Some(cfg)) => self.warm_clone(pool, cfg, &vname).await,
            _ => (None, None),
        };
        let warm = cloned.is_some();
        let (client, boot_ms) = match (cfg, cloned) {
            (_, Some(c)) => (c, Some(self.t0.elapsed().as_millis() as u64)),
            (None, None) => {
                let dir = VmDir::for_name(&vname);
                let (c, _) = kobako_runtime::wait_ready(&dir, Duration::from_secs(60)).await?;
                (c, None)
            }
            (Some(cfg), None) => (
                self.cold_boot(&cfg, &vname).await?,
                Some(self.t0.elapsed().as_millis() as u64),
            ),
        };
        let _ = db.set_vm_state(&vname, VmState::AgentUp, Some("configuring"), None);
        configure(&client, &vm).await?;
        let checked = super::ready::wait_ready(&client, &vm, &vname, |c| {
            let why = format!("waiting for {c}");
            let _ = db.set_vm_state(&vname, VmState::AgentUp, Some(&why), None);
        })
        .await?;
        let checks = (!vm.ready.is_empty()).then(|| {
            let list: Vec<String> = vm.ready.iter().map(|c| c.to_string()).collect();
            format!("{} passed in {} ms", list.join(", "), checked.as_millis())
        });
        Ok(Started {
            boot_ms,
            ready_ms: self.t0.elapsed().as_millis() as u64,
            warm,
            note,
            checks,
        })
    }

    /// A clone of the pool's warm snapshot for `cfg`, or why the VM boots cold.
    async fn warm_clone(
        &self,
        pool: &super::warm::Pool,
        cfg: &VmConfig,
        vname: &str,
    ) -> (Option<AgentClient>, Option<String>) {
        match pool.get(&self.rt, cfg).await {
            Ok(w) => {
                let _permit = self.sem.acquire().await;
                let _ = self
                    .db
                    .set_vm_state(vname, VmState::Booting, Some("warm clone"), None);
                match super::warm::clone(&self.rt, &w, cfg).await {
                    Ok((_, c)) => {
                        // The resolver's own overlay (disk roots) is not used.
                        let _ = kobako_runtime::vmdir::remove_paths(&cfg.owned_paths);
                        (Some(c), None)
                    }
                    Err(e) => (None, Some(format!("warm clone failed ({e}); booting cold"))),
                }
            }
            Err(e) => (None, Some(format!("no warm snapshot ({e}); booting cold"))),
        }
    }

    /// Creates and starts `cfg`, then waits for its agent (a VM that never answers is killed).
    async fn cold_boot(
        &self,
        cfg: &VmConfig,
        vname: &str,
    ) -> std::result::Result<AgentClient, StartError> {
        let timeout = Duration::from_secs(cfg.ready_timeout_secs);
        let dir = {
            let _permit = self.sem.acquire().await;
            let dir = self.rt.create(cfg).await?;
            let _ = self.db.set_vm_state(vname, VmState::Booting, None, None);
            if let Err(e) = self.rt.start(&dir).await {
                let _ = dir.remove();
                return Err(e.into());
            }
            dir
        };
        match kobako_runtime::wait_ready(&dir, timeout).await {
            Ok((c, _)) => Ok(c),
            Err(e) => {
                let _ = self.rt.kill(&dir).await;
                Err(e.into())
            }
        }
    }
}

/// Stores and reports how one VM's start ended.
pub(super) fn finish_vm(
    db: &Db,
    progress: &dyn Progress,
    report: &mut VmReport,
    r: std::result::Result<Started, StartError>,
) -> Result<()> {
    let vname = report.name.clone();
    match r {
        Ok(st) => {
            let Started {
                boot_ms,
                ready_ms,
                warm,
                note,
                checks,
            } = st;
            db.set_vm_state(&vname, VmState::Ready, None, boot_ms.map(|b| b as i64))?;
            if let Some(n) = note {
                progress.event(&format!("  {vname}: {n}"));
            }
            let how = if warm { "warm clone" } else { "booted" };
            progress.event(&match (boot_ms, checks) {
                (Some(b), Some(c)) => {
                    format!("  {vname} ready in {ready_ms} ms ({how} in {b} ms; {c})")
                }
                (Some(b), None) => format!(
                    "  {vname} ready in {b} ms{}",
                    if warm { " (warm clone)" } else { "" }
                ),
                (None, Some(c)) => format!("  {vname} ready (was running; {c})"),
                (None, None) => format!("  {vname} ready (was running)"),
            });
            report.state = "ready".into();
            report.boot_ms = boot_ms;
            report.warm = warm;
        }
        Err(e) => {
            let e = e.to_string();
            db.set_vm_state(&vname, VmState::Failed, Some(&e), None)?;
            progress.event(&format!("  {vname} failed: {e}"));
            report.state = "failed".into();
            report.error = Some(e);
        }
    }
    Ok(())
}
