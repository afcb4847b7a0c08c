//! kobako-agent: PID 1 on tiny images, a service on distro images; serves the agent protocol
//! (`kobako_agent::proto`) on the virtio-serial port `kobako.agent` and, when the guest has
//! AF_VSOCK, on vsock port `proto::VSOCK_PORT` (one host connection at a time; a new one takes
//! over the output of running sessions, as a virtio-serial reconnect does).
//!
//! Threads: main (init, then reads frames from the host), reaper (waitpid), signals (sigwait for
//! power-off/reboot requests from busybox `poweroff`/`reboot`), console (respawned shell), and per
//! exec session one waiter plus one reader per output stream.

mod exec;
mod files;
mod identity;
mod init;
mod netcfg;
mod services;
mod shares;

use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kobako_agent::proto::{self, Frame, Kind, Msg, ReadyInfo};
use kobako_agent::reaper;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Marker printed on the console by `kobako.marker=...` (used by the boot benchmark's raw-QEMU
/// baseline, which has no agent channel).
const MARKER: &str = "KOBAKO-BOOT-MARKER";

fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// `kobako.*` parameters from the kernel command line.
fn cmdline_params() -> HashMap<String, String> {
    let s = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    s.split_whitespace()
        .filter_map(|w| w.strip_prefix("kobako."))
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (w.to_string(), String::new()),
        })
        .collect()
}

fn main() {
    let agent_start_ms = boottime_ms();
    let pid1 = std::process::id() == 1;
    if pid1 {
        block_shutdown_signals();
        init::mount_api_filesystems();
        // If the OOM killer took PID 1 the kernel would panic and the VM would vanish: a guest
        // that runs out of memory must lose a process, not the machine.
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
        reaper::start();
    }
    let params = cmdline_params();
    if pid1 {
        let hostname = params
            .get("hostname")
            .cloned()
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "kobako".into());
        init::set_hostname(&hostname);
        init::link_up("lo");
        std::env::set_var("PATH", DEFAULT_PATH);
        std::env::set_var("HOME", "/root");
        spawn_signal_thread();
        if params.get("console").map(String::as_str) != Some("off") {
            init::spawn_console_shell(params.get("tty").map(String::as_str).unwrap_or("ttyS0"));
        }
    }
    if let Some(m) = params.get("marker") {
        init::console(MARKER);
        if m == "poweroff" {
            init::shutdown(false, pid1);
        }
    }
    if params.get("bootmark").is_some_and(|v| v == "1") {
        if let Err(e) = init::boot_mark() {
            init::console(&format!("kobako-agent: boot-complete signal: {e}"));
        }
    }
    let info = ready_info(agent_start_ms);
    let sessions: Sessions = Arc::new(Mutex::new(HashMap::new()));
    let vsock = match vsock_listener(proto::VSOCK_PORT) {
        Ok(l) => {
            let (info, sessions) = (info.clone(), sessions.clone());
            std::thread::Builder::new()
                .name("vsock".into())
                .spawn(move || serve_vsock(l, info, sessions, pid1))
                .is_ok()
        }
        Err(_) => false, // no AF_VSOCK in this kernel: virtio-serial only
    };
    match open_port(Duration::from_secs(10)) {
        Some(port) => serve(port, info, sessions, pid1),
        None => {
            if !vsock {
                init::console(&format!(
                    "kobako-agent: no virtio-serial port named {} and no vsock; running without \
                     a host channel",
                    proto::PORT_NAME
                ));
            }
            loop {
                std::thread::park();
            }
        }
    }
}

/// A listening AF_VSOCK stream socket on `port` (any CID), or why not.
fn vsock_listener(port: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the fd is owned by the OwnedFd below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is valid, then the fields are set.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: bind/listen on our socket with a live sockaddr_vm and its size.
    let r = unsafe {
        if libc::bind(
            fd,
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ) != 0
        {
            -1
        } else {
            libc::listen(fd, 4)
        }
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// Serves host connections on the vsock listener, one at a time.
fn serve_vsock(
    listener: std::os::fd::OwnedFd,
    mut info: ReadyInfo,
    sessions: Sessions,
    pid1: bool,
) {
    use std::os::fd::{AsRawFd, FromRawFd};
    loop {
        // SAFETY: sockaddr_vm is plain data; zeroed is valid.
        let mut peer: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: accept4 on our listening socket, with a live sockaddr_vm and its size.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                &mut peer as *mut libc::sockaddr_vm as *mut libc::sockaddr,
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        // SAFETY: `fd` is a fresh connected socket we own.
        let conn = unsafe { File::from_raw_fd(fd) };
        if !peer_is_host(&peer, len) {
            // A process in this guest (vsock loopback, CID 1) or another VM: it would run
            // commands as root and take over the host's sessions. Closed unanswered.
            eprintln!(
                "kobako-agent: refused a vsock connection from CID {} (only the host, CID {}, is served)",
                peer.svm_cid,
                libc::VMADDR_CID_HOST
            );
            drop(conn);
            continue;
        }
        let Ok(mut reader) = conn.try_clone() else {
            continue;
        };
        *OUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        info.ready_ms = boottime_ms();
        send(&Frame::msg(0, &Msg::Ready(info.clone())));
        // Until the host closes (or the stream is corrupt: nothing to resynchronise on).
        while let Ok(frame) = proto::read_frame(&mut reader) {
            handle_frame(frame, &info, &sessions, pid1);
        }
    }
}

/// Is an accepted vsock peer the host? Only the host (`VMADDR_CID_HOST`, 2) may speak the
/// protocol; the guest itself (`VMADDR_CID_LOCAL`, 1, vsock loopback) and any other CID are
/// refused. The virtio-serial port has no peer address: only the hypervisor can open it (a
/// guest process cannot reach its host end), so it needs no such check.
fn peer_is_host(peer: &libc::sockaddr_vm, len: libc::socklen_t) -> bool {
    len as usize >= std::mem::size_of::<libc::sockaddr_vm>()
        && i32::from(peer.svm_family) == libc::AF_VSOCK
        && peer.svm_cid == libc::VMADDR_CID_HOST
}

fn ready_info(agent_start_ms: u64) -> ReadyInfo {
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    ReadyInfo {
        version: proto::VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hostname,
        kernel,
        nproc,
        mem_total_kib,
        agent_start_ms,
        ready_ms: 0,
    }
}

/// Find `/dev/vportNpM` whose name is `kobako.agent`. Ports are announced by the device after the
/// driver is up, so this may take a few milliseconds after init starts.
fn open_port(timeout: Duration) -> Option<File> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in rd.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == proto::PORT_NAME {
                    let dev = format!("/dev/{}", e.file_name().to_string_lossy());
                    if let Ok(f) = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&dev)
                    {
                        return Some(f);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Block the signals busybox `poweroff`/`reboot`/`halt` and Ctrl-Alt-Del send to PID 1, so the
/// signal thread receives them with sigwait (every thread inherits this mask; std's Command resets
/// it in children).
fn shutdown_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn block_shutdown_signals() {
    let set = shutdown_sigset();
    // SAFETY: valid sigset pointer; called before other threads exist.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Channel to the host, shared by every thread that sends.
static OUT: Mutex<Option<File>> = Mutex::new(None);

pub fn send(frame: &Frame) {
    let mut g = OUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = g.as_mut() {
        let _ = proto::write_frame(f, frame);
    }
}

fn spawn_signal_thread() {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(|| loop {
            let set = shutdown_sigset();
            let mut sig: libc::c_int = 0;
            // SAFETY: valid pointers; the signals are blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            // busybox: SIGUSR2 = poweroff, SIGUSR1 = halt, SIGTERM = reboot; SIGINT = Ctrl-Alt-Del.
            let reboot = sig == libc::SIGTERM || sig == libc::SIGINT;
            go_down(reboot, true);
        })
        .ok();
}

fn go_down(reboot: bool, pid1: bool) {
    send(&Frame::msg(0, &Msg::ShuttingDown { reboot }));
    init::shutdown(reboot, pid1);
}

/// What a stream's owner accepts from the host after its request started.
pub enum Input {
    Data(Vec<u8>),
    /// `PutEnd`: the sender's checksum.
    End(String),
    Resize(u16, u16),
}

pub struct Session {
    pub pid: Option<i32>,
    pub input: Option<Sender<Input>>,
}

pub type Sessions = Arc<Mutex<HashMap<u32, Session>>>;

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Send a message on a stream.
pub fn reply(stream: u32, msg: &Msg) {
    send(&Frame::msg(stream, msg));
}

/// Send an error on a stream.
pub fn fail(stream: u32, message: impl Into<String>) {
    reply(
        stream,
        &Msg::Error {
            message: message.into(),
        },
    );
}

fn serve(port: File, mut info: ReadyInfo, sessions: Sessions, pid1: bool) {
    let mut reader = match port.try_clone() {
        Ok(r) => r,
        Err(e) => {
            init::console(&format!("kobako-agent: port: {e}"));
            return;
        }
    };
    *OUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(port);
    info.ready_ms = boottime_ms();
    // Blocks until the host side is connected (virtio-serial holds writes while it is not).
    send(&Frame::msg(0, &Msg::Ready(info.clone())));
    loop {
        let frame = match proto::read_frame(&mut reader) {
            Ok(f) => f,
            Err(proto::ProtoError::Closed) => {
                // The host went away. Announce ourselves again: the write blocks until a host
                // reconnects, then the new host sees `Ready` first.
                send(&Frame::msg(0, &Msg::Ready(info.clone())));
                continue;
            }
            Err(e) => {
                init::console(&format!("kobako-agent: {e}"));
                // Resynchronising inside a corrupt stream is impossible; wait for a new host.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        handle_frame(frame, &info, &sessions, pid1);
    }
}

fn handle_frame(frame: Frame, info: &ReadyInfo, sessions: &Sessions, pid1: bool) {
    match frame.kind {
        Kind::Msg => match frame.to_msg() {
            Ok(msg) => handle_msg(frame.stream, msg, info, sessions, pid1),
            Err(e) => send(&Frame::msg(
                frame.stream,
                &Msg::Error {
                    message: e.to_string(),
                },
            )),
        },
        Kind::Stdin => deliver(sessions, frame.stream, Input::Data(frame.payload)),
        Kind::Stdout | Kind::Stderr => {}
    }
}

fn deliver(sessions: &Sessions, stream: u32, input: Input) {
    let s = lock(sessions);
    if let Some(tx) = s.get(&stream).and_then(|s| s.input.as_ref()) {
        let _ = tx.send(input);
    }
}

/// Create a stream's session (input channel) and return the receiving end for its worker.
fn open_session(sessions: &Sessions, stream: u32) -> std::sync::mpsc::Receiver<Input> {
    let (tx, rx) = std::sync::mpsc::channel();
    lock(sessions).insert(
        stream,
        Session {
            pid: None,
            input: Some(tx),
        },
    );
    rx
}

fn spawn_worker(name: String, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name).spawn(f) {
        init::console(&format!("kobako-agent: cannot start a thread: {e}"));
    }
}

fn handle_msg(stream: u32, msg: Msg, info: &ReadyInfo, sessions: &Sessions, pid1: bool) {
    match msg {
        Msg::Hello { .. } => send(&Frame::msg(0, &Msg::Ready(info.clone()))),
        Msg::Exec(req) => {
            // Register the stream before the worker starts, so stdin frames that follow the
            // request at once are never lost.
            let input = open_session(sessions, stream);
            let sessions = sessions.clone();
            spawn_worker(format!("exec-{stream}"), move || {
                exec::run(stream, req, input, sessions)
            });
        }
        Msg::Signal { signal } => {
            let mut s = lock(sessions);
            match s.get(&stream).map(|s| s.pid) {
                // SAFETY: kill(2) on a pid we spawned and have not yet seen exit.
                Some(Some(pid)) => unsafe {
                    libc::kill(pid, signal);
                },
                // A transfer: dropping its session aborts it (partial file removed).
                Some(None) => {
                    s.remove(&stream);
                }
                None => {
                    drop(s);
                    fail(stream, format!("nothing running on stream {stream}"))
                }
            }
        }
        Msg::Resize { rows, cols } => deliver(sessions, stream, Input::Resize(rows, cols)),
        Msg::PutEnd { sha256 } => deliver(sessions, stream, Input::End(sha256)),
        Msg::PutFile(req) => {
            let input = open_session(sessions, stream);
            let sessions = sessions.clone();
            spawn_worker(format!("put-{stream}"), move || {
                files::put(stream, req, input, sessions)
            });
        }
        Msg::GetFile { path } => {
            spawn_worker(format!("get-{stream}"), move || files::get(stream, &path))
        }
        Msg::Stat { path } => files::stat(stream, &path),
        Msg::ListDir { path } => {
            spawn_worker(format!("ls-{stream}"), move || files::list(stream, &path))
        }
        Msg::Mkdir {
            path,
            mode,
            parents,
        } => files::mkdir(stream, &path, mode, parents),
        Msg::NetConfig(cfg) => {
            spawn_worker(format!("net-{stream}"), move || match netcfg::apply(&cfg) {
                Ok(()) => reply(
                    stream,
                    &Msg::Done {
                        sha256: None,
                        size: None,
                    },
                ),
                Err(e) => fail(stream, e.to_string()),
            })
        }
        Msg::SetServices { services } => {
            services::set(services);
            reply(
                stream,
                &Msg::Done {
                    sha256: None,
                    size: None,
                },
            );
        }
        Msg::ServiceStatus => reply(
            stream,
            &Msg::Services {
                services: services::status(),
            },
        ),
        Msg::ServiceLogs { name, tail_bytes } => match services::logs(&name, tail_bytes) {
            Ok(data) => reply(stream, &Msg::Logs { data }),
            Err(e) => fail(stream, e),
        },
        Msg::Identity(id) => {
            spawn_worker(format!("id-{stream}"), move || match identity::apply(&id) {
                Ok(()) => reply(
                    stream,
                    &Msg::Done {
                        sha256: None,
                        size: None,
                    },
                ),
                Err(e) => fail(stream, e.to_string()),
            })
        }
        Msg::Probe(p) => spawn_worker(format!("probe-{stream}"), move || {
            let (ok, detail) = kobako_agent::probe::run(&p);
            reply(stream, &Msg::ProbeResult { ok, detail })
        }),
        Msg::Mount(m) => spawn_worker(format!("mount-{stream}"), move || match shares::mount(&m) {
            Ok(()) => reply(
                stream,
                &Msg::Done {
                    sha256: None,
                    size: None,
                },
            ),
            Err(e) => fail(stream, e),
        }),
        Msg::Shutdown { reboot } => go_down(reboot, pid1),
        other => fail(stream, format!("unexpected message from host: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(family: i32, cid: u32) -> libc::sockaddr_vm {
        // SAFETY: sockaddr_vm is plain data; zeroed is valid.
        let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        a.svm_family = family as libc::sa_family_t;
        a.svm_cid = cid;
        a.svm_port = 12345;
        a
    }

    /// A process in the guest connecting over vsock loopback (or another VM) would run
    /// commands as root: only the host's CID is served.
    #[test]
    fn vsock_peer_other_than_the_host_is_refused() {
        let full = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        assert!(peer_is_host(
            &peer(libc::AF_VSOCK, libc::VMADDR_CID_HOST),
            full
        ));
        for cid in [
            libc::VMADDR_CID_LOCAL,
            libc::VMADDR_CID_HYPERVISOR,
            3,
            42,
            libc::VMADDR_CID_ANY,
        ] {
            assert!(!peer_is_host(&peer(libc::AF_VSOCK, cid), full), "{cid}");
        }
        // A short or foreign address is not trusted either.
        assert!(!peer_is_host(
            &peer(libc::AF_VSOCK, libc::VMADDR_CID_HOST),
            4
        ));
        assert!(!peer_is_host(
            &peer(libc::AF_UNIX, libc::VMADDR_CID_HOST),
            full
        ));
    }
}
