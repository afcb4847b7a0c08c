//! The per-VM supervisor (`kobako vm supervise DIR`): a small synchronous process, one per VM,
//! started detached (own session) by [`crate::Runtime::start`].
//!
//! It owns three things for the VM's whole life:
//! 1. The VM process: spawns it (dying with the supervisor: `PR_SET_PDEATHSIG`), waits for it,
//!    starts a new one when the guest announced a reboot (at most 5 quick reboots in a row),
//!    otherwise writes `exit.json` (status, peak RSS, whether the guest announced a power-off) and
//!    removes the VM directory unless a foreground `vm run` is attached and will do it.
//! 2. The host end of the agent channel. Runtimes expose one stream to the guest (QEMU: a chardev
//!    socket that accepts one client). The supervisor connects once and serves `agent.sock` to any
//!    number of clients, mapping each client's stream ids to unique guest stream ids and routing the
//!    replies back. Stream-0 events (Ready, ShuttingDown) go to every client.
//! 3. The boot-time record: the agent's first Ready is timestamped against the VM process spawn and
//!    written to `ready.json`.
//!
//! Threads: main (spawn + wait4), guest reader, acceptor, one reader per client.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kobako_agent::proto::{self, Frame, Kind, Msg};

use crate::jail::JoinError;
use crate::vmdir::{
    write_json, BootRecord, ExitRecord, GuestChannel, Launch, PassFd, ReadyRecord, VmDir,
    INCOMING_FD,
};
use crate::RuntimeError;

type Writer = Arc<Mutex<UnixStream>>;

/// Why the supervisor could not start (or restart) its VM; printed as `kobako supervise: ...`
/// on its stderr, which the runtime shows when the VM does not come up.
#[derive(Debug, thiserror::Error)]
enum SuperviseError {
    /// The VM directory's launch.json.
    #[error("{0}")]
    Launch(RuntimeError),
    /// Host I/O, naming what was being done.
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("launch.json: empty argv")]
    EmptyArgv,
    /// The jail could not be prepared.
    #[error("jail: {0}")]
    Jail(RuntimeError),
    #[error("jail still shared after spawn")]
    JailShared,
    #[error("the cgroup-join thread panicked")]
    JoinerPanicked,
    #[error(transparent)]
    Join(#[from] JoinError),
}

/// Host I/O that failed while doing `what`.
fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SuperviseError {
    let what = what.into();
    move |err| SuperviseError::Io { what, err }
}

#[derive(Default)]
struct Routes {
    /// guest stream -> (client id, client stream)
    to_client: HashMap<u32, (u64, u32)>,
    /// (client id, client stream) -> guest stream
    to_guest: HashMap<(u64, u32), u32>,
}

struct Shared {
    vm: VmDir,
    /// When the current VM process (this boot) started.
    started: Mutex<Instant>,
    guest: Mutex<Option<UnixStream>>,
    clients: Mutex<HashMap<u64, Writer>>,
    routes: Mutex<Routes>,
    next_stream: AtomicU32,
    next_client: AtomicU64,
    ready: Mutex<Option<kobako_agent::proto::ReadyInfo>>,
    shutdown: Mutex<Option<bool>>,
    /// The runtime has no agent channel at all (kobako-vmm before virtio).
    no_channel: bool,
    /// The agent said Ready at least once (in any boot).
    ever_ready: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn to_guest(&self, f: &Frame) -> bool {
        let mut g = lock(&self.guest);
        match g.as_mut() {
            Some(s) => proto::write_frame(s, f).is_ok(),
            None => false,
        }
    }

    fn to_client(&self, client: u64, f: &Frame) {
        let w = lock(&self.clients).get(&client).cloned();
        if let Some(w) = w {
            let _ = proto::write_frame(&mut *lock(&w), f);
        }
    }

    fn broadcast(&self, f: &Frame) {
        let all: Vec<Writer> = lock(&self.clients).values().cloned().collect();
        for w in all {
            let _ = proto::write_frame(&mut *lock(&w), f);
        }
    }
}

/// Entry point of `kobako vm supervise DIR`. Returns the process exit code.
pub fn run(dir: &Path) -> i32 {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let vm = VmDir {
        name,
        path: dir.to_path_buf(),
    };
    match supervise(vm) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kobako supervise: {e}");
            1
        }
    }
}

fn supervise(vm: VmDir) -> Result<(), SuperviseError> {
    let mut launch = vm.launch().map_err(SuperviseError::Launch)?;
    if launch.jail.is_some() {
        crate::jail::warm_up_moves();
    }
    std::fs::write(vm.file("supervisor.pid"), std::process::id().to_string())
        .map_err(io_err("write supervisor.pid"))?;
    let agent_sock = vm.file("agent.sock");
    let _ = std::fs::remove_file(&agent_sock);
    let listener = UnixListener::bind(&agent_sock)
        .map_err(io_err(format!("bind {}", agent_sock.display())))?;

    let vm_log = std::fs::File::create(vm.file("vm.log")).map_err(io_err("vm.log"))?;
    // The VM process's sockets and log: opened here once, kept across its reboots.
    let passed = open_passed(&launch.pass)?;
    // A console on the VM process's standard input and output (Firecracker), likewise.
    let stdio_console = match launch.console_stdio {
        true => Some(
            crate::stdio_console::StdioConsole::start(
                &vm.file("console.sock"),
                &vm.file("console.log"),
                CONSOLE_LOG_MAX,
                |log| {
                    let _ = cap_log(log, CONSOLE_LOG_MAX, CONSOLE_LOG_KEEP);
                },
            )
            .map_err(io_err("serve the VM process's console on console.sock"))?,
        ),
        false => None,
    };
    let shared = Arc::new(Shared {
        vm: vm.clone(),
        started: Mutex::new(Instant::now()),
        guest: Mutex::new(None),
        clients: Mutex::new(HashMap::new()),
        routes: Mutex::new(Routes::default()),
        next_stream: AtomicU32::new(1),
        next_client: AtomicU64::new(1),
        ready: Mutex::new(None),
        shutdown: Mutex::new(None),
        no_channel: matches!(launch.channel, GuestChannel::BootSignal { .. }),
        ever_ready: std::sync::atomic::AtomicBool::new(false),
    });
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let shared = shared.clone();
                    std::thread::spawn(move || client_loop(shared, conn));
                }
            })
            .map_err(io_err("start the accept thread"))?;
    }

    // One VM process per boot: a guest reboot (announced by the agent) starts a new one with the
    // same configuration, like a machine's reset button; anything else ends the VM.
    let first_start = Instant::now();
    let mut quick_reboots = 0;
    let rec = loop {
        // Sockets an earlier VM process left behind would make this one's bind fail.
        for stale in &launch.stale_sockets {
            let _ = std::fs::remove_file(stale);
        }
        let (child, pid, boot_started) =
            spawn_vm(&vm, &launch, &vm_log, &passed, stdio_console.as_ref())?;
        *lock(&shared.started) = boot_started;
        {
            let shared = shared.clone();
            let channel = launch.channel.clone();
            std::thread::Builder::new()
                .name("guest".into())
                .spawn(move || match channel {
                    GuestChannel::Unix { .. } => guest_loop(shared, channel, pid),
                    GuestChannel::BootSignal { api_sock } => {
                        boot_signal_loop(shared, &api_sock, pid)
                    }
                    GuestChannel::Vsock {
                        ref api_sock,
                        boot_signal,
                        ..
                    } => {
                        if boot_signal {
                            let (sh, sock) = (shared.clone(), api_sock.clone());
                            let _ = std::thread::Builder::new()
                                .name("boot-signal".into())
                                .spawn(move || boot_signal_loop(sh, &sock, pid));
                        }
                        guest_loop(shared, channel, pid)
                    }
                })
                .map_err(io_err("start the guest thread"))?;
        }
        let log = vm.file("console.log");
        if let Some(sock) = launch.console_log_from.clone() {
            std::thread::Builder::new()
                .name("console-log".into())
                .spawn(move || console_log_loop(&sock, &log, pid))
                .map_err(io_err("start the console-log thread"))?;
        } else if stdio_console.is_none() {
            // The VMM writes the log itself (QEMU's chardev logfile, opened O_APPEND): cut it
            // back to its tail whenever it outgrows the cap.
            std::thread::Builder::new()
                .name("console-cap".into())
                .spawn(move || {
                    while crate::vmdir::alive(pid) {
                        let _ = cap_log(&log, CONSOLE_LOG_MAX, CONSOLE_LOG_KEEP);
                        std::thread::sleep(Duration::from_millis(500));
                    }
                })
                .map_err(io_err("start the console-cap thread"))?;
        }
        let (code, signal, max_rss_kib) = wait_vm(child);
        let _ = std::fs::remove_file(vm.file("vm.pid"));
        let oom_limit_mib = launch.jail.as_ref().and_then(|j| {
            let oom = signal == Some(libc::SIGKILL) && crate::jail::oom_killed(&j.cgroup);
            leave_jail(j);
            oom.then_some(j.limits.memory_mib)
        });
        let shutdown = lock(&shared.shutdown).take();
        let stopping = vm.file("stopping").exists();
        let reset = guest_reset(launch.reset_exit_code, code, shutdown, stopping);
        if shutdown == Some(true) || reset {
            if boot_started.elapsed() < Duration::from_secs(2) {
                quick_reboots += 1;
            } else {
                quick_reboots = 0;
            }
            if quick_reboots < 5 {
                // A VM restored from a snapshot reboots into a fresh boot, not the snapshot.
                strip_incoming(&mut launch.argv, &vm);
                launch.incoming_fd = None;
                *lock(&shared.ready) = None;
                let _ = std::fs::remove_file(vm.file("ready.json"));
                let _ = std::fs::remove_file(vm.file("booted.json"));
                continue;
            }
        }
        break ExitRecord {
            code,
            signal,
            max_rss_kib,
            shutdown: shutdown.map(|reboot| if reboot { "reboot" } else { "poweroff" }.to_string()),
            runtime_ms: first_start.elapsed().as_millis() as u64,
            oom_limit_mib,
            meaning: code
                .zip(crate::vmm::Flavor::of_runtime(&launch.runtime))
                .and_then(|(c, f)| f.exit_meaning(c))
                .map(str::to_string),
            // Nobody asked for this end: did the guest kernel panic (its agent, PID 1, died)?
            kernel_panic: (shutdown.is_none() && !stopping && signal.is_none())
                .then(|| vm.kernel_panic())
                .flatten(),
        };
    };
    let _ = std::fs::remove_file(&agent_sock);
    if stdio_console.is_some() {
        let _ = std::fs::remove_file(vm.file("console.sock"));
    }
    // A VM that ended before its agent was ever ready keeps its directory (exit.json, vm.log,
    // console.log) for whoever waits for it to report why; that waiter (or `down`/`vm rm`)
    // removes it. A foreground `vm run` likewise reads exit.json and removes the directory.
    let died_booting = !launch_has_no_agent(&shared) && !shared.ever_ready.load(Ordering::Relaxed);
    // A VM the kernel killed for its memory, or whose guest kernel panicked, keeps its record
    // too: `vm ls`/`lab status` say why instead of the VM vanishing.
    let crashed = rec.oom_limit_mib.is_some() || rec.kernel_panic.is_some();
    if vm.file("attached").exists() || died_booting || crashed {
        let _ = write_json(&vm.file("exit.json"), &rec);
    } else {
        let _ = vm.remove();
    }
    Ok(())
}

/// Did the VM process end because the guest reset itself (and should it start again)? Only
/// runtimes that report a reset by exit status say so (kobako-vmm: 80; Firecracker: 0, which
/// is also how it ends after the agent's announced power-off): never while a stop is under way
/// (`stopping`) or after the agent announced a power-off.
fn guest_reset(
    reset_exit_code: Option<i32>,
    code: Option<i32>,
    shutdown: Option<bool>,
    stopping: bool,
) -> bool {
    reset_exit_code.is_some() && code == reset_exit_code && shutdown != Some(false) && !stopping
}

fn launch_has_no_agent(shared: &Shared) -> bool {
    shared.no_channel
}

/// Turns a restore into a fresh boot: removes QEMU's `-incoming SOURCE`, and replaces
/// kobako-vmm's `--snapshot-load FILE` with `--config-file` and the VM's `vmm.json`.
fn strip_incoming(argv: &mut Vec<String>, vm: &VmDir) {
    if let Some(i) = argv.iter().position(|a| a == "-incoming") {
        argv.drain(i..(i + 2).min(argv.len()));
    }
    if let Some(i) = argv.iter().position(|a| a == "--snapshot-load") {
        argv[i] = "--config-file".into();
        let cfg = vm.file("vmm.json").display().to_string();
        match argv.get_mut(i + 1) {
            Some(a) => *a = cfg,
            None => argv.push(cfg),
        }
    }
}

/// Open files a VM process may hold (QEMU: a few dozen; kobako-vmm: its devices, API
/// connections and vsock streams).
const VM_MAX_FILES: libc::rlim_t = 4096;

/// A descriptor the supervisor holds for the VM process: the open file, and the number the VM
/// process finds it at.
struct Passed {
    fd: std::os::fd::OwnedFd,
    target: i32,
}

/// Lowest descriptor number the supervisor keeps its copies at, so that moving them to their
/// targets (3..) in the child never overwrites one not yet moved.
const PASS_FD_FLOOR: i32 = 32;

/// A close-on-exec copy of `fd` at or above [`PASS_FD_FLOOR`].
fn above_floor(fd: &impl AsRawFd) -> Result<std::os::fd::OwnedFd, SuperviseError> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the caller holds returns a new one.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PASS_FD_FLOOR) };
    if high < 0 {
        return Err(io_err("dup")(std::io::Error::last_os_error()));
    }
    // SAFETY: high is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(high) })
}

/// Binds the listening sockets and opens the files of `pass`, each copied to a descriptor at or
/// above [`PASS_FD_FLOOR`].
fn open_passed(pass: &[PassFd]) -> Result<Vec<Passed>, SuperviseError> {
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for p in pass {
        let first: OwnedFd = match p {
            PassFd::Listen { path, .. } => {
                let _ = std::fs::remove_file(path);
                let l =
                    UnixListener::bind(path).map_err(io_err(format!("bind {}", path.display())))?;
                // The server and this supervisor (root) connect; nobody else.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io_err(format!("chmod {}", path.display())))?;
                l.into()
            }
            PassFd::Append { path, .. } => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(io_err(format!("open {}", path.display())))?
                .into(),
        };
        out.push(Passed {
            fd: above_floor(&first)?,
            target: p.fd(),
        });
    }
    Ok(out)
}

/// Gives the VM's writable files to its jail uid (before a boot).
fn enter_jail_files(j: &crate::jail::Jail) -> Result<(), SuperviseError> {
    for p in &j.writable {
        std::os::unix::fs::lchown(p, Some(j.uid), Some(j.gid))
            .map_err(io_err(format!("give {} to the jail uid", p.display())))?;
    }
    Ok(())
}

/// After the VM process ended: its files back to root, its cgroups gone.
fn leave_jail(j: &crate::jail::Jail) {
    for p in &j.writable {
        let _ = std::os::unix::fs::lchown(p, Some(0), Some(0));
    }
    crate::jail::remove_cgroups(&j.cgroup);
}

/// Start the VM process (in its network namespace and jail, dying with us). Returns the pid of
/// our child (what to wait for), the VM process's pid (in a jail, the child's child), and when
/// it started.
fn spawn_vm(
    vm: &VmDir,
    launch: &Launch,
    log: &std::fs::File,
    passed: &[Passed],
    console: Option<&crate::stdio_console::StdioConsole>,
) -> Result<(i32, i32, Instant), SuperviseError> {
    let (prog, args) = launch.argv.split_first().ok_or(SuperviseError::EmptyArgv)?;
    let mut cmd = Command::new(prog);
    // Nothing of the host's environment (a server's secrets may be there): the VM process
    // reads none of it. KOBAKO_VM names the VM directory, for whoever looks at processes.
    cmd.args(args)
        .env_clear()
        .env("KOBAKO_VM", &vm.path)
        .stderr(log.try_clone().map_err(io_err("vm.log"))?);
    match console {
        // Its serial console (Firecracker's) on the supervisor's pipes.
        Some(c) => {
            let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map_err(io_err("console pipe"));
            cmd.stdin(Stdio::from(dup(&c.stdin)?))
                .stdout(Stdio::from(dup(&c.stdout)?));
        }
        None => {
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io_err("vm.log"))?);
        }
    }
    // The lab's namespace, opened before the fork so the child only has to setns.
    let netns_fd: Option<std::fs::File> = match &launch.netns {
        Some(ns) => Some(
            std::fs::File::open(format!("/run/netns/{ns}"))
                .map_err(io_err(format!("network namespace {ns}")))?,
        ),
        None => None,
    };
    let netns_raw = netns_fd.as_ref().map(|f| f.as_raw_fd());
    // A restore's migration stream, opened here (read-only) and found by the VM process at
    // INCOMING_FD: it then needs to spawn nothing to read it.
    let incoming: Option<std::os::fd::OwnedFd> = match &launch.incoming_fd {
        Some(p) => {
            let f = std::fs::File::open(p)
                .map_err(io_err(format!("snapshot state {}", p.display())))?;
            Some(above_floor(&f)?)
        }
        None => None,
    };
    // (source, target) pairs; every source is >= PASS_FD_FLOOR > every target.
    let mut moves: Vec<(i32, i32)> = passed
        .iter()
        .map(|p| (p.fd.as_raw_fd(), p.target))
        .collect();
    if let Some(f) = &incoming {
        moves.push((f.as_raw_fd(), INCOMING_FD));
    }
    let (jail, joiner) = match &launch.jail {
        Some(j) => {
            enter_jail_files(j)?;
            let (prepared, joiner) = crate::jail::Prepared::new(j).map_err(SuperviseError::Jail)?;
            // Puts the VM process into its cgroups while it builds its root (Joiner).
            let joiner = std::thread::Builder::new()
                .name("cgroup-join".into())
                .spawn(move || joiner.run())
                .map_err(io_err("jail"))?;
            (Some(Arc::new(prepared)), Some(joiner))
        }
        None => (None, None),
    };
    let in_child = jail.clone();
    // SAFETY: prctl, setns, dup2, setrlimit and the jail's steps (Prepared::enter: plain
    // system calls on data prepared above) in the child between fork and exec are
    // async-signal-safe; every descriptor used stays open in the parent until after spawn.
    unsafe {
        cmd.pre_exec(move || {
            // Never leave an unsupervised VM behind: if the supervisor dies, so does the VM.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The VM process and what it runs can never gain privileges through exec
            // (setuid binaries, file capabilities), dump no core (guest memory would land on
            // the host's disk), and open a bounded number of files.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let files = libc::rlimit {
                rlim_cur: VM_MAX_FILES,
                rlim_max: VM_MAX_FILES,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &core) != 0
                || libc::setrlimit(libc::RLIMIT_NOFILE, &files) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = netns_raw {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // dup2 leaves each copy open across exec.
            for &(src, target) in &moves {
                if libc::dup2(src, target) != target {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(j) = &in_child {
                j.enter()?;
            }
            Ok(())
        });
    }
    let spawning = Instant::now();
    let spawned = cmd.spawn();
    let started = Instant::now();
    drop(cmd);
    // Our copy of the pid pipe's write end goes now: a joiner waiting for a child that died
    // early reads end of file and ends.
    let jail = jail.map(|j| Arc::try_unwrap(j).map_err(|_| SuperviseError::JailShared));
    let joined = match (jail, joiner) {
        (Some(j), Some(joiner)) => {
            let mut j = j?;
            j.spawned();
            Some(
                joiner
                    .join()
                    .map_err(|_| SuperviseError::JoinerPanicked)
                    .and_then(|r| r.map_err(SuperviseError::Join)),
            )
        }
        _ => None,
    };
    let child = spawned.map_err(io_err(format!("start {prog}")))?;
    let child_pid = child.id() as i32;
    // The child is reaped by wait_vm (wait4), not through `Child`.
    std::mem::forget(child);
    let vm_pid = match joined {
        Some(pid) => pid?,
        None => child_pid,
    };
    std::fs::write(vm.file("vm.pid"), vm_pid.to_string()).map_err(io_err("write vm.pid"))?;
    // What starting it cost (fork, the jail's setup, exec), for whoever measures the jail.
    eprintln!(
        "kobako supervise: VM process {vm_pid} started in {:.2} ms{}",
        (started - spawning).as_secs_f64() * 1000.0,
        if launch.jail.is_some() {
            " (jailed)"
        } else {
            ""
        }
    );
    Ok((child_pid, vm_pid, started))
}

/// Wait for the VM process; returns (exit code, signal, peak RSS in KiB) from wait4.
fn wait_vm(pid: i32) -> (Option<i32>, Option<i32>, u64) {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; zeroed is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers; pid is our child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    (code, signal, ru.ru_maxrss as u64)
}

fn connect_guest(channel: &GuestChannel, vm_pid: i32) -> Option<UnixStream> {
    match channel {
        GuestChannel::BootSignal { .. } => None,
        GuestChannel::Vsock { uds_path, port, .. } => {
            // The guest's agent listens once userspace is up: until then the VMM answers with
            // a closed socket (RST from the guest) or no answer (driver not up). Back off from
            // 10 ms to 200 ms between tries, so a booting guest is not flooded.
            let mut pause = Duration::from_millis(10);
            loop {
                match crate::fcapi::vsock_connect(uds_path, *port, Duration::from_secs(2)) {
                    Ok(s) => return Some(s),
                    Err(_) if crate::vmdir::alive(vm_pid) => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                    Err(_) => return None,
                }
            }
        }
        GuestChannel::Unix { path } => loop {
            if let Ok(s) = crate::sock::connect(path) {
                return Some(s);
            }
            if !crate::vmdir::alive(vm_pid) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        },
    }
}

fn guest_loop(shared: Arc<Shared>, channel: GuestChannel, vm_pid: i32) {
    let Some((stream, first)) = connect_agent(&channel, vm_pid) else {
        return;
    };
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    *lock(&shared.guest) = Some(stream);
    if let Some(frame) = first {
        from_guest(&shared, frame);
    }
    // A read error means the VM process closed the channel: it is ending.
    while let Ok(frame) = proto::read_frame(&mut reader) {
        from_guest(&shared, frame);
    }
    *lock(&shared.guest) = None;
}

/// Connects to the guest's agent. On vsock the agent's first frame (`Ready`, sent as soon as it
/// accepts) is awaited here, with a deadline that doubles from 3 s up to 30 s per try: a guest
/// restored from a snapshot drops its sockets when it handles the VMM's transport reset, and a
/// connection the host opened just before that is dead in the guest without the host being
/// told. Such a connection is dropped and the next one is served.
fn connect_agent(channel: &GuestChannel, vm_pid: i32) -> Option<(UnixStream, Option<Frame>)> {
    let mut wait = Duration::from_secs(3);
    loop {
        let stream = connect_guest(channel, vm_pid)?;
        if !matches!(channel, GuestChannel::Vsock { .. }) {
            return Some((stream, None));
        }
        let mut reader = stream.try_clone().ok()?;
        stream.set_read_timeout(Some(wait)).ok()?;
        match proto::read_frame(&mut reader) {
            Ok(frame) => {
                stream.set_read_timeout(None).ok()?;
                return Some((stream, Some(frame)));
            }
            Err(_) if crate::vmdir::alive(vm_pid) => {
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(_) => return None,
        }
    }
}

/// One frame from the guest: stream-0 events recorded and broadcast, the rest routed to the
/// client that owns the stream.
fn from_guest(shared: &Shared, frame: Frame) {
    if frame.stream == 0 {
        match frame.to_msg() {
            Ok(Msg::Ready(info)) => {
                shared.ever_ready.store(true, Ordering::Relaxed);
                let first = lock(&shared.ready).is_none();
                *lock(&shared.ready) = Some(info.clone());
                if first {
                    let _ = write_json(
                        &shared.vm.file("ready.json"),
                        &ReadyRecord {
                            boot_ms: lock(&shared.started).elapsed().as_millis() as u64,
                            info,
                        },
                    );
                }
            }
            Ok(Msg::ShuttingDown { reboot }) => *lock(&shared.shutdown) = Some(reboot),
            _ => {}
        }
        shared.broadcast(&frame);
        return;
    }
    let route = lock(&shared.routes).to_client.get(&frame.stream).copied();
    let Some((client, client_stream)) = route else {
        return; // the client went away
    };
    let ends = frame.kind == Kind::Msg
        && matches!(
            frame.to_msg(),
            Ok(Msg::Exited { .. }) | Ok(Msg::Error { .. })
        );
    let guest_stream = frame.stream;
    shared.to_client(
        client,
        &Frame {
            stream: client_stream,
            ..frame
        },
    );
    if ends {
        let mut r = lock(&shared.routes);
        r.to_client.remove(&guest_stream);
        r.to_guest.remove(&(client, client_stream));
    }
}

fn client_loop(shared: Arc<Shared>, conn: UnixStream) {
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let Ok(writer) = conn.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(writer));
    lock(&shared.clients).insert(id, writer.clone());
    let mut reader = conn;
    while let Ok(frame) = proto::read_frame(&mut reader) {
        if frame.stream == 0 {
            // Hello: answer from the cached Ready (the agent said it once already), else forward.
            if let Some(info) = lock(&shared.ready).clone() {
                let _ = proto::write_frame(&mut *lock(&writer), &Frame::msg(0, &Msg::Ready(info)));
            } else {
                shared.to_guest(&frame);
            }
            continue;
        }
        let guest_stream = {
            let mut r = lock(&shared.routes);
            match r.to_guest.get(&(id, frame.stream)) {
                Some(g) => *g,
                None => {
                    let g = shared.next_stream.fetch_add(1, Ordering::Relaxed);
                    r.to_guest.insert((id, frame.stream), g);
                    r.to_client.insert(g, (id, frame.stream));
                    g
                }
            }
        };
        if !shared.to_guest(&Frame {
            stream: guest_stream,
            ..frame
        }) {
            let msg = if shared.no_channel {
                "this VM has no agent channel (it was started with only the boot-complete \
                 signal): run the VM with --runtime qemu, or recreate it, to use exec, cp or shell"
            } else if shared.ready.lock().map(|r| r.is_some()).unwrap_or(false) {
                "the guest's agent channel is closed (the VM is shutting down)"
            } else {
                "the guest agent is not connected yet (VM still booting)"
            };
            let _ = proto::write_frame(
                &mut *lock(&writer),
                &Frame::msg(
                    frame.stream,
                    &Msg::Error {
                        message: msg.into(),
                    },
                ),
            );
        }
    }
    // The client is gone: kill what it left running, forget its streams.
    lock(&shared.clients).remove(&id);
    let orphaned: Vec<u32> = {
        let mut r = lock(&shared.routes);
        let keys: Vec<(u64, u32)> = r.to_guest.keys().filter(|k| k.0 == id).copied().collect();
        keys.iter()
            .filter_map(|k| {
                let g = r.to_guest.remove(k)?;
                r.to_client.remove(&g);
                Some(g)
            })
            .collect()
    };
    for g in orphaned {
        shared.to_guest(&Frame::msg(
            g,
            &Msg::Signal {
                signal: libc::SIGKILL,
            },
        ));
    }
}

/// The readiness of a VM without an agent channel: poll the VMM's API for the guest's
/// boot-complete signal and record it in `booted.json`.
///
/// A guest restored from a snapshot does not signal again: the loop ends once its agent is
/// ready, and polls less often after the first seconds.
fn boot_signal_loop(shared: Arc<Shared>, api_sock: &Path, vm_pid: i32) {
    let t0 = Instant::now();
    while crate::vmdir::alive(vm_pid) && lock(&shared.ready).is_none() {
        if let Ok(Some((wall_us, cpu_us))) = crate::fcapi::boot_time(api_sock) {
            let _ = write_json(
                &shared.vm.file("booted.json"),
                &BootRecord {
                    boot_ms: lock(&shared.started).elapsed().as_millis() as u64,
                    vmm_wall_us: wall_us,
                    vmm_cpu_us: cpu_us,
                },
            );
            return;
        }
        // Each poll is a line in the VMM's log until the guest signals: often while a fast
        // boot is expected, then (a slow boot: TCG-like PVM hosts take minutes) rarely.
        std::thread::sleep(if t0.elapsed() < Duration::from_secs(10) {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(250)
        });
    }
}

/// Copy everything the console socket prints into the console log (append), for runtimes whose
/// console has no log of its own. Ends when the VM process closes the socket.
fn console_log_loop(sock: &Path, log: &Path, vm_pid: i32) {
    use std::io::{Read, Write};
    let mut conn = loop {
        if let Ok(c) = crate::sock::connect(sock) {
            break c;
        }
        if !crate::vmdir::alive(vm_pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let Ok(mut out) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    else {
        return;
    };
    let mut size = out.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || out.write_all(&buf[..n]).is_err() {
            break;
        }
        size += n as u64;
        if size > CONSOLE_LOG_MAX {
            let _ = cap_log(log, CONSOLE_LOG_MAX, CONSOLE_LOG_KEEP);
            size = out.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
}

/// The console log (written by the guest) is cut back when it grows past this...
pub const CONSOLE_LOG_MAX: u64 = 8 << 20;
/// ...to its last this many bytes, after a marker line.
pub const CONSOLE_LOG_KEEP: u64 = 2 << 20;
/// The first line of a log that was cut back.
pub const CONSOLE_LOG_MARKER: &[u8] = b"[kobako: console log truncated, older output dropped]\n";

/// Cut `path` back to its last `keep` bytes (after [`CONSOLE_LOG_MARKER`]) when it is larger
/// than `max`; returns whether it did. Writers must append (`O_APPEND`): their next write then
/// lands after the tail. Another writer's output between the read of the tail and the
/// truncation is lost, and what it appends between the truncation and the rewrite lands before
/// the marker (measured with QEMU writing a flooding guest's console byte by byte: 453 bytes,
/// once per `max - keep` bytes).
pub fn cap_log(path: &Path, max: u64, keep: u64) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let len = f.metadata()?.len();
    if len <= max {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - keep.min(len)))?;
    let mut tail = Vec::with_capacity(keep as usize);
    Read::by_ref(&mut f).take(keep).read_to_end(&mut tail)?;
    f.set_len(0)?;
    let mut out = Vec::with_capacity(CONSOLE_LOG_MARKER.len() + tail.len());
    out.extend_from_slice(CONSOLE_LOG_MARKER);
    out.extend_from_slice(&tail);
    f.write_all(&out)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest printing without end: the log is cut back to its tail, and an appending writer
    /// (QEMU's logfile) goes on after it.
    #[test]
    fn guest_flooding_the_console_log_gets_it_cut_to_its_tail() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        assert!(
            !cap_log(&p, 1000, 100).unwrap(),
            "missing or small: untouched"
        );
        let line = b"0123456789abcdef";
        for _ in 0..100 {
            w.write_all(line).unwrap();
        }
        w.write_all(b"last words").unwrap();
        assert!(cap_log(&p, 1000, 100).unwrap());
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), CONSOLE_LOG_MARKER.len() + 100);
        assert!(got.starts_with(CONSOLE_LOG_MARKER));
        assert!(got.ends_with(b"last words"));
        w.write_all(b"+more").unwrap();
        let got = std::fs::read(&p).unwrap();
        assert!(got.ends_with(b"last words+more"), "appended after the tail");
        // A symlink planted at the log's name is not followed.
        let target = d.path().join("target");
        std::fs::write(&target, vec![b'x'; 2000]).unwrap();
        let link = d.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(cap_log(&link, 1000, 100).is_err());
        assert_eq!(std::fs::metadata(&target).unwrap().len(), 2000);
    }

    /// Exit statuses per VMM: kobako-vmm's 80 and Firecracker's 0 are the guest's reset (a new
    /// VM process), unless a stop is under way or the agent announced a power-off; QEMU reports
    /// none (the agent's message decides); any other status ends the VM.
    #[test]
    fn a_reset_is_the_exit_status_of_the_vmm_that_ran() {
        use crate::vmm::Flavor;
        let (k, f) = (
            Some(Flavor::Kobako.reset_exit_code()),
            Some(Flavor::Firecracker.reset_exit_code()),
        );
        assert!(guest_reset(k, Some(80), None, false));
        assert!(guest_reset(k, Some(80), Some(true), false));
        assert!(
            !guest_reset(k, Some(0), None, false),
            "kobako-vmm: 0 is a power-off"
        );
        assert!(
            guest_reset(f, Some(0), None, false),
            "Firecracker: 0 is the reset"
        );
        assert!(guest_reset(f, Some(0), Some(true), false));
        assert!(!guest_reset(f, Some(80), None, false));
        assert!(!guest_reset(f, None, None, false), "killed by a signal");
        for r in [k, f] {
            let code = r;
            assert!(
                !guest_reset(r, code, Some(false), false),
                "announced power-off"
            );
            assert!(!guest_reset(r, code, None, true), "vm stop under way");
            assert!(!guest_reset(r, Some(152), None, false));
        }
        assert!(!guest_reset(None, Some(0), None, false), "QEMU");
    }

    #[test]
    fn a_restored_vm_reboots_into_a_fresh_boot() {
        let vm = VmDir {
            name: "v".into(),
            path: "/run/kobako/vms/v".into(),
        };
        let mut vmm: Vec<String> = ["kobako", "vmm", "--api-sock", "a", "--snapshot-load"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "/run/kobako/vms/v/restore.json".into(),
                "--level".into(),
                "Info".into(),
            ])
            .collect();
        strip_incoming(&mut vmm, &vm);
        assert_eq!(
            vmm[4..],
            [
                "--config-file",
                "/run/kobako/vms/v/vmm.json",
                "--level",
                "Info"
            ]
        );
        let mut qemu: Vec<String> = ["qemu", "-m", "128M", "-incoming", "exec:cat 'x'", "-S"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        strip_incoming(&mut qemu, &vm);
        assert_eq!(qemu, ["qemu", "-m", "128M", "-S"]);
    }
}
