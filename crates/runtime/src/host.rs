//! What this host can do: which accelerator runs a standard Linux guest, how many CPUs and how
//! much memory there are, the TSC frequency (passed to TCG guests so timer calibration cannot hang).

use serde::{Deserialize, Serialize};

/// CPU accelerator for the QEMU runtime (re-exported as `config::Accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The accelerator choice and why it was made (logged, shown by `kobako vm run -v`).
#[derive(Debug, Clone)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Decide KVM vs TCG. KVM only when /dev/kvm is usable *and* backed by hardware virtualization
/// (vmx/svm): a PVM-backed /dev/kvm (kvm_pvm) cannot run an unmodified kernel (see
/// shared/reference/pvm-guest-notes.md), so it counts as "no KVM" for standard guests.
pub fn detect_accel() -> AccelChoice {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = kvm_is_pvm();
    let kvm_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match (kvm_ok, hw, pvm) {
        (true, true, false) => AccelChoice {
            accel: Accel::Kvm,
            reason: "KVM with hardware virtualization".into(),
        },
        (true, _, true) => AccelChoice {
            accel: Accel::Tcg,
            reason: "/dev/kvm is PVM (kvm_pvm), which cannot run standard guests: using TCG".into(),
        },
        (true, false, false) => AccelChoice {
            accel: Accel::Tcg,
            reason: "/dev/kvm present but the CPU shows no vmx/svm: using TCG".into(),
        },
        (false, _, _) => AccelChoice {
            accel: Accel::Tcg,
            reason: "no usable /dev/kvm: using TCG (software CPU, slower)".into(),
        },
    }
}

/// True when /dev/kvm is the PVM module (`kvm_pvm`).
pub fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Which runtime runs VMs here, and why (printed like the accelerator choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Qemu,
    Vmm,
}

impl RuntimeKind {
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Qemu => "qemu",
            RuntimeKind::Vmm => "vmm",
        }
    }
}

/// The runtime choice and its reason.
#[derive(Debug, Clone)]
pub struct RuntimeChoice {
    pub kind: RuntimeKind,
    pub reason: String,
}

/// Prefer the own VMM where KVM runs standard guests (the same test as [`detect_accel`]);
/// elsewhere QEMU, which also has TCG. Until the vmm runtime has vsock and wires disks and NICs,
/// a VM that needs a disk or NIC stays on QEMU: `needs_devices` says so.
pub fn detect_runtime(needs_devices: bool) -> RuntimeChoice {
    let accel = detect_accel();
    match (accel.accel, needs_devices) {
        (Accel::Kvm, false) => RuntimeChoice {
            kind: RuntimeKind::Vmm,
            reason: "runtime vmm: KVM with hardware virtualization".into(),
        },
        (Accel::Kvm, true) => RuntimeChoice {
            kind: RuntimeKind::Qemu,
            reason: "runtime qemu: this VM needs an agent channel, disks or NICs, which the own \
                     VMM does not have yet"
                .into(),
        },
        (Accel::Tcg, _) => RuntimeChoice {
            kind: RuntimeKind::Qemu,
            reason: format!("runtime qemu: {}", accel.reason),
        },
    }
}

/// Online CPUs of the host.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Host memory in MiB (MemTotal).
pub fn memory_mib() -> u64 {
    meminfo_kib("MemTotal:") / 1024
}

/// Memory available for new VMs in MiB (MemAvailable).
pub fn available_mib() -> u64 {
    meminfo_kib("MemAvailable:") / 1024
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The host TSC frequency in kHz, from /proc/cpuinfo's "cpu MHz" (TCG's guest TSC follows the
/// host's). `None` if unknown.
pub fn tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_are_sane() {
        assert!(cpus() >= 1);
        assert!(memory_mib() > 64);
        let c = detect_accel();
        assert!(!c.reason.is_empty());
        // On PVM hosts (like the CI machines) KVM must never be chosen for standard guests.
        if kvm_is_pvm() {
            assert_eq!(c.accel, Accel::Tcg);
            assert_eq!(detect_runtime(false).kind, RuntimeKind::Qemu);
        }
        if c.accel == Accel::Tcg {
            assert_eq!(detect_runtime(false).kind, RuntimeKind::Qemu);
        }
        assert_eq!(detect_runtime(true).kind, RuntimeKind::Qemu);
    }
}
