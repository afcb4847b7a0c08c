//! Which program the vmm runtime runs as the VM process, and what differs between them.
//!
//! - [`Flavor::Kobako`] (`--runtime vmm`): kobako's own VMM, the slim `kobako-vmm` beside
//!   `kobako` (else `kobako vmm`), or the build `--vmm-bin` names. It has kobako's extensions
//!   of Firecracker's API: qcow2 drives and `image_format`, the serial console on a `unix:`
//!   socket, `GET /kobako/boot-time` (the guest's boot-complete signal), `--snapshot-load` with
//!   drive overrides, and its own exit statuses (80: the guest reset).
//! - [`Flavor::Firecracker`] (`--runtime firecracker`): Firecracker itself, found as
//!   `firecracker` on `PATH` (or named by `--vmm-bin`), configured with the same
//!   `--config-file` minus the extensions: raw drives only, the serial console on its standard
//!   input and output (the supervisor serves them on `console.sock`), readiness from the
//!   agent's Ready alone, no snapshots. Firecracker exits 0 when the guest resets (which is how
//!   kobako guests end, `reboot=k`), so the supervisor takes status 0 as the reset.
//!
//! Both run inside kobako's own jail ([`crate::jail`]), not Firecracker's `jailer`: the same
//! uid, mount and PID namespaces, cgroups and devices as kobako-vmm, so the rest of kobako
//! (sockets in `vmm/`, taps owned by the jail uid, the supervisor) needs no second layout.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::{KernelKind, Root, VmConfig};
use crate::{Result, RuntimeError};

/// The program Firecracker's runtime looks for on `PATH`.
pub const FIRECRACKER: &str = "firecracker";

/// The VMM program's dialect of Firecracker's API (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// kobako-vmm, with kobako's extensions.
    Kobako,
    /// Firecracker: its API and command line only.
    Firecracker,
}

impl Flavor {
    /// The runtime's name (`--runtime`, `launch.json`, `vm ls -o wide`).
    pub fn runtime_name(self) -> &'static str {
        match self {
            Flavor::Kobako => "vmm",
            Flavor::Firecracker => "firecracker",
        }
    }

    /// The flavor of a runtime name, if it is one of the vmm runtime's.
    pub fn of_runtime(name: &str) -> Option<Flavor> {
        match name {
            "vmm" => Some(Flavor::Kobako),
            "firecracker" => Some(Flavor::Firecracker),
            _ => None,
        }
    }

    /// The VM process's name in messages.
    pub fn program_name(self) -> &'static str {
        match self {
            Flavor::Kobako => "kobako vmm",
            Flavor::Firecracker => "firecracker",
        }
    }

    /// The exit status of the VM process when the guest reset itself: kobako-vmm's
    /// [`kobako_vmm::EXIT_GUEST_RESET`]; Firecracker ends with 0 (its `FcExitCode::Ok`) on the
    /// i8042 reset `reboot=k` guests do, and has no power-off of its own.
    pub fn reset_exit_code(self) -> i32 {
        match self {
            Flavor::Kobako => kobako_vmm::EXIT_GUEST_RESET,
            Flavor::Firecracker => 0,
        }
    }

    /// What exit status `code` of this VMM means, for `exit.json` and error messages.
    pub fn exit_meaning(self, code: i32) -> Option<&'static str> {
        use kobako_vmm as k;
        // The statuses both have (kobako-vmm took Firecracker's values).
        let common = match code {
            k::EXIT_GENERIC => Some("the VMM failed (see its log)"),
            k::EXIT_BAD_SYSCALL => Some("the VMM made a system call its seccomp filter forbids"),
            k::EXIT_BAD_CONFIGURATION => {
                Some("the VMM refused its configuration or could not start the VM from it")
            }
            k::EXIT_ARG_PARSING => Some("the VMM refused its command line"),
            _ => None,
        };
        match self {
            Flavor::Kobako => match code {
                k::EXIT_OK => Some("the guest powered off"),
                k::EXIT_GUEST_RESET => Some("the guest reset"),
                k::EXIT_TRIPLE_FAULT => Some("the guest triple-faulted"),
                k::EXIT_EMULATION_FAILURE => {
                    Some("KVM could not emulate a guest instruction (KVM_EXIT_INTERNAL_ERROR)")
                }
                k::EXIT_VCPU_ERROR => Some("a vCPU failed"),
                _ => common,
            },
            Flavor::Firecracker => match code {
                0 => Some(
                    "the guest reset without announcing it (kernel panic?); Firecracker exits 0 \
                     on a guest reset",
                ),
                2 => Some("Firecracker hit an unexpected error"),
                149 => Some("Firecracker was stopped by SIGBUS"),
                150 => Some("Firecracker was stopped by SIGSEGV"),
                151 => Some("Firecracker was stopped by SIGXFSZ"),
                154 => Some("Firecracker was stopped by SIGXCPU"),
                155 => Some("Firecracker was stopped by SIGPIPE"),
                156 => Some("Firecracker was stopped by SIGHUP"),
                157 => Some("Firecracker was stopped by SIGILL"),
                _ => common,
            },
        }
    }

    /// `--level`: kobako-vmm logs to its stderr (`vm.log`); Firecracker logs to its standard
    /// output, which is the serial console here, so only its warnings and errors.
    fn log_level(self) -> &'static str {
        match self {
            Flavor::Kobako => "Info",
            Flavor::Firecracker => "Warning",
        }
    }

    /// The VMM has kobako's extensions (see the module documentation).
    pub fn kobako_extensions(self) -> bool {
        self == Flavor::Kobako
    }

    /// What this VMM cannot run of `cfg`, refused before anything starts.
    pub fn check(self, cfg: &VmConfig) -> Result<()> {
        if self == Flavor::Kobako {
            return Ok(());
        }
        let refuse = |what: String| {
            Err(RuntimeError::Invalid(format!(
                "runtime firecracker: {what}; use --runtime vmm or --runtime qemu"
            )))
        };
        if cfg.incoming.is_some() {
            return refuse("restoring snapshots is not supported".into());
        }
        if cfg.kernel_kind == KernelKind::BzImage {
            return refuse(format!(
                "Firecracker boots an uncompressed ELF vmlinux, not the bzImage {} (pass \
                 --kernel a vmlinux)",
                cfg.kernel.display()
            ));
        }
        let mut disks: Vec<(&Path, &str)> = Vec::new();
        if let Root::Disk { path, format, .. } = &cfg.root {
            disks.push((path, format));
        }
        disks.extend(
            cfg.extra_disks
                .iter()
                .map(|d| (d.path.as_path(), d.format.as_str())),
        );
        for (path, format) in disks {
            if format != "raw" {
                return refuse(format!(
                    "disk {} is {format}: Firecracker reads raw images only (stored images are \
                     qcow2 overlays)",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// The first executable regular file called `name` in the directories of `path` (a `PATH`
/// value); else the directories searched, for the error.
pub fn find_on_path(
    name: &str,
    path: Option<&OsStr>,
) -> std::result::Result<PathBuf, Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.iter()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or(dirs)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `firecracker` on the caller's `PATH`, or the error that says where it looked and what to do.
pub fn find_firecracker(path: Option<&OsStr>) -> Result<PathBuf> {
    find_on_path(FIRECRACKER, path).map_err(|searched| {
        let searched = if searched.is_empty() {
            "PATH is empty".to_string()
        } else {
            searched
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        RuntimeError::MissingProgram(format!(
            "runtime firecracker: no `{FIRECRACKER}` on PATH (searched: {searched}); install \
             Firecracker or use --runtime vmm"
        ))
    })
}

/// A VMM program named by `--vmm-bin`: an executable file (made absolute: the supervisor runs
/// it from another directory).
pub fn check_program(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match std::fs::metadata(&abs) {
        Err(e) => Err(RuntimeError::MissingProgram(format!(
            "--vmm-bin {}: {e}",
            p.display()
        ))),
        Ok(_) if !is_executable(&abs) => Err(RuntimeError::MissingProgram(format!(
            "--vmm-bin {}: not an executable file",
            p.display()
        ))),
        Ok(_) => Ok(abs),
    }
}

/// The VMM's instance id (`--id`) for VM `name`: Firecracker takes 1-64 letters, digits and
/// '-' (kobako-vmm also '_'); VM names may also have '.', which becomes '-'.
pub fn instance_id(flavor: Flavor, name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || c == '-' => c,
            '_' if flavor == Flavor::Kobako => c,
            _ => '-',
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "kobako-vm".into()
    } else {
        id
    }
}

/// How the VM process starts its VM.
#[derive(Debug, Clone, Copy)]
pub enum Boot<'a> {
    /// Boot from a Firecracker-format configuration file.
    ConfigFile(&'a Path),
    /// kobako-vmm only: load a snapshot (a `PUT /snapshot/load` body in a file).
    SnapshotLoad(&'a Path),
}

/// The VM process's command line: `program`, the arguments that make it the VMM
/// (`kobako vmm`), then only flags both VMMs accept (`--id`, `--api-sock`, `--config-file`,
/// `--level`, `--no-seccomp`; `--snapshot-load` is kobako-vmm's alone).
pub fn argv(
    flavor: Flavor,
    program: &Path,
    program_args: &[String],
    name: &str,
    api_sock: &Path,
    boot: Boot<'_>,
    seccomp: bool,
) -> Result<Vec<String>> {
    let (how, what) = match boot {
        Boot::ConfigFile(p) => ("--config-file", p),
        Boot::SnapshotLoad(p) if flavor.kobako_extensions() => ("--snapshot-load", p),
        Boot::SnapshotLoad(_) => {
            return Err(RuntimeError::Invalid(
                "runtime firecracker: Firecracker has no --snapshot-load; restoring snapshots \
                 needs --runtime vmm"
                    .into(),
            ))
        }
    };
    let mut v = vec![program.display().to_string()];
    v.extend(program_args.iter().cloned());
    v.extend([
        "--id".into(),
        instance_id(flavor, name),
        "--api-sock".into(),
        api_sock.display().to_string(),
        how.into(),
        what.display().to_string(),
        "--level".into(),
        flavor.log_level().into(),
    ]);
    if !seccomp {
        v.push("--no-seccomp".into());
    }
    Ok(v)
}

/// Every flag of Firecracker's command line (`firecracker --help`, v1.x): what kobako passes
/// it must be among them (checked by the tests here and by `crates/cli/tests/firecracker.rs`).
pub const FIRECRACKER_FLAGS: &[&str] = &[
    "--api-sock",
    "--boot-timer",
    "--config-file",
    "--describe-snapshot",
    "--http-api-max-payload-size",
    "--id",
    "--level",
    "--log-path",
    "--metadata",
    "--metrics-path",
    "--mmds-size-limit",
    "--no-api",
    "--no-seccomp",
    "--parent-cpu-time-us",
    "--seccomp-filter",
    "--show-level",
    "--show-log-origin",
    "--snapshot-version",
    "--start-time-cpu-us",
    "--start-time-us",
    "--version",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::tests::cfg;

    #[test]
    fn each_vmm_gets_a_command_line_it_accepts() {
        let api = Path::new("/run/kobako/vms/a.b_c/vmm/api.sock");
        let fc = Path::new("/run/kobako/vms/a.b_c/vmm.json");
        let v = argv(
            Flavor::Firecracker,
            Path::new("/usr/local/bin/firecracker"),
            &[],
            "a.b_c",
            api,
            Boot::ConfigFile(fc),
            false,
        )
        .unwrap();
        assert_eq!(
            v,
            [
                "/usr/local/bin/firecracker",
                "--id",
                "a-b-c",
                "--api-sock",
                "/run/kobako/vms/a.b_c/vmm/api.sock",
                "--config-file",
                "/run/kobako/vms/a.b_c/vmm.json",
                "--level",
                "Warning",
                "--no-seccomp",
            ]
        );
        for flag in v.iter().filter(|a| a.starts_with("--")) {
            assert!(FIRECRACKER_FLAGS.contains(&flag.as_str()), "{flag}");
        }
        // Firecracker has no --snapshot-load: refused, not passed.
        let e = argv(
            Flavor::Firecracker,
            Path::new("/f"),
            &[],
            "x",
            api,
            Boot::SnapshotLoad(Path::new("/r.json")),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no --snapshot-load") && e.contains("--runtime vmm"),
            "{e}"
        );

        // kobako vmm: its program arguments first, its own id rules, --snapshot-load.
        let v = argv(
            Flavor::Kobako,
            Path::new("/usr/bin/kobako"),
            &["vmm".into()],
            "a.b_c",
            api,
            Boot::SnapshotLoad(Path::new("/r.json")),
            true,
        )
        .unwrap();
        assert_eq!(
            v[..8],
            [
                "/usr/bin/kobako",
                "vmm",
                "--id",
                "a-b_c",
                "--api-sock",
                "/run/kobako/vms/a.b_c/vmm/api.sock",
                "--snapshot-load",
                "/r.json"
            ]
        );
        assert_eq!(v[8..], ["--level", "Info"]);
        // kobako-vmm's own parser takes it.
        let args: Vec<std::ffi::OsString> = v[2..].iter().map(Into::into).collect();
        assert!(matches!(
            kobako_vmm::parse_args(&args),
            Ok(kobako_vmm::Cli::Run(_))
        ));
    }

    #[test]
    fn instance_ids_fit_both_vmms() {
        assert_eq!(
            instance_id(Flavor::Firecracker, "lab.node.vm_1"),
            "lab-node-vm-1"
        );
        assert_eq!(
            instance_id(Flavor::Kobako, "lab.node.vm_1"),
            "lab-node-vm_1"
        );
        assert_eq!(instance_id(Flavor::Kobako, ""), "kobako-vm");
        assert_eq!(instance_id(Flavor::Firecracker, &"x".repeat(80)).len(), 64);
        for name in ["lab.node.vm_1", "vm-0a1b2c", "a"] {
            let id = instance_id(Flavor::Kobako, name);
            let args: Vec<std::ffi::OsString> = vec!["--id".into(), id.into()];
            assert!(kobako_vmm::parse_args(&args).is_ok(), "{name}");
        }
    }

    #[test]
    fn exit_statuses_mean_what_each_vmm_means() {
        let (k, f) = (Flavor::Kobako, Flavor::Firecracker);
        assert_eq!(k.reset_exit_code(), 80);
        assert_eq!(f.reset_exit_code(), 0);
        assert_eq!(k.exit_meaning(0), Some("the guest powered off"));
        assert!(f.exit_meaning(0).unwrap().contains("reset"));
        assert_eq!(k.exit_meaning(80), Some("the guest reset"));
        assert_eq!(f.exit_meaning(80), None, "80 is nothing of Firecracker's");
        assert!(k.exit_meaning(82).unwrap().contains("emulate"));
        assert!(f.exit_meaning(149).unwrap().contains("SIGBUS"));
        for fl in [k, f] {
            assert!(fl.exit_meaning(152).unwrap().contains("configuration"));
            assert!(fl.exit_meaning(153).unwrap().contains("command line"));
            assert!(fl.exit_meaning(148).unwrap().contains("seccomp"));
            assert_eq!(fl.exit_meaning(77), None);
            assert_eq!(Flavor::of_runtime(fl.runtime_name()), Some(fl));
        }
        assert_eq!(Flavor::of_runtime("qemu"), None);
    }

    #[test]
    fn firecracker_is_found_on_path_or_named_with_where_it_was_looked_for() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        for d in [&a, &b, &c] {
            std::fs::create_dir(d).unwrap();
        }
        // Not it: a directory, a file nobody may execute.
        std::fs::create_dir(a.join(FIRECRACKER)).unwrap();
        std::fs::write(b.join(FIRECRACKER), b"").unwrap();
        std::fs::set_permissions(b.join(FIRECRACKER), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let path = std::env::join_paths([&a, &b, &c]).unwrap();
        let e = find_firecracker(Some(&path)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "runtime firecracker: no `firecracker` on PATH \
                 (searched: {}, {}, {}); install Firecracker or use --runtime vmm",
                a.display(),
                b.display(),
                c.display()
            )
        );
        let e = find_firecracker(None).unwrap_err().to_string();
        assert!(e.contains("PATH is empty"), "{e}");
        std::fs::write(c.join(FIRECRACKER), b"").unwrap();
        std::fs::set_permissions(c.join(FIRECRACKER), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_eq!(find_firecracker(Some(&path)).unwrap(), c.join(FIRECRACKER));
        assert_eq!(
            check_program(&c.join(FIRECRACKER)).unwrap(),
            c.join(FIRECRACKER)
        );
        let e = check_program(&b.join(FIRECRACKER)).unwrap_err().to_string();
        assert!(e.contains("not an executable file"), "{e}");
        let e = check_program(&t.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vmm-bin") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn what_firecracker_cannot_run_is_refused_before_anything_starts() {
        let f = Flavor::Firecracker;
        let mut c = cfg(Root::Initramfs {
            path: "/i.cpio".into(),
        });
        assert!(f.check(&c).is_ok());
        c.root = Root::Disk {
            path: "/d.raw".into(),
            format: "raw".into(),
            read_only: false,
        };
        assert!(f.check(&c).is_ok());
        c.extra_disks = vec![crate::config::Disk {
            path: "/seed.qcow2".into(),
            format: "qcow2".into(),
            read_only: true,
        }];
        let e = f.check(&c).unwrap_err().to_string();
        assert!(
            e.contains("/seed.qcow2 is qcow2") && e.contains("raw images only"),
            "{e}"
        );
        assert!(Flavor::Kobako.check(&c).is_ok());
        c.extra_disks.clear();
        c.kernel_kind = KernelKind::BzImage;
        let e = f.check(&c).unwrap_err().to_string();
        assert!(
            e.contains("not the bzImage") && e.contains("--runtime vmm"),
            "{e}"
        );
        c.kernel_kind = KernelKind::ElfPvh;
        c.incoming = Some("/snap/vmstate.bin".into());
        let e = f.check(&c).unwrap_err().to_string();
        assert!(e.contains("snapshots"), "{e}");
    }
}
