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
use kobako_lab::spec::{self, HostLimits, Lab};
use kobako_runtime::config::VmConfig;
use kobako_runtime::Runtime;

use crate::vm_cmd::{config_from, runtime, RunArgs};
use kobako_boot::RootKind;

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
    let (vm, w) = bench_one_vm(&a, &rt, &open, tag).await?;
    let node = bench_node(&a, &rt, tag).await?;
    let fns = bench_fn_invoke(&a, &rt, tag).await?;
    let load_after = loadavg();
    let host = Host {
        cores,
        load_before,
        load_after,
        warm_snapshot_mib: dir_mib(&w.snap()),
    };
    if a.json {
        print_json(&a, &host, &vm, &node, &fns);
    } else {
        print_text(&a, &host, &vm, &node, &fns);
    }
    Ok(0)
}

/// The machine the figures were taken on, and the size of the one-VM warm snapshot.
struct Host {
    cores: u32,
    load_before: String,
    load_after: String,
    warm_snapshot_mib: f64,
}

/// Measurement 1: per-run times of one VM to agent ready.
struct VmTimes {
    cold: Vec<f64>,
    clone: Vec<f64>,
    clone_open: Vec<f64>,
}

/// Measurement 2: per-run times of `up` of the node, cold and warm.
struct NodeTimes {
    cold: Vec<f64>,
    warm: Vec<f64>,
}

/// Measurement 3: `fn invoke` latencies, sequential and 10 at a time, and the concurrent wall time.
struct FnTimes {
    seq: Vec<f64>,
    conc: Vec<f64>,
    conc_wall: f64,
}

/// The `vm run` arguments of one tiny detached VM called `name`.
fn tiny_vm_args(a: &BenchSnapArgs, name: String) -> Result<RunArgs> {
    Ok(RunArgs {
        kernel: "default".into(),
        image: "tiny".into(),
        root: RootKind::Initramfs,
        vcpus: 1,
        memory: a.memory.clone(),
        cmdline: String::new(),
        name: Some(name),
        detach: true,
        accel: crate::config::boot_settings()?.accel,
        timeout: 120,
        json: false,
        names_only: false,
        runtime: "qemu".into(),
        vmm_bin: None,
    })
}

/// Measurement 1, one VM: cold boot vs warm clone (jail on and off), to agent ready. Also returns the
/// warm snapshot, whose size is reported.
async fn bench_one_vm(
    a: &BenchSnapArgs,
    rt: &Arc<dyn Runtime>,
    open: &Arc<dyn Runtime>,
    tag: u32,
) -> Result<(VmTimes, warm::Warm)> {
    let (base, _) = config_from(&tiny_vm_args(a, format!("bsnap-{tag}"))?)?;
    eprintln!("building the warm snapshot (untimed)");
    let w = warm::ensure(rt, &base)
        .await
        .map_err(|e| anyhow::anyhow!("warm snapshot: {e}"))?;
    let mut t = VmTimes {
        cold: Vec::new(),
        clone: Vec::new(),
        clone_open: Vec::new(),
    };
    for i in 0..a.runs {
        let mut cfg = base.clone();
        cfg.name = format!("bsnap-{tag}-c{i}");
        t.cold.push(cold_boot(rt, &cfg).await?);
        cfg.name = format!("bsnap-{tag}-w{i}");
        let el = warm_clone(rt, &w, &cfg, "clone").await?;
        t.clone.push(el);
        cfg.name = format!("bsnap-{tag}-o{i}");
        let el_open = warm_clone(open, &w, &cfg, "clone without the jail").await?;
        t.clone_open.push(el_open);
        eprintln!(
            "  run {i}: cold {:.0} ms, warm clone {:.0} ms, warm clone jail off {:.0} ms",
            t.cold[i], el, el_open
        );
    }
    Ok((t, w))
}

/// Milliseconds from create to agent ready of a cold boot of `cfg`; the VM is killed after.
async fn cold_boot(rt: &Arc<dyn Runtime>, cfg: &VmConfig) -> Result<f64> {
    let t = Instant::now();
    let vm = rt.create(cfg).await?;
    rt.start(&vm).await?;
    let r = kobako_runtime::wait_ready(&vm, Duration::from_secs(120)).await;
    let el = ms(t);
    rt.kill(&vm).await?;
    r?;
    Ok(el)
}

/// Milliseconds of a clone of `w` as `cfg` (restore + identity); the clone is killed after.
/// A failure reads "`what`: error".
async fn warm_clone(
    rt: &Arc<dyn Runtime>,
    w: &warm::Warm,
    cfg: &VmConfig,
    what: &str,
) -> Result<f64> {
    let t = Instant::now();
    let (vm, _) = warm::clone(rt, w, cfg)
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let el = ms(t);
    rt.kill(&vm).await?;
    Ok(el)
}

/// Measurement 2, a node of `--node-vms` VMs through `up`, cold vs warm (after one untimed warm `up` that
/// builds the node's warm snapshot).
async fn bench_node(a: &BenchSnapArgs, rt: &Arc<dyn Runtime>, tag: u32) -> Result<NodeTimes> {
    let name = format!("bsnap{tag}");
    let lab = node_lab(a, &name)?;
    let boot = crate::config::boot_settings()?;
    eprintln!(
        "node of {}: building its warm snapshot (untimed)",
        a.node_vms
    );
    timed_up(rt, &lab, &boot, &name, true).await?;
    let mut t = NodeTimes {
        cold: Vec::new(),
        warm: Vec::new(),
    };
    for i in 0..a.runs {
        t.cold.push(timed_up(rt, &lab, &boot, &name, false).await?);
        t.warm.push(timed_up(rt, &lab, &boot, &name, true).await?);
        eprintln!(
            "  run {i}: up cold {:.0} ms, up warm {:.0} ms",
            t.cold[i], t.warm[i]
        );
    }
    Ok(t)
}

/// The generated lab `name`: one node `n` of `--node-vms` tiny VMs.
fn node_lab(a: &BenchSnapArgs, name: &str) -> Result<Lab> {
    let mut y = format!(
        "name: {name}\ndefaults: {{ image: tiny, vcpus: 1, memory: {} }}\nnodes:\n  n:\n    vms:\n",
        a.memory
    );
    for v in 0..a.node_vms {
        y.push_str(&format!("      v{v}: {{}}\n"));
    }
    spec::load_str("bench-snapshot.yaml", &y, &HostLimits::detect())
        .map_err(|e| anyhow::anyhow!("generated lab file is invalid (a kobako bug): {e}"))?
        .into_iter()
        .next()
        .context("no lab")
}

/// Milliseconds of one `up` of `lab` with warm clones on or off (then `down`); fails unless
/// every VM came up, and came up the way asked.
async fn timed_up(
    rt: &Arc<dyn Runtime>,
    lab: &Lab,
    boot: &controller::BootSettings,
    name: &str,
    warm_on: bool,
) -> Result<f64> {
    // KOBAKO_WARM=0 (the setting at start) still wins.
    let boot = controller::BootSettings {
        warm: warm_on && boot.warm,
        ..boot.clone()
    };
    let t = Instant::now();
    let r = controller::up(rt.clone(), lab, None, None, &boot, &Quiet).await;
    let el = ms(t);
    let _ = controller::down(rt.clone(), name).await;
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
    Ok(el)
}

/// Measurement 3, `fn invoke` of a trivial `cat` handler: deployed untimed, invoked, then removed
/// (whatever the invocations did).
async fn bench_fn_invoke(a: &BenchSnapArgs, rt: &Arc<dyn Runtime>, tag: u32) -> Result<FnTimes> {
    let fname = format!("bench-{tag}");
    let (fcfg, _) = config_from(&tiny_vm_args(a, format!("fn-{fname}-warm"))?)?;
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
        let seq = invoke_sequential(rt, &fname, a.invocations).await?;
        let (conc, conc_wall) = invoke_concurrent(rt, &fname, a.invocations).await?;
        Ok::<_, anyhow::Error>(FnTimes {
            seq,
            conc,
            conc_wall,
        })
    }
    .await;
    let _ = functions::remove(&fname);
    res
}

/// `n` invocations of `fname` one after another, each checked to echo "ping".
async fn invoke_sequential(rt: &Arc<dyn Runtime>, fname: &str, n: usize) -> Result<Vec<f64>> {
    let mut seq = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let inv = functions::invoke(rt.clone(), fname, b"ping".to_vec()).await?;
        if inv.stdout != b"ping" {
            bail!(
                "fn invoke answered {:?}",
                String::from_utf8_lossy(&inv.stdout)
            );
        }
        seq.push(ms(t));
    }
    Ok(seq)
}

/// `n` invocations of `fname`, 10 at a time: each one's latency and the wall time of all.
async fn invoke_concurrent(
    rt: &Arc<dyn Runtime>,
    fname: &str,
    n: usize,
) -> Result<(Vec<f64>, f64)> {
    let mut conc = Vec::new();
    let t_all = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(10);
        let hs: Vec<_> = (0..k)
            .map(|_| {
                let rt = rt.clone();
                let fname = fname.to_string();
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
    Ok((conc, ms(t_all)))
}

fn print_json(a: &BenchSnapArgs, h: &Host, vm: &VmTimes, node: &NodeTimes, f: &FnTimes) {
    let (vm_cold, vm_warm) = (median(&vm.cold), median(&vm.clone));
    let vm_warm_open = median(&vm.clone_open);
    let (node_cold, node_warm) = (median(&node.cold), median(&node.warm));
    let (seq, conc, conc_wall) = (&f.seq, &f.conc, f.conc_wall);
    println!(
        "{}",
        serde_json::json!({
            "cores": h.cores, "load_before": h.load_before, "load_after": h.load_after,
            "runs": a.runs, "memory": a.memory,
            "vm": {"cold_ms": vm_cold, "warm_clone_ms": vm_warm, "ratio": vm_warm / vm_cold,
                   "cold_runs": vm.cold, "warm_runs": vm.clone,
                   "warm_clone_jail_off_ms": vm_warm_open,
                   "jail_ratio": vm_warm / vm_warm_open},
            "node": {"vms": a.node_vms, "cold_ms": node_cold, "warm_ms": node_warm,
                     "ratio": node_warm / node_cold,
                     "cold_runs": node.cold, "warm_runs": node.warm},
            "fn_invoke": {
                "sequential": {"n": seq.len(), "p50_ms": percentile(seq, 50.0), "p99_ms": percentile(seq, 99.0)},
                "concurrent10": {"n": conc.len(), "p50_ms": percentile(conc, 50.0), "p99_ms": percentile(conc, 99.0),
                                 "wall_ms": conc_wall, "per_s": conc.len() as f64 / (conc_wall / 1000.0)},
            },
            "warm_snapshot_mib": h.warm_snapshot_mib,
        })
    );
}

fn print_text(a: &BenchSnapArgs, h: &Host, vm: &VmTimes, node: &NodeTimes, f: &FnTimes) {
    let (vm_cold, vm_warm) = (median(&vm.cold), median(&vm.clone));
    let vm_warm_open = median(&vm.clone_open);
    let (node_cold, node_warm) = (median(&node.cold), median(&node.warm));
    let (r1, r2) = (vm_warm / vm_cold, node_warm / node_cold);
    let (seq, conc, conc_wall) = (&f.seq, &f.conc, f.conc_wall);
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
        percentile(seq, 50.0),
        percentile(seq, 99.0)
    );
    println!(
        "fn invoke, 10 concurrent x{}: p50 {:.0} ms, p99 {:.0} ms ({:.1} invocations/s)",
        conc.len(),
        percentile(conc, 50.0),
        percentile(conc, 99.0),
        conc.len() as f64 / (conc_wall / 1000.0)
    );
    println!(
        "warm snapshot {:.0} MiB; {} cores, load average before {}, after {}",
        h.warm_snapshot_mib, h.cores, h.load_before, h.load_after
    );
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
