//! A lab's lifecycle from the command line: `up` (and `up --dry-run`), `down`, `restart`, and
//! `stop`/`start` of a node or VM, with the `[LAB/]NODE[.VM]` targets they take.

use std::sync::Arc;

use anyhow::{bail, Result};
use kobako_lab::controller::{self, LabRecord};
use kobako_runtime::Runtime;

use super::check::checked_labs;
use super::{print_report, Stderr};
use crate::vm_cmd::runtime;
use crate::vm_names::lab_env;

/// `kobako up --dry-run FILE`: the checks and the plan of `up`, nothing changed.
pub fn up_dry_run(file: &str, json: bool) -> Result<i32> {
    let labs = checked_labs(file)?;
    let db = controller::db()?;
    let mut plans = Vec::new();
    for lab in &labs {
        let plan = controller::plan(&db, lab)?;
        if !json {
            println!("lab {}: {}", lab.name.as_str(), plan.summary());
            for n in &plan.create {
                println!("  create {n}");
            }
        }
        plans.push(serde_json::json!({"lab": lab.name.as_str(), "plan": plan}));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&plans)?);
    } else {
        eprintln!("{file}: checked; dry run, nothing was changed");
    }
    Ok(0)
}

/// `kobako up FILE` (`cold`: no warm clones).
pub async fn up(file: &str, json: bool, cold: bool) -> Result<i32> {
    let labs = checked_labs(file)?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let mut boot = crate::config::boot_settings()?;
    boot.warm &= !cold;
    let file_abs = std::fs::canonicalize(file)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| file.to_string());
    let mut code = 0;
    let mut reports = Vec::new();
    for lab in labs {
        eprintln!("lab {}: up", lab.name.as_str());
        let report = controller::up(
            rt.clone(),
            &lab,
            Some(file_abs.clone()),
            None,
            &boot,
            &Stderr,
        )
        .await?;
        if !json {
            print_report(&report);
        }
        if !report.ok() {
            code = 1;
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(code)
}

/// `kobako down NAME`.
pub async fn down(name: &str, json: bool) -> Result<i32> {
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let n = controller::down(rt, name).await?;
    if json {
        println!("{}", serde_json::json!({"lab": name, "stopped_vms": n}));
    } else {
        eprintln!("lab {name}: down ({n} VMs stopped, network and state removed)");
    }
    Ok(0)
}

/// `kobako restart [LAB/]NODE[.VM]` or `kobako restart LAB`.
pub async fn restart(target: &str, json: bool) -> Result<i32> {
    let (lab, what) = split_target(target)?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let boot = crate::config::boot_settings()?;
    let report = controller::restart(rt, &lab, what.as_deref(), &boot, &Stderr).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.ok() { 0 } else { 1 })
}

/// The lab and `NODE[.VM]` of a `stop`/`start` target (a whole lab is `down`/`up`).
fn node_target(target: &str, verb: &str) -> Result<(String, String)> {
    match split_target(target)? {
        (lab, Some(what)) => Ok((lab, what)),
        (lab, None) => bail!(
            "'{target}' is a lab: `kobako {verb}` takes a node or VM of it (NODE, NODE.VM or {lab}/NODE.VM); a whole lab is {}",
            if verb == "stop" {
                "taken down with `kobako down LAB`"
            } else {
                "brought up with `kobako up FILE`"
            }
        ),
    }
}

/// `kobako stop NODE[.VM]`.
pub async fn stop(target: &str) -> Result<i32> {
    let (lab, what) = node_target(target, "stop")?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    let n = controller::stop_vms(rt, &lab, &what, &format!("stopped by {who}"), &Stderr).await?;
    if n == 0 {
        println!("{lab}/{what} was already stopped; `kobako start {lab}/{what}` starts it");
    } else {
        println!(
            "{n} VM(s) of {lab}/{what} stopped; lab {lab} is degraded until `kobako start {lab}/{what}`"
        );
    }
    Ok(0)
}

/// `kobako start NODE[.VM]`.
pub async fn start(target: &str, json: bool) -> Result<i32> {
    let (lab, what) = node_target(target, "start")?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let boot = crate::config::boot_settings()?;
    let report = controller::start_vms(rt, &lab, &what, &boot, &Stderr).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.ok() { 0 } else { 1 })
}

/// `LAB`, `LAB/NODE[.VM]`, or `NODE[.VM]` of the one lab that has it.
fn split_target(t: &str) -> Result<(String, Option<String>)> {
    if let Some((l, w)) = t.split_once('/') {
        return Ok((l.to_string(), Some(w.to_string())));
    }
    if let Some(l) = lab_env() {
        return Ok((l, Some(t.to_string())));
    }
    let labs = LabRecord::list();
    if labs.iter().any(|r| r.name == t) {
        return Ok((t.to_string(), None));
    }
    let hits: Vec<&LabRecord> = labs
        .iter()
        .filter(|r| {
            if t.contains('.') {
                r.lab.find_vm(t).is_ok()
            } else {
                r.lab.node(t).is_some()
            }
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok((one.name.clone(), Some(t.to_string()))),
        [] => bail!("no lab, node or VM '{t}' (see `kobako ls` and `kobako inspect LAB`)"),
        many => bail!(
            "'{t}' is in several labs: write LAB/{t} ({})",
            many.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
