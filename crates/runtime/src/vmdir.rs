//! The runtime directory of one VM: `$KOBAKO_RUN/vms/<name>/` (default `/run/kobako`, a tmpfs, so
//! nothing survives a host reboot that should not).
//!
//! ```text
//! config.json      VmConfig                       (written by create)
//! launch.json      argv of the VM process + where its agent channel is   (written by create)
//! supervisor.pid   pid of `kobako vm supervise`
//! vm.pid           pid of the VM process (qemu-system-x86_64 ..., kobako vmm ... or firecracker ...)
//! qmp.sock         QMP (QEMU runtime)
//! vmm.json         the VMM's Firecracker-format config file (vmm runtime; restore.json: a restore's)
//! vmm/             the one directory the (jailed) VMM writes, owned by its uid: api.sock (its
//!                  Firecracker-compatible API), console.sock, vsock.sock (the vsock uds_path,
//!                  host side of the agent channel), a snapshot's files on their way out
//!                  (vmm runtime; connect with `sock::connect`, which follows no symlink)
//! booted.json      the guest's boot-complete signal as the VMM recorded it (vmm runtime)
//! stopping         present once `vm stop`/`kill` began: a guest reset then ends the VM
//! console.sock     live serial console (QEMU; the supervisor's for Firecracker; vmm/console.sock
//!                  for kobako vmm);
//!                  console.log: all console output
//! agent.sock       the agent channel, multiplexed by the supervisor for any number of clients
//! vm.log           the VM process's own stderr (QEMU errors)
//! ready.json       written once the agent said Ready (boot time, guest info)
//! exit.json        written when the VM process ended (status, max RSS, shutdown kind)
//! attached         present while a foreground `vm run` owns cleanup
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::{io, Result, RuntimeError};

pub use crate::paths::{run_root, set_run_root};

/// Where the VM process's agent channel is, for the supervisor to connect to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GuestChannel {
    /// A stream socket the VM process listens on (QEMU chardev server of a virtio-serial port).
    Unix { path: PathBuf },
    /// No agent channel: readiness is the guest's boot-complete signal (the agent's write to
    /// port 0x3f0 with `kobako.bootmark=1`), read from the VMM's API socket
    /// (`GET /kobako/boot-time`) and written to `booted.json`.
    BootSignal { api_sock: PathBuf },
    /// kobako-vmm's vsock with Firecracker's host side: connect to `uds_path`, write
    /// `CONNECT <port>\n`, read `OK ...\n`, then the agent protocol. The boot-complete signal
    /// is recorded too (`booted.json`), so a guest without AF_VSOCK is still seen booting.
    Vsock {
        uds_path: PathBuf,
        port: u32,
        api_sock: PathBuf,
        /// Poll the VMM's `GET /kobako/boot-time` (a kobako-vmm extension) for the guest's
        /// boot-complete signal; false for Firecracker, which does not have it (the agent's
        /// Ready is then the only readiness).
        #[serde(default = "yes")]
        boot_signal: bool,
    },
}

fn yes() -> bool {
    true
}

fn default_runtime() -> String {
    "qemu".into()
}

/// How to launch the VM process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    pub argv: Vec<String>,
    /// Network namespace to run the VM process in.
    #[serde(default)]
    pub netns: Option<String>,
    pub channel: GuestChannel,
    /// The runtime that created the VM ("qemu", "vmm", "firecracker"): later commands pick the
    /// same one.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Exit status of the VM process that means "the guest reset itself" (kobako-vmm: 80,
    /// Firecracker: 0). The supervisor starts a new VM process then, unless a stop is under way
    /// or the agent announced a power-off. QEMU (`-no-reboot`) has no such status: the agent's
    /// message decides.
    #[serde(default)]
    pub reset_exit_code: Option<i32>,
    /// A console socket the supervisor copies into `console.log` (runtimes whose console does not
    /// log by itself).
    #[serde(default)]
    pub console_log_from: Option<PathBuf>,
    /// The VM process's serial console is its standard input and output (Firecracker): the
    /// supervisor gives it pipes, copies the output into `console.log` and serves both ends on
    /// `console.sock` ([`crate::stdio_console`]).
    #[serde(default)]
    pub console_stdio: bool,
    /// Sockets the VM process binds itself (in its work directory), removed before each start:
    /// a socket file left by an earlier process (a reboot, a VMM killed with -9) would make the
    /// bind fail.
    #[serde(default)]
    pub stale_sockets: Vec<PathBuf>,
    /// A file the supervisor opens read-only and gives the VM process as descriptor
    /// [`INCOMING_FD`] (QEMU's `-incoming fd:3`: a restore that spawns no helper).
    #[serde(default)]
    pub incoming_fd: Option<PathBuf>,
    /// Sockets and files the supervisor opens and hands the VM process at fixed descriptor
    /// numbers, so the VM process needs no writable directory (QEMU: `fd=N`, `/dev/fdset/N`).
    #[serde(default)]
    pub pass: Vec<PassFd>,
    /// The jail the VM process runs in (None: jail turned off, or a runtime without one yet).
    #[serde(default)]
    pub jail: Option<crate::jail::Jail>,
}

/// The descriptor number a VM process finds [`Launch::incoming_fd`] at.
pub const INCOMING_FD: i32 = 3;

/// A descriptor the supervisor opens for the VM process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PassFd {
    /// A listening Unix socket bound at `path` (mode 0600, the server and supervisor connect).
    Listen { path: PathBuf, fd: i32 },
    /// A file opened write-only, append, created 0600 (a log).
    Append { path: PathBuf, fd: i32 },
}

impl PassFd {
    pub fn fd(&self) -> i32 {
        match self {
            PassFd::Listen { fd, .. } | PassFd::Append { fd, .. } => *fd,
        }
    }
}

/// Written by the supervisor when the VMM reports the guest's boot-complete signal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootRecord {
    /// Milliseconds from the VM process's spawn until the supervisor saw the signal.
    pub boot_ms: u64,
    /// The VMM's own measure: wall and CPU time from its process start to the guest's write.
    pub vmm_wall_us: u64,
    pub vmm_cpu_us: u64,
}

/// Written by the supervisor when the agent first reports Ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyRecord {
    /// Milliseconds from the VM process's spawn to the agent's Ready.
    pub boot_ms: u64,
    pub info: kobako_agent::proto::ReadyInfo,
}

/// Written by the supervisor when the VM process ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Peak RSS of the VM process in KiB (from wait4).
    pub max_rss_kib: u64,
    /// "poweroff" / "reboot" when the guest announced it; None for a crash or a kill.
    pub shutdown: Option<String>,
    pub runtime_ms: u64,
    /// The kernel killed the VM process for going over its jail's memory limit (MiB).
    #[serde(default)]
    pub oom_limit_mib: Option<u64>,
    /// What `code` means for the program that ran (kobako-vmm's and Firecracker's statuses
    /// differ: [`crate::vmm::Flavor::exit_meaning`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meaning: Option<String>,
    /// The guest kernel's panic line, when the VM ended unannounced and its console says the
    /// kernel panicked (e.g. `Attempted to kill init!`: the agent, PID 1, died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_panic: Option<String>,
}

impl ExitRecord {
    /// One line for humans.
    pub fn describe(&self) -> String {
        if let Some(mib) = self.oom_limit_mib {
            return format!(
                "VM process killed by the kernel: it went over its memory limit of {mib} MiB \
                 (the guest's RAM plus the VMM's allowance; if the VMM needs more, raise \
                 KOBAKO_JAIL_OVERHEAD_MIB)"
            );
        }
        if let Some(line) = &self.kernel_panic {
            return format!("guest kernel panic: {line} (console.log has the rest)");
        }
        match (&self.shutdown, self.code, self.signal) {
            (Some(s), _, _) => format!("guest {s}"),
            (None, _, Some(sig)) => format!("VM process killed by signal {sig}"),
            (None, Some(c), _) if self.meaning.is_some() => format!(
                "VM process exited with status {c}: {}",
                self.meaning.as_deref().unwrap_or_default()
            ),
            (None, Some(0), _) => "guest reset without announcing it (kernel panic?)".into(),
            (None, Some(c), _) => format!("VM process exited with status {c}"),
            (None, None, None) => "VM process ended".into(),
        }
    }
}

/// Handle on a VM's directory.
#[derive(Debug, Clone)]
pub struct VmDir {
    pub name: String,
    pub path: PathBuf,
}

impl VmDir {
    pub fn for_name(name: &str) -> VmDir {
        VmDir {
            name: name.to_string(),
            path: run_root().join("vms").join(name),
        }
    }

    pub fn file(&self, f: &str) -> PathBuf {
        self.path.join(f)
    }

    /// The VM's live serial console socket: the one the supervisor binds for QEMU (and serves
    /// itself for Firecracker, whose console is its standard input and output), or the one
    /// `kobako vmm` binds in its work directory ([`vmm_files::CONSOLE_SOCKET`]). Connect with
    /// [`crate::sock::connect`]: the latter is in a directory the VM's jail uid writes.
    pub fn console_socket(&self) -> PathBuf {
        match self.launch() {
            Ok(l) if l.runtime == "vmm" => self.file(vmm_files::CONSOLE_SOCKET),
            _ => self.file("console.sock"),
        }
    }

    pub fn exists(&self) -> bool {
        self.file("config.json").exists()
    }

    /// Open an existing VM by name.
    pub fn open(name: &str) -> Result<VmDir> {
        crate::config::validate_name(name)?;
        let d = VmDir::for_name(name);
        if d.exists() {
            Ok(d)
        } else {
            Err(RuntimeError::NotFound(name.to_string()))
        }
    }

    pub fn config(&self) -> Result<VmConfig> {
        read_json(&self.file("config.json"))
    }

    pub fn launch(&self) -> Result<Launch> {
        read_json(&self.file("launch.json"))
    }

    pub fn ready(&self) -> Option<ReadyRecord> {
        read_json(&self.file("ready.json")).ok()
    }

    pub fn booted(&self) -> Option<BootRecord> {
        read_json(&self.file("booted.json")).ok()
    }

    pub fn exit(&self) -> Option<ExitRecord> {
        read_json(&self.file("exit.json")).ok()
    }

    fn pid_file(&self, f: &str) -> Option<i32> {
        std::fs::read_to_string(self.file(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The VM process's pid if it is alive.
    pub fn vm_pid(&self) -> Option<i32> {
        self.pid_file("vm.pid").filter(|p| alive(*p))
    }

    /// The supervisor's pid if it is alive.
    pub fn supervisor_pid(&self) -> Option<i32> {
        self.pid_file("supervisor.pid").filter(|p| alive(*p))
    }

    /// Remove the VM: the paths its config says it owns (overlays), then the directory.
    pub fn remove(&self) -> Result<()> {
        if let Ok(cfg) = self.config() {
            remove_paths(&cfg.owned_paths)?;
        }
        if let Ok(l) = self.launch() {
            crate::jail::release(&self.path, l.jail.as_ref());
        }
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("remove {}", self.path.display()))(e)),
        }
    }

    /// The last `n` lines the console printed (for error messages).
    pub fn console_tail(&self, n: usize) -> String {
        tail(&self.file("console.log"), n)
    }

    /// The guest kernel's last panic line on the console (`Kernel panic - not syncing: ...`),
    /// cut to 200 characters of printable text (the console is the guest's to write).
    pub fn kernel_panic(&self) -> Option<String> {
        const MARK: &str = "Kernel panic - not syncing: ";
        let tail = self.console_tail(200);
        let line = tail
            .lines()
            .rev()
            .find_map(|l| l.find(MARK).map(|i| l[i + MARK.len()..].to_string()))?;
        Some(
            line.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
                .trim()
                .to_string(),
        )
    }
}

/// Remove files or directory trees created for a VM (its owned paths); missing ones are fine.
pub fn remove_paths(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        let r = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io(format!("remove {}", p.display()))(e));
            }
        }
    }
    Ok(())
}

/// Last `n` non-empty lines of a text file, indented for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "  (the console printed nothing)".into();
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Is a process alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised command) is the state; Z = zombie, X = dead.
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// All VM directories.
pub fn list() -> Vec<VmDir> {
    let mut v: Vec<VmDir> = std::fs::read_dir(run_root().join("vms"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let d = VmDir::for_name(&name);
                    d.exists().then_some(d)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let data = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
    serde_json::from_slice(&data)
        .map_err(|e| RuntimeError::Invalid(format!("{}: {e}", path.display())))
}

/// Write JSON atomically (temp file + rename), so readers never see half a file.
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec_pretty(v)
        .map_err(|e| RuntimeError::Invalid(format!("serialise {}: {e}", path.display())))?;
    std::fs::write(&tmp, data).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))
}

impl VmDir {
    /// Mark that a foreground client owns cleanup (the supervisor then keeps the directory and
    /// its console log after the VM ends, for the client to read and remove).
    pub fn attach(&self) -> Result<()> {
        std::fs::write(self.file("attached"), b"").map_err(io("write attached marker"))
    }

    /// Hand cleanup back to the supervisor. If the VM already ended, clean up now.
    pub fn detach(&self) -> Result<()> {
        let _ = std::fs::remove_file(self.file("attached"));
        if self.exit().is_some() || self.supervisor_pid().is_none() {
            self.remove()?;
        }
        Ok(())
    }
}
/// File names of the vmm runtime inside a VM's directory (re-exported by [`crate::vmm`]).
pub mod vmm_files {
    /// The one directory of a VM's directory the VMM writes (owned by its jail uid while it runs):
    /// its sockets, which it binds itself, and a snapshot's files on their way out. Everything else
    /// in the VM directory is the supervisor's and the server's.
    pub const WORK_DIR: &str = "vmm";
    /// The VMM's API socket, in [`WORK_DIR`].
    pub const API_SOCKET: &str = "vmm/api.sock";
    /// The VMM's vsock `uds_path`, in [`WORK_DIR`].
    pub const VSOCK_SOCKET: &str = "vmm/vsock.sock";
    /// The VMM's serial console socket, in [`WORK_DIR`].
    pub const CONSOLE_SOCKET: &str = "vmm/console.sock";

    /// A vmm snapshot's files: the VMM's state file (vCPUs, VM, devices, configuration) and the
    /// guest's RAM (sparse, `memory_mib` MiB; mapped privately on restore, never written).
    pub const STATE_FILE: &str = "vmstate.bin";
    pub const MEMORY_FILE: &str = "memory.bin";
    /// The `--snapshot-load` document in the VM directory of a restored VM.
    pub const RESTORE_FILE: &str = "restore.json";
}
