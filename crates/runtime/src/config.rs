//! The configuration of one VM, validated before anything runs, and persisted in its directory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{host, RuntimeError};

/// CPU accelerator (what the host offers: [`host::detect_accel`]).
pub use crate::host::Accel;

/// How the kernel file is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelKind {
    /// ELF vmlinux with a PVH entry note.
    ElfPvh,
    BzImage,
}

/// The root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Root {
    /// An initramfs (the whole root in RAM; `rdinit=/init`).
    Initramfs { path: PathBuf },
    /// A disk image on virtio-blk mounted as `/dev/vda`.
    Disk {
        path: PathBuf,
        format: String,
        read_only: bool,
    },
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub name: String,
    pub kernel: PathBuf,
    pub kernel_kind: KernelKind,
    pub root: Root,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Extra kernel command line (appended after kobako's own parameters).
    pub extra_cmdline: String,
    pub accel: Accel,
    /// Seconds to wait for the agent before giving up.
    pub ready_timeout_secs: u64,
    /// Files and directories created for this VM alone (e.g. its qcow2 overlay under
    /// /var/lib/kobako), removed together with the VM.
    #[serde(default)]
    pub owned_paths: Vec<PathBuf>,
    /// More virtio-blk disks after the root (guest sees them as /dev/vdb, /dev/vdc, ... in order;
    /// e.g. a cloud-init NoCloud seed).
    #[serde(default)]
    pub extra_disks: Vec<Disk>,
    /// Network interfaces, each on an existing tap device (in `netns` when set). The guest sees
    /// them as eth0, eth1, ... in this order (and can find them by MAC).
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// Run the VM process in this named network namespace (/run/netns/NAME), e.g. its lab's.
    #[serde(default)]
    pub netns: Option<String>,
    /// Restore the VM from this memory/device state file (a snapshot) instead of booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<PathBuf>,
    /// Cgroups above the VM's own, outermost first (a lab's VMs: its owner's, then the lab's):
    /// the jail creates them with their limits, so the kernel enforces a user's quota across
    /// all of their VMs, not only each VM's own limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<CgroupLevel>,
    /// Guest RAM in a file instead of anonymous memory (QEMU runtime, warm snapshots): see
    /// [`MemoryFile`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file: Option<MemoryFile>,
    /// Without a memory file: guest RAM still as a named QEMU backend (`memory-backend-ram,
    /// id=ram`). QEMU's state stream names RAM blocks, so a VM restored from the stream of one
    /// whose RAM was a file (a clone's checkpoint) must name its RAM the same way; restores set
    /// this, nobody else needs to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub named_ram: bool,
    /// Host directories the guest mounts read-only (virtio-9p, QEMU runtime only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
    /// A virtio-balloon with free page reporting (QEMU): the guest hands its free memory back
    /// to the host as it frees it, so an idle VM's host RSS falls to what it really uses.
    /// Absent in configurations stored before it existed (their snapshots have no balloon).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub free_page_reporting: bool,
}

/// A host directory exported to the guest read-only over virtio-9p under `tag` (the agent
/// mounts it where the lab file says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub path: PathBuf,
    pub tag: String,
}

/// Guest RAM backed by a file (QEMU `memory-backend-file`), the two sides of a warm snapshot:
/// - `shared`: the VM writes its RAM into the file (`share=on`; the jail lets it write that
///   file alone). A snapshot of it then carries device state only (QEMU's `x-ignore-shared`)
///   and a copy of the file (`ram.bin`).
/// - not `shared`: the VM maps the file read-only and copy-on-write (`share=off,readonly=on,
///   rom=off`, QEMU 8.2 or later): every clone of a snapshot starts from the same page-cache
///   pages and owns only the pages it writes. The file must never change while such a VM runs
///   (a snapshot's `ram.bin` is written once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryFile {
    pub path: PathBuf,
    pub shared: bool,
}

/// A cgroup above a VM's own ([`VmConfig::cgroups`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLevel {
    /// Its directory: `user.<name>`, `lab.<name>` (letters, digits, `.`, `_`, `-`; at most
    /// 128 bytes; checked by the jail).
    pub name: String,
    /// Guest memory allowed to all VMs under it (a user's `max_memory_mib`). With `vms`, its
    /// memory limit is this plus `vms` times each VM process's allowance above guest RAM: the
    /// sum of the limits of the VMs the quota allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_memory_mib: Option<u64>,
    /// VMs allowed under it at once (a user's `max_vms`): its task limit is that many VM
    /// processes' worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<u32>,
}

/// A virtio-net interface attached to a host tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub tap: String,
    /// "52:54:00:12:34:56" form.
    pub mac: String,
}

/// A disk image attached to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub path: PathBuf,
    /// "raw" or "qcow2".
    pub format: String,
    pub read_only: bool,
}

/// Largest VM memory accepted (the host's total), and the smallest a kernel boots in.
pub const MIN_MEMORY_MIB: u32 = 32;

/// A memory size [`parse_mib`] does not accept; `input` is the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("'{input}' is not a size; use a number with M or G, e.g. 128M or 1G")]
    NotASize { input: String },
    #[error("'{input}' is not a whole number of MiB")]
    NotWholeMib { input: String },
    #[error("'{input}' is too large")]
    TooLarge { input: String },
    #[error("unknown size unit '{unit}' in '{input}'; use M or G")]
    UnknownUnit { unit: String, input: String },
}

/// Parse sizes like `128M`, `512MiB`, `1G`, `2048` (MiB when no unit) into MiB.
pub fn parse_mib(s: &str) -> Result<u32, SizeError> {
    let input = || s.to_string();
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::NotASize { input: input() })?;
    let too_large = |_| SizeError::TooLarge { input: input() };
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "k" | "kb" | "kib" => {
            if !n.is_multiple_of(1024) {
                return Err(SizeError::NotWholeMib { input: input() });
            }
            return u32::try_from(n / 1024).map_err(too_large);
        }
        u => {
            return Err(SizeError::UnknownUnit {
                unit: u.into(),
                input: input(),
            })
        }
    };
    u32::try_from(n * mult).map_err(too_large)
}

/// A VM name: used in paths, process names and later in lab references.
pub fn validate_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "VM name '{name}': use 1-48 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
        )))
    }
}

impl VmConfig {
    /// Check everything that can be checked before starting: name, sizes against the host, files.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        validate_name(&self.name)?;
        if let Some(state) = &self.incoming {
            if state.to_string_lossy().contains('\'') || !state.is_file() {
                return Err(RuntimeError::Invalid(format!(
                    "snapshot state {}: no such file (or a path with a quote)",
                    state.display()
                )));
            }
        }
        if let Some(m) = &self.memory_file {
            // Our own paths (warm snapshots), but a comma would end QEMU's option value.
            if !m.path.is_absolute() || m.path.to_string_lossy().contains(',') {
                return Err(RuntimeError::Invalid(format!(
                    "memory file {}: needs an absolute path without a comma",
                    m.path.display()
                )));
            }
            if !m.shared && !m.path.is_file() {
                return Err(RuntimeError::Invalid(format!(
                    "memory file {}: no such file (the snapshot is incomplete)",
                    m.path.display()
                )));
            }
        }
        let cpus = host::cpus();
        if self.vcpus == 0 {
            return Err(RuntimeError::Invalid(
                "--vcpus 0: a VM needs at least 1 vCPU".into(),
            ));
        }
        if self.vcpus > cpus {
            return Err(RuntimeError::Invalid(format!(
                "--vcpus {}: this host has {cpus} CPU(s); use at most {cpus}",
                self.vcpus
            )));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(RuntimeError::Invalid(format!(
                "--memory {}M: a Linux guest needs at least {MIN_MEMORY_MIB}M",
                self.memory_mib
            )));
        }
        let host_mib = host::memory_mib();
        if u64::from(self.memory_mib) > host_mib {
            return Err(RuntimeError::Invalid(format!(
                "--memory {}M: more than this host's {host_mib}M",
                self.memory_mib
            )));
        }
        let must_exist = |p: &PathBuf, what: &'static str| {
            if p.is_file() {
                Ok(())
            } else {
                Err(RuntimeError::NoSuchFile {
                    what,
                    path: p.clone(),
                })
            }
        };
        must_exist(&self.kernel, "kernel")?;
        match &self.root {
            Root::Initramfs { path } => must_exist(path, "initramfs")?,
            Root::Disk { path, .. } => must_exist(path, "disk image")?,
        }
        for n in &self.nics {
            let mac_ok = n.mac.len() == 17
                && n.mac.split(':').count() == 6
                && n.mac
                    .split(':')
                    .all(|b| u8::from_str_radix(b, 16).is_ok() && b.len() == 2);
            if !mac_ok {
                return Err(RuntimeError::Invalid(format!(
                    "nic on tap '{}': MAC '{}' is not of the form 52:54:00:12:34:56",
                    n.tap, n.mac
                )));
            }
            if n.tap.is_empty() || n.tap.len() > 15 {
                return Err(RuntimeError::Invalid(format!(
                    "tap name '{}': 1 to 15 bytes",
                    n.tap
                )));
            }
        }
        if let Some(ns) = &self.netns {
            if !std::path::Path::new("/run/netns").join(ns).exists() {
                return Err(RuntimeError::Invalid(format!(
                    "network namespace '{ns}' does not exist (/run/netns/{ns})"
                )));
            }
        }
        for d in &self.extra_disks {
            must_exist(&d.path, "disk image")?;
            if d.format != "raw" && d.format != "qcow2" {
                return Err(RuntimeError::Invalid(format!(
                    "disk {}: format '{}' is not raw or qcow2",
                    d.path.display(),
                    d.format
                )));
            }
        }
        Ok(())
    }

    /// The guest kernel command line: kobako's parameters, then the user's.
    ///
    /// - `console=ttyS0 quiet`: a console for humans, without the cost of printing the boot log
    ///   through an emulated UART.
    /// - `reboot=t panic=-1`: any reset (power-off included: microvm has no ACPI) is a triple
    ///   fault, which the runtime turns into the end of the VM process; a panic resets at once.
    /// - `tsc_early_khz`: under TCG, early timer calibration sometimes hangs without it.
    /// - `tsc=reliable` (TCG): TCG's TSC follows the host's clock, but the kernel's watchdog
    ///   compares it with jiffies, which fall behind when the emulated CPU is starved (timer
    ///   ticks are lost), and then marks the TSC unstable: the guest falls back to
    ///   `refined-jiffies`, a 4 ms clock that drifts (ping showed 192 ms for a 200 ms delay).
    /// - `no_timer_check` (TCG): the kernel's check that the PIT ticks through the IO-APIC
    ///   waits a few ticks and panics ("IO-APIC + timer doesn't work!") when a starved TCG vCPU
    ///   sees too few; with 40 VMs booting on 2 cores a quarter of them died that way. KVM
    ///   guests skip the check the same way (kvmclock sets it).
    pub fn cmdline(&self) -> String {
        let mut c = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "reboot=t".into(),
            "panic=-1".into(),
            "8250.nr_uarts=1".into(),
            "random.trust_cpu=on".into(),
            format!("kobako.hostname={}", hostname_of(&self.name)),
        ];
        if self.accel == Accel::Tcg {
            if let Some(khz) = host::tsc_khz() {
                c.push(format!("tsc_early_khz={khz}"));
            }
            c.push("tsc=reliable".into());
            c.push("no_timer_check".into());
        }
        match &self.root {
            Root::Initramfs { .. } => c.push("rdinit=/init".into()),
            Root::Disk { read_only, .. } => {
                c.push("root=/dev/vda".into());
                c.push(if *read_only { "ro" } else { "rw" }.into());
                c.push("rootfstype=ext4".into());
                c.push("init=/sbin/init".into());
            }
        }
        if !self.extra_cmdline.trim().is_empty() {
            c.push(self.extra_cmdline.trim().to_string());
        }
        c.join(" ")
    }
}

/// A hostname from a VM name (hostnames allow letters, digits and '-').
pub fn hostname_of(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    h.trim_matches('-').chars().take(63).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("128M").unwrap(), 128);
        assert_eq!(parse_mib("512MiB").unwrap(), 512);
        assert_eq!(parse_mib("1G").unwrap(), 1024);
        assert_eq!(parse_mib("64").unwrap(), 64);
        assert_eq!(parse_mib("0").unwrap(), 0);
        assert_eq!(
            parse_mib("12X").unwrap_err().to_string(),
            "unknown size unit 'x' in '12X'; use M or G"
        );
        assert_eq!(
            parse_mib("lots").unwrap_err().to_string(),
            "'lots' is not a size; use a number with M or G, e.g. 128M or 1G"
        );
        assert!(matches!(
            parse_mib("99999999G"),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_mib("1000K"),
            Err(SizeError::NotWholeMib { .. })
        ));
    }

    #[test]
    fn names() {
        assert!(validate_name("web-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("-x").is_err());
        assert_eq!(hostname_of("web_1.a"), "web-1-a");
    }

    pub(crate) fn cfg() -> VmConfig {
        VmConfig {
            name: "t".into(),
            kernel: "/bin/true".into(),
            kernel_kind: KernelKind::ElfPvh,
            root: Root::Initramfs {
                path: "/bin/true".into(),
            },
            vcpus: 1,
            memory_mib: 128,
            extra_cmdline: String::new(),
            accel: Accel::Tcg,
            ready_timeout_secs: 60,
            owned_paths: Vec::new(),
            extra_disks: Vec::new(),
            nics: Vec::new(),
            netns: None,
            incoming: None,
            cgroups: Vec::new(),
            memory_file: None,
            named_ram: false,
            free_page_reporting: false,
            shares: Vec::new(),
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(cfg().validate().is_ok());
        let e = VmConfig { vcpus: 0, ..cfg() }.validate().unwrap_err();
        assert!(e.to_string().contains("at least 1 vCPU"), "{e}");
        let e = VmConfig {
            vcpus: host::cpus() + 1,
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("this host has"), "{e}");
        let e = VmConfig {
            memory_mib: 0,
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
        let e = VmConfig {
            memory_mib: u32::MAX,
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("more than this host"), "{e}");
        let e = VmConfig {
            kernel: "/nonexistent/vmlinux".into(),
            ..cfg()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
    }

    #[test]
    fn cmdline_has_reset_on_poweroff_and_user_part_last() {
        let c = VmConfig {
            extra_cmdline: "foo=bar".into(),
            ..cfg()
        }
        .cmdline();
        assert!(c.contains("reboot=t") && c.contains("panic=-1"), "{c}");
        assert!(c.ends_with("foo=bar"), "{c}");
        assert!(c.contains("rdinit=/init"));
    }
}
