//! The slim-VMM comparison of the start-up benchmark (issue 19 item 4): the whole life of a
//! VMM process, measured with the rusage `wait4` returns for it.
//!
//! The guest is `byte64` (tests/guests/byte64.S): a 64-bit ELF (Linux 64-bit boot protocol)
//! that writes one byte to COM1 and resets through the i8042, so the process runs from exec
//! to exit code 80. 128 MiB, 1 vCPU, a config file, `--no-api`. Three binaries, interleaved
//! run by run: the slim `kobako-vmm` (profile `vmm`) with its seccomp filters, the same with
//! `--no-seccomp`, and `kobako vmm` of the big `kobako` binary (release) with its filters.
//!
//! Who counts the RSS: a child's `ru_maxrss` is the largest of the hiwater RSS of every
//! address space the process had, including the one it execs away from, i.e. its parent's when
//! it was vforked (posix_spawn) or a copy of it when forked; a Rust parent alone weighs 1-2.5
//! MiB, as much as the VMM. So no run is spawned by this benchmark process: each goes through
//! `launch64` (tests/guests/launch64.S), a one-page static program without libc that vforks,
//! execs the VMM, `wait4`s for it and writes the times and the rusage to a file. Wall time is
//! CLOCK_MONOTONIC around vfork and wait4 there.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{common, Stats};

/// Firecracker measured on this machine class without its seccomp filters (issue 19), the
/// reference of the targets below.
const FC_CPU_MS: f64 = 5.5;
const FC_RSS_MIB: f64 = 4.2;
/// The targets: 0.8x Firecracker, kobako's filters on.
const TARGET_CPU_MS: f64 = 4.4;
const TARGET_RSS_MIB: f64 = 3.4;

/// One run's figures.
struct Run {
    wall_ms: f64,
    cpu_ms: f64,
    rss_mib: f64,
}

/// Runs `prog ARGS --no-api --config-file CFG` under the launcher and reads what it wrote.
fn run_one(launcher: &Path, out: &Path, prog: &Path, args: &[&str], cfg: &Path) -> Run {
    let st = Command::new(launcher)
        .arg(out)
        .arg(prog)
        .args(args)
        .args(["--no-api", "--config-file"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "launcher: {st}");
    let b = std::fs::read(out).unwrap();
    assert_eq!(b.len(), 184, "launcher output");
    let q = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let status = i32::from_le_bytes(b[32..36].try_into().unwrap());
    assert_eq!(
        libc::WEXITSTATUS(status),
        kobako_vmm::EXIT_GUEST_RESET,
        "{} {args:?}: wait status {status:#x}",
        prog.display()
    );
    // struct rusage from +40: ru_utime, ru_stime (timevals), then ru_maxrss (KiB).
    let wall_ns = (q(16) - q(0)) * 1_000_000_000 + q(24) - q(8);
    let cpu_us = (q(40) + q(56)) * 1_000_000 + q(48) + q(64);
    Run {
        wall_ms: wall_ns as f64 / 1e6,
        cpu_ms: cpu_us as f64 / 1e3,
        rss_mib: q(72) as f64 / 1024.0,
    }
}

/// The workspace's target directory: this benchmark is target/<profile>/deps/startup-HASH.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Where scripts/build.sh builds the slim binary (profile `vmm`, static), under the target
/// directory; then the same without static linking.
const SLIM_PATHS: [&str; 2] = ["x86_64-unknown-linux-gnu/vmm/kobako-vmm", "vmm/kobako-vmm"];

/// Runs the comparison (`KOBAKO_BENCH_RUNS` runs of each binary, default 30). The binaries:
/// `KOBAKO_VMM_SLIM` (default: the first of [`SLIM_PATHS`] there) and `KOBAKO_BIG` (default
/// target/release/kobako); when one is missing, says how to build it and returns.
pub fn run(dir: &Path) {
    let runs: usize = std::env::var("KOBAKO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let target = target_dir();
    let bin = |var: &str, default: PathBuf| std::env::var_os(var).map_or(default, PathBuf::from);
    let slim = SLIM_PATHS
        .iter()
        .map(|p| target.join(p))
        .find(|p| p.is_file())
        .unwrap_or_else(|| target.join(SLIM_PATHS[0]));
    let slim = bin("KOBAKO_VMM_SLIM", slim);
    let big = bin("KOBAKO_BIG", target.join("release/kobako"));
    let missing: Vec<&Path> = [slim.as_path(), big.as_path()]
        .into_iter()
        .filter(|p| !p.is_file())
        .collect();
    if !missing.is_empty() {
        println!(
            "slim vs big VMM: skipped, missing {missing:?}; build them first (scripts/build.sh \
             does both):\n  RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --profile vmm \
             -p kobako-vmm --target x86_64-unknown-linux-gnu\n  cargo build --release -p kobako\n  \
             (or point KOBAKO_VMM_SLIM / KOBAKO_BIG at them)"
        );
        return;
    }
    let kernel = common::write(dir, "byte64", &common::elf(common::guests::BYTE64, false));
    let cfg = common::write(
        dir,
        "byte64.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let launcher = common::write(
        dir,
        "launch64",
        &common::elf(common::guests::LAUNCH64, false),
    );
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("launch64.out");
    let modes: [(&str, &Path, &[&str]); 3] = [
        ("slim kobako-vmm, seccomp on", &slim, &[]),
        ("slim kobako-vmm, seccomp off", &slim, &["--no-seccomp"]),
        ("big `kobako vmm`, seccomp on", &big, &["vmm"]),
    ];
    // One unrecorded run of each: the binaries in the page cache.
    for (_, prog, args) in &modes {
        run_one(&launcher, &out, prog, args, &cfg);
    }
    let mut res: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (m, (_, prog, args)) in modes.iter().enumerate() {
            res[m].push(run_one(&launcher, &out, prog, args, &cfg));
        }
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
    println!(
        "slim vs big VMM: process start -> exit (wait4 rusage), byte64 guest, 128 MiB, 1 vCPU, \
         config file, --no-api; {runs} interleaved runs each\n  slim: {} ({:.2} MiB)\n  big:  {} \
         ({:.2} MiB)",
        slim.display(),
        size(&slim),
        big.display(),
        size(&big)
    );
    let mut med = Vec::new();
    for ((name, _, _), r) in modes.iter().zip(&res) {
        let col = |f: fn(&Run) -> f64| r.iter().map(f).collect::<Vec<f64>>();
        let (wall, cpu, rss) = (col(|r| r.wall_ms), col(|r| r.cpu_ms), col(|r| r.rss_mib));
        med.push((median(&wall), median(&cpu), median(&rss)));
        Stats(wall).line(&format!("{name}: wall"), "ms");
        Stats(cpu).line(&format!("{name}: CPU (user+sys)"), "ms");
        Stats(rss).line(&format!("{name}: max RSS"), "MiB");
    }
    let (on, off, bg) = (med[0], med[1], med[2]);
    println!(
        "ratios of medians: slim/big wall {:.2}x CPU {:.2}x max RSS {:.2}x; \
         slim seccomp off/on CPU {:.2}x",
        on.0 / bg.0,
        on.1 / bg.1,
        on.2 / bg.2,
        off.1 / on.1
    );
    println!(
        "vs Firecracker (issue 19: {FC_CPU_MS} ms CPU, {FC_RSS_MIB} MiB, its filters off): slim \
         seccomp on CPU {:.2}x max RSS {:.2}x, seccomp off CPU {:.2}x max RSS {:.2}x; big CPU \
         {:.2}x max RSS {:.2}x",
        on.1 / FC_CPU_MS,
        on.2 / FC_RSS_MIB,
        off.1 / FC_CPU_MS,
        off.2 / FC_RSS_MIB,
        bg.1 / FC_CPU_MS,
        bg.2 / FC_RSS_MIB
    );
    let ok = |v: f64, t: f64| if v <= t { "met" } else { "NOT met" };
    println!(
        "targets (slim, seccomp on): CPU {:.2} ms <= {TARGET_CPU_MS} ms {}; max RSS {:.2} MiB <= \
         {TARGET_RSS_MIB} MiB {}",
        on.1,
        ok(on.1, TARGET_CPU_MS),
        on.2,
        ok(on.2, TARGET_RSS_MIB)
    );
}
