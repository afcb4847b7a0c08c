//! Start-up benchmark of the `kobako-vmm` process (run: `cargo bench -p kobako-vmm --bench
//! startup`). 20 runs of each mode, then median, min, max:
//! - API mode: process start → API socket ready (wall measured here by polling connect(); CPU
//!   and RSS reported by the VMM), then the getting-started requests and InstanceStart →
//!   first KVM_RUN (the VMM logs wall, CPU and RSS at that moment).
//! - Config-file mode (`--no-api`): process start → first KVM_RUN.
//!
//! "Process start" for wall time is the CLOCK_MONOTONIC reading just before spawn() here; the
//! VMM logs CLOCK_MONOTONIC at its first KVM_RUN, so the difference includes exec and loading.
//! CPU time is CLOCK_PROCESS_CPUTIME_ID of the VMM (counts from exec). RSS is read from
//! /proc/self/statm by the VMM before the guest runs: everything but guest memory the guest
//! touches, i.e. the VMM's overhead plus the few pages of boot structures.
//!
//! - Snapshot: the `snapcount` guest (virtio-rng in a loop, a counter) booted with 128 MiB,
//!   paused, `PUT /snapshot/create` timed; then `--no-api --snapshot-load` into new processes:
//!   process start → first KVM_RUN of the restored vCPU (wall, CPU, RSS), and the time to the
//!   guest's next console line.
//!
//! The guest of the first two is the PVH test guest (it prints, signals boot complete and resets).
//!
//! First of all, the slim `kobako-vmm` against the big `kobako vmm` over the whole process life
//! (wait4 rusage; see [`rusage`]). `cargo bench -p kobako-vmm --bench startup -- rusage` runs
//! only that comparison, `-- startup` only the rest.

#[path = "../tests/common/mod.rs"]
mod common;
mod rusage;

use std::process::{Command, Stdio};
use std::time::Duration;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // Both fields of a CLOCK_MONOTONIC reading are >= 0.
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

fn field(log: &str, marker: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker:?} in log:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

struct Stats(Vec<f64>);

impl Stats {
    fn line(mut self, name: &str, unit: &str) {
        self.0
            .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let n = self.0.len();
        let med = if n % 2 == 1 {
            self.0[n / 2]
        } else {
            (self.0[n / 2 - 1] + self.0[n / 2]) / 2.0
        };
        println!(
            "{name:<44} median {med:>8.2} {unit}   min {:>8.2}   max {:>8.2}   (n={n})",
            self.0[0],
            self.0[n - 1]
        );
    }
}

fn main() {
    // `cargo bench` passes --bench: only words without dashes select a part.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let part = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    let dir = tempfile::tempdir().unwrap();
    if part("rusage") {
        rusage::run(dir.path());
    }
    if part("startup") {
        startup(dir.path());
    }
}

fn startup(dir: &std::path::Path) {
    let runs = 20;
    let kernel = common::write(dir, "vmlinux", &common::elf(common::guests::PVH32, true));
    let bin = common::vmm_bin();

    let (mut api_wall, mut api_cpu, mut api_rss) = (vec![], vec![], vec![]);
    let (mut start_cpu, mut start_rss) = (vec![], vec![]);
    for i in 0..runs {
        let sock = dir.join(format!("api{i}.sock"));
        let log = dir.join(format!("api{i}.log"));
        let t0 = mono_ns();
        let mut child = common::Vmm(
            Command::new(&bin)
                .arg("--api-sock")
                .arg(&sock)
                .arg("--log-path")
                .arg(&log)
                .args(["--level", "Info"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            std::thread::sleep(Duration::from_micros(50));
        }
        api_wall.push((mono_ns() - t0) as f64 / 1e6);
        let body = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
        assert_eq!(
            common::http(&sock, "PUT", "/boot-source", Some(&body)).0,
            204
        );
        let mc = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
        assert_eq!(
            common::http(&sock, "PUT", "/machine-config", Some(mc)).0,
            204
        );
        let start = r#"{"action_type": "InstanceStart"}"#;
        assert_eq!(common::http(&sock, "PUT", "/actions", Some(start)).0, 204);
        assert_eq!(
            common::wait_exit(&mut child, 30),
            kobako_vmm::EXIT_GUEST_RESET
        );
        let l = std::fs::read_to_string(&log).unwrap();
        api_cpu.push(field(&l, "API socket ready", "cpu_us") as f64 / 1e3);
        api_rss.push(field(&l, "API socket ready", "rss_kib") as f64 / 1024.0);
        start_cpu.push(field(&l, "first KVM_RUN", "cpu_us") as f64 / 1e3);
        start_rss.push(field(&l, "first KVM_RUN", "rss_kib") as f64 / 1024.0);
    }

    let cfg = common::write(
        dir,
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let (mut cf_wall, mut cf_cpu, mut cf_rss) = (vec![], vec![], vec![]);
    for i in 0..runs {
        let log = dir.join(format!("cf{i}.log"));
        let t0 = mono_ns();
        let st = Command::new(&bin)
            .args(["--no-api", "--config-file"])
            .arg(&cfg)
            .arg("--log-path")
            .arg(&log)
            .args(["--level", "Info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(kobako_vmm::EXIT_GUEST_RESET));
        let l = std::fs::read_to_string(&log).unwrap();
        cf_wall.push((field(&l, "first KVM_RUN", "mono_ns") - t0) as f64 / 1e6);
        cf_cpu.push(field(&l, "first KVM_RUN", "cpu_us") as f64 / 1e3);
        cf_rss.push(field(&l, "first KVM_RUN", "rss_kib") as f64 / 1024.0);
    }

    // Snapshot create and load.
    let mut g = common::guests::SNAPCOUNT.to_vec();
    g[8..16].copy_from_slice(&0x30_0000u64.to_le_bytes());
    g[16..24].copy_from_slice(&0xd000_0000u64.to_le_bytes());
    g[24..32].copy_from_slice(&2000u64.to_le_bytes());
    let sc = common::write(dir, "snapcount", &common::elf(&g, false));
    let sock = dir.join("snap.sock");
    let serial = dir.join("snap.serial");
    let orig = common::spawn_api(&sock, &[]);
    for (m, p, b) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#.to_string(),
        ),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{}"}}"#, sc.display()),
        ),
        ("PUT", "/entropy", "{}".to_string()),
        (
            "PUT",
            "/serial",
            format!(r#"{{"serial_out_path": "{}"}}"#, serial.display()),
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.to_string(),
        ),
    ] {
        assert_eq!(common::http(&sock, m, p, Some(&b)).0, 204, "{p}");
    }
    assert!(common::wait_for(30, || std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .lines()
        .count()
        > 20));
    assert_eq!(
        common::http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let (state, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    let mut create = vec![];
    for _ in 0..5 {
        let body = format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            state.display(),
            mem.display()
        );
        let t0 = mono_ns();
        assert_eq!(
            common::http(&sock, "PUT", "/snapshot/create", Some(&body)).0,
            204
        );
        create.push((mono_ns() - t0) as f64 / 1e6);
    }
    drop(orig);
    let (mut ld_wall, mut ld_cpu, mut ld_rss, mut ld_line) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let log = dir.join(format!("ld{i}.log"));
        let out = dir.join(format!("ld{i}.serial"));
        let body = common::write(
            dir,
            &format!("ld{i}.json"),
            format!(
                r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true, "serial": {{"serial_out_path": "{}"}}}}"#,
                state.display(),
                mem.display(),
                out.display()
            )
            .as_bytes(),
        );
        let t0 = mono_ns();
        let child = common::Vmm(
            Command::new(&bin)
                .args(["--no-api", "--snapshot-load"])
                .arg(&body)
                .arg("--log-path")
                .arg(&log)
                .args(["--level", "Info"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains('\n')
        {
            std::thread::sleep(Duration::from_micros(100));
        }
        ld_line.push((mono_ns() - t0) as f64 / 1e6);
        drop(child);
        let l = std::fs::read_to_string(&log).unwrap();
        ld_wall.push((field(&l, "first KVM_RUN", "mono_ns") - t0) as f64 / 1e6);
        ld_cpu.push(field(&l, "first KVM_RUN", "cpu_us") as f64 / 1e3);
        ld_rss.push(field(&l, "first KVM_RUN", "rss_kib") as f64 / 1024.0);
    }

    println!(
        "kobako-vmm start-up, {runs} runs each (binary: {})",
        bin.display()
    );
    Stats(api_wall).line("API mode: start -> API socket ready (wall)", "ms");
    Stats(api_cpu).line("API mode: start -> API socket ready (CPU)", "ms");
    Stats(api_rss).line("API mode: RSS at API socket ready", "MiB");
    Stats(start_cpu).line("API mode: start -> first KVM_RUN (CPU)", "ms");
    Stats(start_rss).line("API mode: RSS at first KVM_RUN", "MiB");
    Stats(cf_wall).line("config file: start -> first KVM_RUN (wall)", "ms");
    Stats(cf_cpu).line("config file: start -> first KVM_RUN (CPU)", "ms");
    Stats(cf_rss).line("config file: RSS at first KVM_RUN", "MiB");
    use std::os::unix::fs::MetadataExt;
    let on_disk = std::fs::metadata(&mem)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    println!(
        "snapshot of a 128 MiB guest: memory file {} KiB on disk, state file {} KiB",
        on_disk >> 10,
        std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0) >> 10
    );
    Stats(create).line("snapshot/create (paused guest, API call)", "ms");
    Stats(ld_wall).line("snapshot load: start -> first KVM_RUN (wall)", "ms");
    Stats(ld_cpu).line("snapshot load: start -> first KVM_RUN (CPU)", "ms");
    Stats(ld_rss).line("snapshot load: RSS at first KVM_RUN", "MiB");
    Stats(ld_line).line("snapshot load: start -> next console line", "ms");
}
