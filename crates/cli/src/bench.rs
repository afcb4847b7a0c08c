//! `kobako bench boot`: time to agent-ready through kobako, side by side with raw
//! `qemu-system-x86_64` booting the same kernel and initramfs to a console marker, in the same run
//! (interleaved, so both see the same machine load).
//!
//! - kobako: from `Runtime::start` (spawning the supervisor) to the agent's Ready arriving through
//!   `agent.sock` — everything a user waits for.
//! - raw QEMU: from spawning QEMU (same machine type, same kernel, initramfs, vCPUs, memory,
//!   accelerator) with `-serial stdio` to the agent printing `KOBAKO-BOOT-MARKER` on the console
//!   right after its init work (`kobako.marker=poweroff`); no agent channel, no QMP, no supervisor.
//!
//! - kobako, jail off: the same as the first with the VM process's jail turned off
//!   (`KOBAKO_JAIL=off`), to show what the jail costs (issue 18: at most 5 %).
//!
//! Max RSS is the VM process's peak resident set (wait4), for all.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use kobako_runtime::config::{Root, VmConfig};
use kobako_runtime::Runtime;

use crate::vm_cmd::{config_from, runtime, RunArgs};
use kobako_boot::RootKind;

#[derive(Args)]
pub struct BenchBootArgs {
    /// Runs of each kind.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    #[arg(long, default_value = "128M")]
    pub memory: String,
    #[arg(long, env = "KOBAKO_ACCEL", default_value = "auto")]
    pub accel: kobako_boot::AccelMode,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Sample {
    ms: f64,
    rss_kib: u64,
}

fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    let mean = s.iter().sum::<f64>() / n as f64;
    let sd = (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    (median, s[0], s[n - 1], sd)
}

pub async fn boot(a: BenchBootArgs) -> Result<i32> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let run_args = RunArgs {
        kernel: "default".into(),
        image: "tiny".into(),
        root: RootKind::Initramfs,
        vcpus: a.vcpus,
        memory: a.memory.clone(),
        cmdline: String::new(),
        name: Some(format!("bench-{}", std::process::id())),
        detach: true,
        accel: a.accel,
        timeout: 60,
        json: false,
        names_only: false,
        // This benchmark compares kobako on QEMU with raw QEMU.
        runtime: "qemu".into(),
        vmm_bin: None,
    };
    let (base, why) = config_from(&run_args)?;
    eprintln!(
        "bench boot: {} runs each, {} vCPU, {} MiB, accel {} ({why})",
        a.runs, base.vcpus, base.memory_mib, base.accel
    );
    let rt = runtime()?;
    let mut open = runtime()?;
    open.jail.enabled = false;
    let mut kobako = Vec::new();
    let mut unjailed = Vec::new();
    let mut raw = Vec::new();
    for i in 0..a.runs {
        raw.push(raw_qemu(&rt, &base).with_context(|| format!("raw QEMU run {i}"))?);
        let cfg = VmConfig {
            name: format!("bench-{}-{i}", std::process::id()),
            ..base.clone()
        };
        kobako.push(
            kobako_run(&rt, &cfg)
                .await
                .with_context(|| format!("kobako run {i}"))?,
        );
        unjailed.push(
            kobako_run(&open, &cfg)
                .await
                .with_context(|| format!("kobako run {i} without the jail"))?,
        );
        eprintln!(
            "  run {i:>2}: kobako {:>7.1} ms   jail off {:>7.1} ms   raw qemu {:>7.1} ms",
            kobako[i].ms, unjailed[i].ms, raw[i].ms
        );
    }
    let u: Vec<f64> = unjailed.iter().map(|s| s.ms).collect();
    let ur: Vec<f64> = unjailed.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
    let (um, umin, umax, usd) = stats(&u);
    let k: Vec<f64> = kobako.iter().map(|s| s.ms).collect();
    let r: Vec<f64> = raw.iter().map(|s| s.ms).collect();
    let kr: Vec<f64> = kobako.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
    let rr: Vec<f64> = raw.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
    let (km, kmin, kmax, ksd) = stats(&k);
    let (rm, rmin, rmax, rsd) = stats(&r);
    let ratio = km / rm;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "runs": a.runs, "vcpus": base.vcpus, "memory_mib": base.memory_mib,
                "accel": base.accel,
                "kobako_ms": {"median": km, "min": kmin, "max": kmax, "sd": ksd},
                "raw_qemu_ms": {"median": rm, "min": rmin, "max": rmax, "sd": rsd},
                "ratio": ratio,
                "kobako_jail_off_ms": {"median": um, "min": umin, "max": umax, "sd": usd},
                "jail_ratio": km / um,
                "kobako_max_rss_mib_median": stats(&kr).0,
                "kobako_jail_off_max_rss_mib_median": stats(&ur).0,
                "raw_qemu_max_rss_mib_median": stats(&rr).0,
            })
        );
    } else {
        println!("time to ready, {} runs each (ms)", a.runs);
        println!(
            "{:<28} {:>8} {:>8} {:>8} {:>8} {:>14}",
            "", "median", "min", "max", "stddev", "max RSS (MiB)"
        );
        println!(
            "{:<28} {km:>8.1} {kmin:>8.1} {kmax:>8.1} {ksd:>8.1} {:>14.1}",
            "kobako (agent ready)",
            stats(&kr).0
        );
        println!(
            "{:<28} {um:>8.1} {umin:>8.1} {umax:>8.1} {usd:>8.1} {:>14.1}",
            "kobako, jail off",
            stats(&ur).0
        );
        println!(
            "{:<28} {rm:>8.1} {rmin:>8.1} {rmax:>8.1} {rsd:>8.1} {:>14.1}",
            "raw qemu (console marker)",
            stats(&rr).0
        );
        println!("ratio kobako / raw qemu (median): {ratio:.3}");
        println!("ratio jail on / jail off (median): {:.3}", km / um);
    }
    Ok(0)
}

async fn kobako_run(rt: &kobako_runtime::qemu::QemuRuntime, cfg: &VmConfig) -> Result<Sample> {
    let vm = rt.create(cfg).await?;
    vm.attach()?;
    let t0 = Instant::now();
    rt.start(&vm).await?;
    let r = kobako_runtime::wait_ready(&vm, Duration::from_secs(60)).await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let (client, _) = match r {
        Ok(r) => r,
        Err(e) => {
            let _ = rt.kill(&vm).await;
            return Err(e.into());
        }
    };
    client.shutdown(false).await?;
    // Wait for the supervisor's exit record (it keeps the dir: we are attached).
    let deadline = Instant::now() + Duration::from_secs(20);
    while vm.exit().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss = vm.exit().map(|e| e.max_rss_kib).unwrap_or(0);
    rt.kill(&vm).await?;
    Ok(Sample { ms, rss_kib: rss })
}

fn raw_qemu(rt: &kobako_runtime::qemu::QemuRuntime, cfg: &VmConfig) -> Result<Sample> {
    let Root::Initramfs { path: initrd } = &cfg.root else {
        bail!("the boot benchmark uses an initramfs root");
    };
    let mut argv = rt.machine_argv(cfg);
    // The same command line kobako uses, plus the marker switch (and no console shell).
    let cmdline = format!(
        "{} kobako.marker=poweroff kobako.console=off",
        cfg.cmdline()
    );
    argv.extend([
        "-kernel".into(),
        cfg.kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        cmdline,
        "-serial".into(),
        "stdio".into(),
    ]);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: prctl between fork and exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("start qemu-system-x86_64")?;
    let pid = child.id() as i32;
    // Never hang: kill QEMU if it has not ended after 60 s.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            // SAFETY: kill(2) of our own child, not yet waited for (no pid reuse possible).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut out = child.stdout.take().context("qemu stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut ms = None;
    loop {
        let n = out.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if ms.is_none() && seen.windows(18).any(|w| w == b"KOBAKO-BOOT-MARKER") {
            ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut status = 0;
    // SAFETY: rusage is plain data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; valid pointers.
    unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let _ = done_tx.send(());
    drop(child);
    let Some(ms) = ms else {
        bail!(
            "raw QEMU never printed the marker; console:\n{}",
            String::from_utf8_lossy(&seen)
        );
    };
    Ok(Sample {
        ms,
        rss_kib: ru.ru_maxrss as u64,
    })
}

#[derive(Args)]
pub struct BenchNodeArgs {
    /// VMs in the node.
    #[arg(long, default_value_t = 5)]
    pub vms: usize,
    /// Repetitions (of the single-VM reference and of the node).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long, default_value = "128M")]
    pub memory: String,
    #[arg(long, env = "KOBAKO_ACCEL", default_value = "auto")]
    pub accel: kobako_boot::AccelMode,
    #[arg(long)]
    pub json: bool,
}

/// `kobako bench node`: N tiny VMs started together, from start to all agents ready, against the
/// CPU-bound floor of this machine (N × one VM's boot CPU time ÷ cores): under TCG a boot is CPU
/// work, so no scheduler can beat that floor.
pub async fn node(a: BenchNodeArgs) -> Result<i32> {
    use kobako_runtime::group;
    use std::sync::Arc;
    if a.vms == 0 || a.runs == 0 {
        bail!("--vms and --runs must be at least 1");
    }
    let run_args = RunArgs {
        kernel: "default".into(),
        image: "tiny".into(),
        root: RootKind::Initramfs,
        vcpus: 1,
        memory: a.memory.clone(),
        cmdline: String::new(),
        name: Some(format!("benchnode-{}", std::process::id())),
        detach: true,
        accel: a.accel,
        timeout: 120,
        json: false,
        names_only: false,
        // The node benchmark measures the QEMU runtime.
        runtime: "qemu".into(),
        vmm_bin: None,
    };
    let (base, why) = config_from(&run_args)?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let cores = kobako_runtime::host::cpus();
    eprintln!(
        "bench node: {} VMs x {} runs, {} MiB each, accel {} ({why}), {cores} cores",
        a.vms, a.runs, base.memory_mib, base.accel
    );
    let cfg = |tag: &str, i: usize| VmConfig {
        name: format!("bn{}-{tag}-{i}", std::process::id()),
        ..base.clone()
    };
    // Reference: one VM alone; CPU used by its VM process and supervisor until ready.
    let mut single_cpu = Vec::new();
    let mut single_wall = Vec::new();
    for r in 0..a.runs {
        let res = group::start_all(rt.clone(), vec![cfg(&format!("s{r}"), 0)], 1).await;
        let s = res.into_iter().next().context("no result")??;
        let cpu = s.vm.vm_pid().and_then(group::cpu_time).unwrap_or_default()
            + s.vm
                .supervisor_pid()
                .and_then(group::cpu_time)
                .unwrap_or_default();
        single_cpu.push(cpu.as_secs_f64() * 1000.0);
        single_wall.push(s.ready_after.as_secs_f64() * 1000.0);
        rt.stop(&s.vm, Duration::from_secs(10)).await?;
    }
    let (cpu_med, ..) = stats(&single_cpu);
    let (wall_med, ..) = stats(&single_wall);
    let floor = a.vms as f64 * cpu_med / cores as f64;

    let mut node_wall = Vec::new();
    let mut node_down = Vec::new();
    let mut node_rss = Vec::new();
    for r in 0..a.runs {
        let cfgs = (0..a.vms).map(|i| cfg(&format!("n{r}"), i)).collect();
        let t0 = Instant::now();
        let res = group::start_all(rt.clone(), cfgs, group::default_parallelism()).await;
        let up = t0.elapsed();
        let mut started = Vec::new();
        let mut failed = Vec::new();
        for x in res {
            match x {
                Ok(s) => started.push(s),
                Err(e) => failed.push(e.to_string()),
            }
        }
        let rss: u64 = started
            .iter()
            .filter_map(|s| s.vm.vm_pid())
            .filter_map(group::rss_kib)
            .sum::<u64>()
            + started
                .iter()
                .filter_map(|s| s.vm.supervisor_pid())
                .filter_map(group::rss_kib)
                .sum::<u64>();
        let t1 = Instant::now();
        let stops: Vec<_> = started
            .iter()
            .map(|s| {
                let rt = rt.clone();
                let vm = s.vm.clone();
                tokio::spawn(async move { rt.stop(&vm, Duration::from_secs(10)).await })
            })
            .collect();
        for st in stops {
            st.await??;
        }
        let down = t1.elapsed();
        if !failed.is_empty() {
            bail!(
                "{} of {} VMs failed: {}",
                failed.len(),
                a.vms,
                failed.join("; ")
            );
        }
        eprintln!(
            "  run {r}: {} VMs ready in {:.0} ms, down in {:.0} ms, RSS {:.0} MiB",
            a.vms,
            up.as_secs_f64() * 1000.0,
            down.as_secs_f64() * 1000.0,
            rss as f64 / 1024.0
        );
        node_wall.push(up.as_secs_f64() * 1000.0);
        node_down.push(down.as_secs_f64() * 1000.0);
        node_rss.push(rss as f64 / 1024.0);
    }
    let (up_med, up_min, up_max, _) = stats(&node_wall);
    let (down_med, ..) = stats(&node_down);
    let (rss_med, ..) = stats(&node_rss);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "vms": a.vms, "runs": a.runs, "cores": cores, "accel": base.accel,
                "single_vm": {"ready_ms": wall_med, "boot_cpu_ms": cpu_med},
                "node": {"ready_ms_median": up_med, "min": up_min, "max": up_max,
                         "down_ms_median": down_med, "rss_mib_median": rss_med},
                "cpu_floor_ms": floor, "ratio_to_floor": up_med / floor,
            })
        );
    } else {
        println!("one VM alone: ready in {wall_med:.0} ms, boot CPU {cpu_med:.0} ms (median)");
        println!(
            "{} VMs together: all ready in {up_med:.0} ms (min {up_min:.0}, max {up_max:.0}), down in {down_med:.0} ms, peak RSS {rss_med:.0} MiB",
            a.vms
        );
        println!(
            "CPU-bound floor ({} x {cpu_med:.0} ms / {cores} cores): {floor:.0} ms; ratio {:.2}",
            a.vms,
            up_med / floor
        );
    }
    Ok(0)
}
