//! `kobako bench snapshot`: cold boot against warm clone, measured in one run on this machine.
//!
//! 1. One tiny VM to agent ready: cold boot vs clone of its warm snapshot (restore + identity).
//! 2. A 5-VM node through `up` (ready and configured): all cold vs all warm clones.
//! 3. `fn invoke` of a trivial handler (`cat`): sequential, and 10 at a time.
//!
//! Each figure is a median over `--runs` (the warm snapshots are built before timing); the
//! machine's load average is printed before and after, since everything here shares the CPUs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use kobako_lab::controller::{self, warm, Quiet};
use kobako_lab::functions::{self, Function};
use kobako_lab::spec::{self, HostLimits};
use kobako_runtime::Runtime;

use crate::lab_cmd::resolver;
use crate::resolve::RootKind;
use crate::vm_cmd::{config_from, runtime, RunArgs};

#[derive(Args)]
pub struct BenchSnapArgs {
    /// Runs of each cold/warm measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// VMs in the node measurement.
    #[arg(long, default_value_t = 5)]
    pub node_vms: usize,
    /// Sequential `fn invoke`s (and as many again, 10 at a time).
    #[arg(long, default_value_t = 20)]
    pub invocations: usize,
    #[arg(long, default_value = "128M")]
    pub memory: String,
    #[arg(long)]
    pub json: bool,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub async fn snapshot(a: BenchSnapArgs) -> Result<i32> {
    if a.runs == 0 || a.node_vms == 0 || a.invocations == 0 {
        bail!("--runs, --node-vms and --invocations must be at least 1");
    }
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    // The same runtime with the VM process's jail off: what the jail costs a clone.
    let open: Arc<dyn Runtime> = Arc::new({
        let mut r = runtime()?;
        r.jail.enabled = false;
        r
    });
    let cores = kobako_runtime::host::cpus();
    let load_before = loadavg();
    let tag = std::process::id() % 100_000;
    eprintln!(
        "bench snapshot: {} runs, tiny VMs of {}, {cores} cores, load {load_before}",
        a.runs, a.memory
    );

    // 1. One VM: cold boot vs warm clone, to agent ready.
    let args = |name: String| RunArgs {
        kernel: "default".into(),
        image: "tiny".into(),
        root: RootKind::Initramfs,
        vcpus: 1,
        memory: a.memory.clone(),
        cmdline: String::new(),
        name: Some(name),
        detach: true,
        accel: std::env::var("KOBAKO_ACCEL").unwrap_or_else(|_| "auto".into()),
        timeout: 120,
        json: false,
        names_only: false,
        runtime: "qemu".into(),
    };
    let (base, _) = config_from(&args(format!("bsnap-{tag}")))?;
    eprintln!("building the warm snapshot (untimed)");
    let w = warm::ensure(&rt, &base)
        .await
        .map_err(|e| anyhow::anyhow!("warm snapshot: {e}"))?;
    let (mut cold, mut clone, mut clone_open) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.runs {
        let mut cfg = base.clone();
        cfg.name = format!("bsnap-{tag}-c{i}");
        let t = Instant::now();
        let vm = rt.create(&cfg).await?;
        rt.start(&vm).await?;
        let r = kobako_runtime::wait_ready(&vm, Duration::from_secs(120)).await;
        let el = ms(t);
        rt.kill(&vm).await?;
        r?;
        cold.push(el);
        cfg.name = format!("bsnap-{tag}-w{i}");
        let t = Instant::now();
        let (vm, _) = warm::clone(&rt, &w, &cfg)
            .await
            .map_err(|e| anyhow::anyhow!("clone: {e}"))?;
        let el = ms(t);
        rt.kill(&vm).await?;
        clone.push(el);
        cfg.name = format!("bsnap-{tag}-o{i}");
        let t = Instant::now();
        let (vm, _) = warm::clone(&open, &w, &cfg)
            .await
            .map_err(|e| anyhow::anyhow!("clone without the jail: {e}"))?;
        let el_open = ms(t);
        open.kill(&vm).await?;
        clone_open.push(el_open);
        eprintln!(
            "  run {i}: cold {:.0} ms, warm clone {:.0} ms, warm clone jail off {:.0} ms",
            cold[i], el, el_open
        );
    }
    let (vm_cold, vm_warm) = (median(&cold), median(&clone));
    let vm_warm_open = median(&clone_open);

    // 2. A node of N VMs through `up`, cold vs warm.
    let name = format!("bsnap{tag}");
    let mut y = format!(
        "name: {name}\ndefaults: {{ image: tiny, vcpus: 1, memory: {} }}\nnodes:\n  n:\n    vms:\n",
        a.memory
    );
    for v in 0..a.node_vms {
        y.push_str(&format!("      v{v}: {{}}\n"));
    }
    let lab = spec::load_str("bench-snapshot.yaml", &y, &HostLimits::detect())
        .map_err(|e| anyhow::anyhow!("generated lab file is invalid (a kobako bug): {e}"))?
        .into_iter()
        .next()
        .context("no lab")?;
    let resolve = resolver();
    let up = |warm_on: bool| {
        let rt = rt.clone();
        let lab = lab.clone();
        let resolve = &resolve;
        let name = name.clone();
        async move {
            // KOBAKO_WARM=0 (the setting at start) still wins.
            let configured = warm::enabled();
            warm::set_enabled(warm_on && configured);
            let t = Instant::now();
            let r = controller::up(rt.clone(), &lab, None, None, resolve, &Quiet).await;
            let el = ms(t);
            let _ = controller::down(rt, &name).await;
            warm::set_enabled(configured);
            let r = r?;
            if !r.ok() {
                bail!(
                    "up failed: {:?}",
                    r.vms.iter().find_map(|v| v.error.clone())
                );
            }
            if r.vms.iter().any(|v| v.warm != warm_on) {
                bail!(
                    "up did not {} every VM",
                    if warm_on { "clone" } else { "boot" }
                );
            }
            Ok::<f64, anyhow::Error>(el)
        }
    };
    eprintln!(
        "node of {}: building its warm snapshot (untimed)",
        a.node_vms
    );
    up(true).await?;
    let (mut ncold, mut nwarm) = (Vec::new(), Vec::new());
    for i in 0..a.runs {
        ncold.push(up(false).await?);
        nwarm.push(up(true).await?);
        eprintln!(
            "  run {i}: up cold {:.0} ms, up warm {:.0} ms",
            ncold[i], nwarm[i]
        );
    }
    let (node_cold, node_warm) = (median(&ncold), median(&nwarm));

    // 3. fn invoke of a trivial handler.
    let fname = format!("bench-{tag}");
    let (fcfg, _) = config_from(&args(format!("fn-{fname}-warm")))?;
    let f = Function {
        name: fname.clone(),
        owner: None,
        image: "tiny".into(),
        memory_mib: fcfg.memory_mib,
        run: "cat".into(),
        timeout_secs: 30,
        concurrency: 10,
        deployed_ms: 0,
        boot_ms: 0,
        snapshot_bytes: 0,
    };
    eprintln!("fn: deploying a `cat` handler (untimed)");
    functions::deploy(rt.clone(), f, fcfg, &Quiet).await?;
    let res = async {
        let mut seq = Vec::new();
        for _ in 0..a.invocations {
            let t = Instant::now();
            let inv = functions::invoke(rt.clone(), &fname, b"ping".to_vec()).await?;
            if inv.stdout != b"ping" {
                bail!(
                    "fn invoke answered {:?}",
                    String::from_utf8_lossy(&inv.stdout)
                );
            }
            seq.push(ms(t));
        }
        let mut conc = Vec::new();
        let t_all = Instant::now();
        let mut left = a.invocations;
        while left > 0 {
            let k = left.min(10);
            let hs: Vec<_> = (0..k)
                .map(|_| {
                    let rt = rt.clone();
                    let fname = fname.clone();
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let inv = functions::invoke(rt, &fname, b"ping".to_vec()).await;
                        (ms(t), inv.map(|i| i.stdout == b"ping"))
                    })
                })
                .collect();
            for h in hs {
                let (el, r) = h.await?;
                if !r? {
                    bail!("a concurrent invocation answered wrong");
                }
                conc.push(el);
            }
            left -= k;
        }
        Ok::<_, anyhow::Error>((seq, conc, ms(t_all)))
    }
    .await;
    let _ = functions::remove(&fname);
    let (seq, conc, conc_wall) = res?;
    let load_after = loadavg();

    let r1 = vm_warm / vm_cold;
    let r2 = node_warm / node_cold;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "cores": cores, "load_before": load_before, "load_after": load_after,
                "runs": a.runs, "memory": a.memory,
                "vm": {"cold_ms": vm_cold, "warm_clone_ms": vm_warm, "ratio": r1,
                       "cold_runs": cold, "warm_runs": clone,
                       "warm_clone_jail_off_ms": vm_warm_open,
                       "jail_ratio": vm_warm / vm_warm_open},
                "node": {"vms": a.node_vms, "cold_ms": node_cold, "warm_ms": node_warm, "ratio": r2,
                         "cold_runs": ncold, "warm_runs": nwarm},
                "fn_invoke": {
                    "sequential": {"n": seq.len(), "p50_ms": percentile(&seq, 50.0), "p99_ms": percentile(&seq, 99.0)},
                    "concurrent10": {"n": conc.len(), "p50_ms": percentile(&conc, 50.0), "p99_ms": percentile(&conc, 99.0),
                                     "wall_ms": conc_wall, "per_s": conc.len() as f64 / (conc_wall / 1000.0)},
                },
                "warm_snapshot_mib": dir_mib(&w.snap()),
            })
        );
    } else {
        println!(
            "one VM to agent ready: cold {vm_cold:.0} ms, warm clone {vm_warm:.0} ms (restore + identity): {r1:.2}x (goal <= 0.35x)"
        );
        println!(
            "warm clone with the jail off: {vm_warm_open:.0} ms: jail on / off {:.3} (goal <= 1.05)",
            vm_warm / vm_warm_open
        );
        println!(
            "node of {} VMs, `up` to ready and configured: cold {node_cold:.0} ms, warm clones {node_warm:.0} ms: {r2:.2}x (goal <= 0.4x)",
            a.node_vms
        );
        println!(
            "fn invoke (`cat`), sequential x{}: p50 {:.0} ms, p99 {:.0} ms",
            seq.len(),
            percentile(&seq, 50.0),
            percentile(&seq, 99.0)
        );
        println!(
            "fn invoke, 10 concurrent x{}: p50 {:.0} ms, p99 {:.0} ms ({:.1} invocations/s)",
            conc.len(),
            percentile(&conc, 50.0),
            percentile(&conc, 99.0),
            conc.len() as f64 / (conc_wall / 1000.0)
        );
        println!(
            "warm snapshot {:.0} MiB; {cores} cores, load average before {load_before}, after {load_after}",
            dir_mib(&w.snap())
        );
    }
    Ok(0)
}

fn dir_mib(p: &std::path::Path) -> f64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum::<u64>()
        })
        .unwrap_or(0) as f64
        / 1048576.0
}
