//! Lab commands: `up`, `down`, `ls`, `inspect`.

use std::sync::Arc;

use anyhow::{bail, Result};
use kobako_lab::controller::{self, LabRecord, Progress};
use kobako_lab::spec::{self, HostLimits};
use kobako_runtime::Runtime;

use crate::resolve::RootKind;
use crate::vm_cmd::{config_from, runtime, RunArgs};

struct Stderr;

impl Progress for Stderr {
    fn event(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// `kobako up FILE`.
pub async fn up(file: &str, json: bool) -> Result<i32> {
    let labs = match spec::load_file(std::path::Path::new(file), &HostLimits::detect()) {
        Ok(l) => l,
        Err(errs) => {
            eprintln!("{errs}");
            bail!("{file}: {} problem(s); nothing was started", errs.0.len());
        }
    };
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let accel = std::env::var("KOBAKO_ACCEL").unwrap_or_else(|_| "auto".into());
    let resolve = move |vm: &spec::Vm, name: &str| {
        let args = RunArgs {
            kernel: vm.kernel.clone(),
            image: vm.image.clone(),
            root: RootKind::Initramfs,
            vcpus: vm.vcpus,
            memory: format!("{}M", vm.memory.0),
            cmdline: String::new(),
            name: Some(name.to_string()),
            detach: true,
            accel: accel.clone(),
            timeout: 120,
            json: false,
        };
        config_from(&args)
            .map(|(cfg, _)| cfg)
            .map_err(|e| format!("{e:#}"))
    };
    let mut code = 0;
    for lab in labs {
        eprintln!("lab {}: up", lab.name.as_str());
        let report =
            controller::up(rt.clone(), &lab, Some(file.to_string()), &resolve, &Stderr).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{:<36} {:<8} {:>9}  ADDRESSES", "VM", "STATE", "BOOT");
            for v in &report.vms {
                println!(
                    "{:<36} {:<8} {:>9}  {}",
                    v.name,
                    v.state,
                    v.boot_ms.map(|b| format!("{b} ms")).unwrap_or("-".into()),
                    v.addresses.join(" ")
                );
                if let Some(e) = &v.error {
                    println!("    error: {e}");
                }
            }
            println!(
                "lab {}: {} of {} VMs ready in {} ms",
                report.lab,
                report.vms.iter().filter(|v| v.error.is_none()).count(),
                report.vms.len(),
                report.total_ms
            );
        }
        if !report.ok() {
            code = 1;
        }
    }
    Ok(code)
}

/// `kobako down NAME`.
pub async fn down(name: &str) -> Result<i32> {
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let n = controller::down(rt, name).await?;
    eprintln!("lab {name}: down ({n} VMs stopped, network removed)");
    Ok(0)
}

/// `kobako ls`.
pub fn ls(json: bool) -> Result<i32> {
    let labs = LabRecord::list();
    if json {
        let v: Vec<_> = labs
            .iter()
            .map(|l| {
                let running = l
                    .vms
                    .iter()
                    .filter(|n| kobako_runtime::VmDir::for_name(n).vm_pid().is_some())
                    .count();
                serde_json::json!({"name": l.name, "file": l.file, "vms": l.vms.len(), "running": running})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{:<24} {:>5} {:>8}  FILE", "LAB", "VMS", "RUNNING");
    for l in labs {
        let running = l
            .vms
            .iter()
            .filter(|n| kobako_runtime::VmDir::for_name(n).vm_pid().is_some())
            .count();
        println!(
            "{:<24} {:>5} {:>8}  {}",
            l.name,
            l.vms.len(),
            running,
            l.file.unwrap_or_default()
        );
    }
    Ok(0)
}

/// `kobako inspect NAME`.
pub fn inspect(name: &str, json: bool) -> Result<i32> {
    let Some(rec) = LabRecord::load(name) else {
        bail!("lab '{name}' is not up (see `kobako ls`)");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(0);
    }
    println!(
        "lab {} ({})",
        rec.name,
        rec.file.clone().unwrap_or_default()
    );
    for node in &rec.lab.nodes {
        println!("  node {}", node.name.as_str());
        for vm in &node.vms {
            let vname = controller::vm_name(&rec.lab, vm);
            let state = if kobako_runtime::VmDir::for_name(&vname).vm_pid().is_some() {
                "running"
            } else {
                "stopped"
            };
            println!(
                "    vm {} [{state}] {} vCPU, {} MiB, image {}",
                vm.id.vm.as_str(),
                vm.vcpus,
                vm.memory.0,
                vm.image
            );
            for i in &vm.interfaces {
                let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
                println!(
                    "      {} {:?} {}",
                    i.name.as_str(),
                    i.attach,
                    addrs.join(" ")
                );
            }
        }
    }
    for l in &rec.lab.links {
        println!("  link {} state {:?}", l.name.as_str(), l.state);
    }
    Ok(0)
}

/// `kobako link LAB LINK up|down`.
pub fn link(lab: &str, link: &str, state: &str) -> Result<i32> {
    let up = match state {
        "up" => true,
        "down" => false,
        other => bail!("link state '{other}': use up or down"),
    };
    controller::set_link_state(lab, link, up)?;
    eprintln!("lab {lab}: link {link} {state}");
    Ok(0)
}
