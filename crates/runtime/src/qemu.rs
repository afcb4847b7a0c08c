//! The QEMU runtime: `qemu-system-x86_64 -M microvm`, KVM where the host runs standard guests,
//! TCG elsewhere (see [`crate::host::detect_accel`]).
//!
//! Machine: microvm without ACPI (QEMU then lists the virtio-mmio devices on the kernel command
//! line itself), no option ROMs, `-no-reboot` so the guest's reset (which is how kobako guests
//! power off, see [`crate::config::VmConfig::cmdline`]) ends the process. Devices: the 8250 serial
//! console on a chardev socket with a log file, a virtio-serial port `kobako.agent` for the agent
//! (no vhost-vsock needed), virtio-blk for a disk root, QMP for control.

use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::config::{Root, VmConfig};
use crate::jail::{Jail, JailConfig};
use crate::qmp::Qmp;
use crate::supervised::{finish, start_supervised, wait_gone};
use crate::vmdir::{write_json, GuestChannel, Launch, PassFd, VmDir};
use crate::{io, Accel, Console, Result, Runtime, RuntimeError, VmState, VmStatus};

/// The QEMU runtime.
pub struct QemuRuntime {
    /// The `kobako` executable, re-run as `kobako vm supervise DIR`.
    pub kobako_exe: PathBuf,
    pub qemu: PathBuf,
    /// Run QEMU under its seccomp sandbox ([`SANDBOX`]); off only for debugging.
    pub sandbox: bool,
    /// The jail around each QEMU process ([`crate::jail`]).
    pub jail: JailConfig,
}

/// QEMU's own seccomp filter (`-sandbox`): obsolete system calls, privilege changes (setuid and
/// friends), spawning processes (snapshots and restores migrate through descriptors kobako
/// opens, `fd:`) and resource control (scheduling, CPU and memory policy) are refused.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Debian package that provides the QEMU binary.
pub const PACKAGE: &str = "qemu-system-x86";

/// The guest CPU under TCG: qemu64 plus the x86-64-v2 features (what Debian software may
/// assume of any machine it runs on; `-cpu host` is used under KVM).
/// Descriptor numbers of what the supervisor opens for QEMU ([`QemuRuntime::pass`]; 3 is
/// [`crate::vmdir::INCOMING_FD`]).
pub const QMP_FD: i32 = 4;
pub const CONSOLE_FD: i32 = 5;
pub const AGENT_FD: i32 = 6;
pub const CONSOLE_LOG_FD: i32 = 7;

/// TCG's translation cache in MiB. QEMU's default grows to 1 GiB per VM; hot guest code
/// (a Linux boot translates a few tens of MiB) fits in this, and the VM's memory limit counts
/// it ([`crate::jail::QEMU_TCG_OVERHEAD_MIB`]).
pub const TCG_TB_MIB: u32 = 128;

pub const TCG_CPU: &str = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16";

/// Whether `qemu` maps a file copy-on-write as guest RAM (`memory-backend-file` with
/// `readonly=on,rom=off`, QEMU 8.2 or later): warm clones then share their snapshot's memory
/// ([`crate::config::MemoryFile`]); older QEMUs read each clone's RAM from a stream. Asked
/// once per binary path.
pub fn maps_memory_files(qemu: &Path) -> bool {
    static SEEN: std::sync::Mutex<Vec<(PathBuf, bool)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, yes)) = seen.iter().find(|(p, _)| p == qemu) {
        return *yes;
    }
    let yes = std::process::Command::new(qemu)
        .args(["-object", "memory-backend-file,help"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim_start().starts_with("rom="))
        })
        .unwrap_or(false);
    seen.push((qemu.to_path_buf(), yes));
    yes
}

impl QemuRuntime {
    pub fn new(kobako_exe: PathBuf) -> QemuRuntime {
        QemuRuntime {
            kobako_exe,
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            sandbox: true,
            jail: JailConfig::default(),
        }
    }

    /// The machine part of the command line: binary, machine type, CPUs, memory, accelerator.
    /// Shared with the boot benchmark's raw-QEMU baseline so both boot the same machine.
    pub fn machine_argv(&self, cfg: &VmConfig) -> Vec<String> {
        let mut a: Vec<String> = vec![
            self.qemu.display().to_string(),
            "-M".into(),
            "microvm,x-option-roms=off,acpi=off,isa-serial=on,rtc=on".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-smp".into(),
            cfg.vcpus.to_string(),
            "-m".into(),
            format!("{}M", cfg.memory_mib),
        ];
        match cfg.accel {
            Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
            // TCG's default model (qemu64) lacks SSSE3/SSE4/POPCNT, which real x86-64 CPUs
            // have had since 2008 and some distribution software requires (suricata's
            // hyperscan dies with SIGILL): emulate the x86-64-v2 level instead.
            Accel::Tcg => a.extend([
                "-accel".into(),
                format!("tcg,thread=multi,tb-size={TCG_TB_MIB}"),
                "-cpu".into(),
                TCG_CPU.into(),
            ]),
        }
        a
    }

    /// The descriptors the supervisor opens in `dir` for the QEMU process [`Self::argv`] makes.
    pub fn pass(dir: &Path) -> Vec<PassFd> {
        vec![
            PassFd::Listen {
                path: dir.join("qmp.sock"),
                fd: QMP_FD,
            },
            PassFd::Listen {
                path: dir.join("console.sock"),
                fd: CONSOLE_FD,
            },
            PassFd::Listen {
                path: dir.join("agent-guest.sock"),
                fd: AGENT_FD,
            },
            PassFd::Append {
                path: dir.join("console.log"),
                fd: CONSOLE_LOG_FD,
            },
        ]
    }

    /// The full QEMU command line for a VM (its sockets and console log are the descriptors
    /// of [`Self::pass`]).
    pub fn argv(&self, cfg: &VmConfig) -> Vec<String> {
        let mut a = self.machine_argv(cfg);
        a.splice(
            1..1,
            [
                "-name".to_string(),
                format!("kobako-{},debug-threads=on", cfg.name),
            ],
        );
        if self.sandbox {
            a.extend(["-sandbox".into(), SANDBOX.into()]);
        }
        a.extend([
            "-kernel".into(),
            cfg.kernel.display().to_string(),
            "-append".into(),
            cfg.cmdline(),
            // Serial console: live on a socket, everything also in console.log. Both, the
            // agent channel and QMP are descriptors the supervisor opened (see `pass`): QEMU
            // creates no file and needs no writable directory.
            "-add-fd".into(),
            format!("fd={CONSOLE_LOG_FD},set={CONSOLE_LOG_FD}"),
            "-chardev".into(),
            format!(
                "socket,id=con,fd={CONSOLE_FD},server=on,wait=off,logfile=/dev/fdset/{CONSOLE_LOG_FD},logappend=on"
            ),
            "-serial".into(),
            "chardev:con".into(),
            // The agent channel: a virtio-serial port named kobako.agent.
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!("socket,id=agent,fd={AGENT_FD},server=on,wait=off"),
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                kobako_agent::proto::PORT_NAME
            ),
            "-chardev".into(),
            format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
        ]);
        match &cfg.root {
            Root::Initramfs { path } => a.extend(["-initrd".into(), path.display().to_string()]),
            Root::Disk {
                path,
                format,
                read_only,
            } => a.extend([
                "-drive".into(),
                format!(
                    "if=none,id=root,file={},format={format},cache=unsafe{}",
                    path.display(),
                    if *read_only { ",readonly=on" } else { "" }
                ),
                "-device".into(),
                "virtio-blk-device,drive=root".into(),
            ]),
        }
        if let Some(m) = &cfg.memory_file {
            // Guest RAM in a file (see `MemoryFile`): written through by a warm VM, mapped
            // copy-on-write by its clones. Commas in the path would need doubling; `validate`
            // refuses them.
            let mode = if m.shared {
                "share=on"
            } else {
                "share=off,readonly=on,rom=off"
            };
            a.extend([
                "-object".into(),
                format!(
                    "memory-backend-file,id=ram,size={}M,mem-path={},{mode}",
                    cfg.memory_mib,
                    m.path.display()
                ),
                "-machine".into(),
                "memory-backend=ram".into(),
            ]);
        } else if cfg.named_ram {
            a.extend([
                "-object".into(),
                format!("memory-backend-ram,id=ram,size={}M", cfg.memory_mib),
                "-machine".into(),
                "memory-backend=ram".into(),
            ]);
        }
        if cfg.incoming.is_some() {
            // Restore instead of boot: QEMU waits for `migrate-incoming`, which
            // `snapshot::continue_restored` sends once it has set the capabilities the stream
            // was saved with; the stream is the file the supervisor opened for it
            // (`Launch::incoming_fd`).
            a.extend(["-incoming".into(), "defer".into()]);
        }
        for (i, n) in cfg.nics.iter().enumerate() {
            a.extend([
                "-netdev".into(),
                format!(
                    "tap,id=net{i},ifname={},script=no,downscript=no,vhost=off",
                    n.tap
                ),
                "-device".into(),
                format!("virtio-net-device,netdev=net{i},mac={}", n.mac),
            ]);
        }
        for (i, d) in cfg.extra_disks.iter().enumerate() {
            a.extend([
                "-drive".into(),
                format!(
                    "if=none,id=disk{i},file={},format={},cache=unsafe{}",
                    d.path.display(),
                    d.format,
                    if d.read_only { ",readonly=on" } else { "" }
                ),
                "-device".into(),
                format!("virtio-blk-device,drive=disk{i}"),
            ]);
        }
        // Shared directories: read-only 9p exports (files keep their host owners; the jail uid
        // reads what others may read). `multidevs=remap` keeps inode numbers unique across
        // mounts inside the directory.
        for (i, s) in cfg.shares.iter().enumerate() {
            a.extend([
                "-fsdev".into(),
                format!(
                    "local,id=share{i},path={},security_model=none,readonly=on,multidevs=remap",
                    s.path.display().to_string().replace(',', ",,")
                ),
                "-device".into(),
                format!("virtio-9p-device,fsdev=share{i},mount_tag={}", s.tag),
            ]);
        }
        // Free page reporting: the guest's driver reports free blocks (2 MiB and up, a few
        // seconds after they are freed) and QEMU discards them from the process; the guest may
        // take pages back under memory pressure (deflate-on-oom; nothing is inflated).
        if cfg.free_page_reporting {
            a.extend([
                "-device".into(),
                "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on".into(),
            ]);
        }
        a
    }

    async fn qmp(&self, vm: &VmDir) -> Result<Qmp> {
        Qmp::connect(&vm.file("qmp.sock")).await
    }
}

#[async_trait::async_trait]
impl Runtime for QemuRuntime {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn snapshot(
        &self,
        vm: &VmDir,
        dest: &Path,
        leave_paused: bool,
    ) -> Result<crate::snapshot::Manifest> {
        crate::snapshot::snapshot(&self.qemu, vm, dest, leave_paused).await
    }

    fn restore_config(
        &self,
        dir: &Path,
        name: &str,
        overlay_dir: &Path,
        verify: bool,
    ) -> Result<VmConfig> {
        let m = crate::snapshot::load(&self.qemu, dir, verify)?;
        crate::snapshot::restore_config(dir, &m, name, overlay_dir)
    }

    async fn create(&self, cfg: &VmConfig) -> Result<VmDir> {
        cfg.validate()?;
        if !self.qemu.is_file() {
            return Err(RuntimeError::Invalid(format!(
                "{} not found: install the Debian package {PACKAGE} (scripts/setup.sh does it)",
                self.qemu.display()
            )));
        }
        let vm = VmDir::for_name(&cfg.name);
        if vm.exists() {
            if vm.supervisor_pid().is_some() || vm.vm_pid().is_some() {
                return Err(RuntimeError::Exists(cfg.name.clone()));
            }
            // Left over from a VM whose supervisor was killed: nothing runs, reclaim the name.
            vm.remove()?;
        }
        std::fs::create_dir_all(&vm.path).map_err(io(format!("create {}", vm.path.display())))?;
        let jail = crate::jail::decide(&vm, &self.jail, || {
            Jail::for_qemu(cfg, &self.jail, &self.qemu, &vm.path)
        })?;
        let launch = Launch {
            netns: cfg.netns.clone(),
            argv: self.argv(cfg),
            channel: GuestChannel::Unix {
                path: vm.file("agent-guest.sock"),
            },
            runtime: "qemu".into(),
            reset_exit_code: None,
            console_log_from: None,
            console_stdio: false,
            stale_sockets: Vec::new(),
            incoming_fd: cfg.incoming.clone(),
            pass: Self::pass(&vm.path),
            jail: jail.clone(),
        };
        let r = write_json(&vm.file("config.json"), cfg)
            .and_then(|_| write_json(&vm.file("launch.json"), &launch));
        if let Err(e) = r {
            crate::jail::release(&vm.path, jail.as_ref());
            let _ = vm.remove();
            return Err(e);
        }
        Ok(vm)
    }

    async fn start(&self, vm: &VmDir) -> Result<()> {
        start_supervised(&self.kobako_exe, vm, "qmp.sock", "QEMU").await?;
        if vm.config()?.incoming.is_some() {
            crate::snapshot::continue_restored(vm).await?;
        }
        Ok(())
    }

    async fn stop(&self, vm: &VmDir, grace: Duration) -> Result<()> {
        if let Some(pid) = vm.vm_pid() {
            // 1. Ask the guest (clean unmounts).
            let asked = match crate::agent::AgentClient::connect(&vm.file("agent.sock")).await {
                Ok(c) if vm.ready().is_some() => c.shutdown(false).await.is_ok(),
                _ => false,
            };
            if !(asked && wait_gone(pid, grace).await) {
                // 2. Ask QEMU.
                if let Ok(mut q) = self.qmp(vm).await {
                    let _ = q.execute("quit", None).await;
                }
                if !wait_gone(pid, Duration::from_secs(2)).await {
                    // 3. Insist.
                    // SAFETY: kill(2) on the VM process pid recorded by its supervisor.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    wait_gone(pid, Duration::from_secs(2)).await;
                }
            }
        }
        finish(vm).await
    }

    async fn kill(&self, vm: &VmDir) -> Result<()> {
        if let Some(pid) = vm.vm_pid() {
            // SAFETY: kill(2) on the VM process pid recorded by its supervisor.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_gone(pid, Duration::from_secs(2)).await;
        }
        finish(vm).await
    }

    async fn pause(&self, vm: &VmDir) -> Result<()> {
        if vm.vm_pid().is_none() {
            return Err(RuntimeError::NotRunning(vm.name.clone()));
        }
        self.qmp(vm).await?.execute("stop", None).await.map(|_| ())
    }

    async fn resume(&self, vm: &VmDir) -> Result<()> {
        if vm.vm_pid().is_none() {
            return Err(RuntimeError::NotRunning(vm.name.clone()));
        }
        self.qmp(vm).await?.execute("cont", None).await.map(|_| ())
    }

    async fn status(&self, vm: &VmDir) -> Result<VmStatus> {
        let cfg = vm.config()?;
        let pid = vm.vm_pid();
        let ready = vm.ready();
        let state = match (pid, &ready) {
            (None, _) => VmState::Exited,
            (Some(_), None) => VmState::Booting,
            (Some(_), Some(_)) => {
                let paused = match self.qmp(vm).await {
                    Ok(mut q) => q
                        .execute("query-status", None)
                        .await
                        .ok()
                        .and_then(|v| v.get("status").and_then(|s| s.as_str().map(String::from)))
                        .is_some_and(|s| s == "paused"),
                    Err(_) => false,
                };
                if paused {
                    VmState::Paused
                } else {
                    VmState::Running
                }
            }
        };
        Ok(VmStatus {
            name: cfg.name,
            state,
            pid,
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            accel: cfg.accel,
            boot_ms: ready.map(|r| r.boot_ms),
            exit: pid
                .is_none()
                .then(|| vm.exit())
                .flatten()
                .map(|e| e.describe()),
        })
    }

    fn console(&self, vm: &VmDir) -> Console {
        Console {
            socket: vm.file("console.sock"),
            log: vm.file("console.log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemoryFile;

    fn args_after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn shares_are_read_only_9p_exports_with_their_tags() {
        let rt = QemuRuntime::new("/usr/bin/kobako".into());
        let mut cfg = crate::config::tests::cfg();
        cfg.shares = vec![
            crate::config::Share {
                path: "/srv/lab data".into(),
                tag: "kshare0".into(),
            },
            crate::config::Share {
                path: "/srv/a,b".into(),
                tag: "kshare1".into(),
            },
        ];
        let argv = rt.argv(&cfg);
        assert_eq!(
            args_after(&argv, "-fsdev"),
            [
                "local,id=share0,path=/srv/lab data,security_model=none,readonly=on,multidevs=remap",
                // A ',' in a path is doubled, or QEMU would read the rest as options.
                "local,id=share1,path=/srv/a,,b,security_model=none,readonly=on,multidevs=remap",
            ]
        );
        let devs = args_after(&argv, "-device");
        assert!(devs.contains(&"virtio-9p-device,fsdev=share0,mount_tag=kshare0"));
        assert!(devs.contains(&"virtio-9p-device,fsdev=share1,mount_tag=kshare1"));
    }

    #[test]
    fn ram_files_are_shared_by_warm_vms_and_mapped_copy_on_write_by_clones() {
        let rt = QemuRuntime::new("/usr/bin/kobako".into());
        let mut cfg = crate::config::tests::cfg();
        let plain = rt.argv(&cfg);
        assert!(args_after(&plain, "-object").is_empty());
        assert!(args_after(&plain, "-incoming").is_empty());

        cfg.memory_file = Some(MemoryFile {
            path: "/c/warm/k/build-ram.bin".into(),
            shared: true,
        });
        let warm = rt.argv(&cfg);
        assert_eq!(
            args_after(&warm, "-object"),
            ["memory-backend-file,id=ram,size=128M,mem-path=/c/warm/k/build-ram.bin,share=on"]
        );
        assert!(args_after(&warm, "-machine").contains(&"memory-backend=ram"));

        cfg.memory_file = Some(MemoryFile {
            path: "/c/warm/k/snap/ram.bin".into(),
            shared: false,
        });
        cfg.incoming = Some("/c/warm/k/snap/memory.bin".into());
        let clone = rt.argv(&cfg);
        assert_eq!(
            args_after(&clone, "-object"),
            ["memory-backend-file,id=ram,size=128M,mem-path=/c/warm/k/snap/ram.bin,share=off,readonly=on,rom=off"]
        );
        // The stream is read once `continue_restored` has set its capabilities.
        assert_eq!(args_after(&clone, "-incoming"), ["defer"]);

        // A checkpoint of that clone streams its RAM under the backend's name: restored into
        // an anonymous backend of the same name.
        cfg.memory_file = None;
        cfg.named_ram = true;
        let restored = rt.argv(&cfg);
        assert_eq!(
            args_after(&restored, "-object"),
            ["memory-backend-ram,id=ram,size=128M"]
        );
        assert!(args_after(&restored, "-machine").contains(&"memory-backend=ram"));
    }
}
