//! `kobako bench lab`: a generated lab of N tiny VMs through the real controller (`up` to every
//! VM ready and configured, then `down`), with its CPU-bound floor measured in the same run.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use kobako_lab::controller::{self, Quiet};
use kobako_lab::spec::{self, HostLimits};
use kobako_runtime::{group, Runtime, VmDir};

use crate::vm_cmd::runtime;

#[derive(Args)]
pub struct BenchLabArgs {
    /// VMs in the lab.
    #[arg(long, default_value_t = 50)]
    pub vms: usize,
    /// VMs per node (each node gets its node network).
    #[arg(long, default_value_t = 5)]
    pub per_node: usize,
    #[arg(long, default_value = "128M")]
    pub memory: String,
    #[arg(long)]
    pub json: bool,
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The lab file: `ceil(vms / per_node)` nodes named n0, n1, ... of VMs v0, v1, ...
fn lab_yaml(name: &str, vms: usize, per_node: usize, memory: &str) -> String {
    let mut y =
        format!("name: {name}\ndefaults: {{ image: tiny, vcpus: 1, memory: {memory} }}\nnodes:\n");
    let mut left = vms;
    let mut n = 0;
    while left > 0 {
        let k = left.min(per_node);
        y.push_str(&format!("  n{n}:\n    vms:\n"));
        for v in 0..k {
            y.push_str(&format!("      v{v}: {{}}\n"));
        }
        left -= k;
        n += 1;
    }
    y
}

pub async fn lab(a: BenchLabArgs) -> Result<i32> {
    if a.vms == 0 || a.per_node == 0 {
        bail!("--vms and --per-node must be at least 1");
    }
    let name = format!("bench{}", std::process::id() % 100_000);
    let text = lab_yaml(&name, a.vms, a.per_node, &a.memory);
    let labs = spec::load_str("bench-lab.yaml", &text, &HostLimits::detect())
        .map_err(|e| anyhow::anyhow!("generated lab file is invalid (a kobako bug): {e}"))?;
    let lab = labs
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no lab"))?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let cores = kobako_runtime::host::cpus();
    eprintln!(
        "bench lab: {} tiny VMs ({} per node), {} each, {cores} cores",
        a.vms, a.per_node, a.memory
    );
    let avail_before = mem_available_kib();
    let boot = crate::config::boot_settings()?;
    let t0 = Instant::now();
    let report = controller::up(rt.clone(), &lab, None, None, &boot, &Quiet).await;
    let up_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = controller::down(rt.clone(), &name).await;
            return Err(e.into());
        }
    };
    // While everything runs: memory of the VM processes and their supervisors, the CPU they
    // used to get here (the floor: that much work ÷ cores), and what the host lost.
    let dirs: Vec<VmDir> = report
        .vms
        .iter()
        .map(|v| VmDir::for_name(&v.name))
        .collect();
    let mut rss_kib = 0u64;
    let mut cpu_ms = 0f64;
    // Proportional set size of the VM processes alone (shared pages split between them: warm
    // clones map one snapshot's RAM), against the guest memory they were given.
    let (mut vm_pss_kib, mut guest_kib) = (0u64, 0u64);
    for d in &dirs {
        if let Some(pid) = d.vm_pid() {
            vm_pss_kib += group::pss_kib(pid).unwrap_or(0);
        }
        if let Ok(c) = d.config() {
            guest_kib += u64::from(c.memory_mib) * 1024;
        }
        for pid in [d.vm_pid(), d.supervisor_pid()].into_iter().flatten() {
            rss_kib += group::rss_kib(pid).unwrap_or(0);
            cpu_ms += group::cpu_time(pid).unwrap_or_default().as_secs_f64() * 1000.0;
        }
    }
    let pss_ratio = vm_pss_kib as f64 / guest_kib.max(1) as f64;
    let warm = report.vms.iter().filter(|v| v.warm).count();
    let host_used_mib = avail_before.saturating_sub(mem_available_kib()) as f64 / 1024.0;
    let failed = report.vms.iter().filter(|v| v.error.is_some()).count();
    for v in report.vms.iter().filter(|v| v.error.is_some()).take(3) {
        eprintln!("  {} failed: {}", v.name, v.error.as_deref().unwrap_or(""));
    }
    let t1 = Instant::now();
    let stopped = controller::down(rt, &name).await?;
    let down_ms = t1.elapsed().as_secs_f64() * 1000.0;
    let floor = cpu_ms / cores as f64;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "vms": a.vms, "per_node": a.per_node, "cores": cores, "failed": failed,
                "up_ms": up_ms, "down_ms": down_ms, "stopped": stopped,
                "rss_mib": rss_kib as f64 / 1024.0, "host_memory_used_mib": host_used_mib,
                "warm": warm, "vm_pss_mib": vm_pss_kib as f64 / 1024.0,
                "guest_memory_mib": guest_kib as f64 / 1024.0, "pss_to_guest_memory": pss_ratio,
                "boot_cpu_ms_total": cpu_ms, "cpu_floor_ms": floor, "ratio_to_floor": up_ms / floor,
            })
        );
    } else {
        println!(
            "up: {} of {} VMs ready and configured in {up_ms:.0} ms ({:.0} ms per VM)",
            a.vms - failed,
            a.vms,
            up_ms / a.vms as f64
        );
        println!(
            "CPU used by the VMs to get there: {cpu_ms:.0} ms; floor on {cores} cores {floor:.0} ms; ratio {:.2}",
            up_ms / floor
        );
        println!(
            "memory while up: VM processes + supervisors RSS {:.0} MiB ({:.1} MiB per VM); host MemAvailable dropped {host_used_mib:.0} MiB",
            rss_kib as f64 / 1024.0,
            rss_kib as f64 / 1024.0 / a.vms as f64
        );
        println!(
            "VM processes' PSS {:.0} MiB for {:.0} MiB of guest memory: ratio {pss_ratio:.3} ({warm} of {} VMs warm clones)",
            vm_pss_kib as f64 / 1024.0,
            guest_kib as f64 / 1024.0,
            a.vms
        );
        println!("down: {stopped} VMs stopped, network and state removed in {down_ms:.0} ms");
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
