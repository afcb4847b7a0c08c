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
//! The guest is the PVH test guest (it prints, signals boot complete and resets).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    // `cargo bench` passes --bench; accept and ignore arguments.
    let runs = 20;
    let dir = tempfile::tempdir().unwrap();
    let kernel = common::write(
        dir.path(),
        "vmlinux",
        &common::elf(common::guests::PVH32, true),
    );
    let bin = common::vmm_bin();

    let (mut api_wall, mut api_cpu, mut api_rss) = (vec![], vec![], vec![]);
    let (mut start_cpu, mut start_rss) = (vec![], vec![]);
    for i in 0..runs {
        let sock = dir.path().join(format!("api{i}.sock"));
        let log = dir.path().join(format!("api{i}.log"));
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
        dir.path(),
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let (mut cf_wall, mut cf_cpu, mut cf_rss) = (vec![], vec![], vec![]);
    for i in 0..runs {
        let log = dir.path().join(format!("cf{i}.log"));
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
}
