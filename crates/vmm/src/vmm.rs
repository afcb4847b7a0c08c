//! The event loop: the one owner of the VM's state. It runs on the process's main thread
//! (named `fc_vmm`) and multiplexes with epoll:
//! - API requests from the API thread (channel + eventfd), as [`VmmAction`]s answered with a
//!   [`VmmResult`];
//! - vCPU reports (channel + eventfd): a stopped vCPU ends the process with its exit code;
//! - the i8042 reset eventfd;
//! - console input: stdin, or the clients of the console Unix socket.
//!
//! Who answers an action is a type, as in Firecracker: before boot a
//! [`PrebootApiController`] (`preboot.rs`) owns the [`VmResources`] being built and answers
//! the actions valid then; `InstanceStart` (or a snapshot load) builds the VM and hands it to
//! a [`RuntimeApiController`] (`runtime.rs`), which owns the running microVM from then on. The
//! loop itself keeps the I/O plumbing (`LoopIo`: epoll, console, seccomp filters) and
//! installs its own seccomp filter once the VM is built.
//!
//! The request and answer types are in `rpc.rs`; snapshot create and load
//! (`PUT /snapshot/...`, `--snapshot-load`) are in `persist.rs`.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::builder::{BuiltVm, ConsoleTarget, ExtraDevices};
use crate::config::*;
use crate::devices::serial::SerialOut;
use crate::metrics::METRICS;
use crate::seccomp::Filters;
use crate::timing::BootTime;
use crate::vstate::vcpu::{VcpuEvent, VcpuStop};

mod persist;
mod preboot;
pub mod rpc;
mod runtime;

pub use persist::{CreateSnapshotError, LoadSnapshotError};
pub use preboot::{PrebootApiController, StartMicrovmError};
pub use rpc::{InstanceInfo, VmmAction, VmmActionError, VmmData, VmmResult};
pub use runtime::RuntimeApiController;

/// Why a built microVM's fds could not be watched or the VMM's seccomp filter installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `epoll_ctl` refused one of the VM's fds.
    #[error("{0}")]
    Epoll(io::Error),
    #[error("Cannot install the VMM seccomp filter: {0}")]
    Seccomp(seccompiler::Error),
}

const TOKEN_API: u64 = 1;
const TOKEN_VCPU: u64 = 2;
const TOKEN_RESET: u64 = 3;
const TOKEN_STDIN: u64 = 4;
const TOKEN_CONSOLE_LISTENER: u64 = 5;
/// Console clients use `TOKEN_CONSOLE_CLIENT + fd`.
const TOKEN_CONSOLE_CLIENT: u64 = 1 << 32;
/// Virtio devices use `TOKEN_VIRTIO + index` (their transport's epoll fd).
const TOKEN_VIRTIO: u64 = 1 << 40;

/// Instance state as reported by `GET /`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    NotStarted,
    Running,
    Paused,
}

impl InstanceState {
    /// The name `GET /` reports.
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::NotStarted => "Not started",
            InstanceState::Running => "Running",
            InstanceState::Paused => "Paused",
        }
    }
}

/// The API side of the event loop.
#[derive(Debug)]
pub struct ApiEndpoint {
    pub requests: Receiver<VmmAction>,
    pub responses: Sender<VmmResult>,
    pub wake: EventFd,
}

/// Process-level options the event loop needs.
#[derive(Debug, Default)]
pub struct LoopOptions {
    pub id: String,
    pub filters: Option<Filters>,
    /// Start the VM right away (config file given).
    pub start_now: bool,
    /// Load this snapshot right away (`--snapshot-load`).
    pub load: Option<SnapshotLoadParams>,
}

struct Console {
    listener: UnixListener,
    path: std::path::PathBuf,
    clients: Arc<Mutex<Vec<UnixStream>>>,
}

/// The event loop's I/O plumbing, lent to the pre-boot controller while it starts a microVM:
/// the epoll set, the console socket, whether stdin is watched, and the seccomp filters.
pub(crate) struct LoopIo {
    epoll: Epoll,
    console: Option<Console>,
    stdin_open: bool,
    filters: Option<Filters>,
}

/// Who answers API actions: the configuration being built, or the running microVM.
#[derive(Debug)]
enum Controller {
    Preboot(Box<PrebootApiController>),
    Runtime(Box<RuntimeApiController>),
}

/// The event loop's state.
pub struct EventLoop {
    io: LoopIo,
    id: String,
    start_now: bool,
    load: Option<SnapshotLoadParams>,
    api: Option<ApiEndpoint>,
    vmm: Controller,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("id", &self.id)
            .field("vmm", &self.vmm)
            .finish_non_exhaustive()
    }
}

fn stop_code(stop: &VcpuStop) -> i32 {
    match stop {
        VcpuStop::PowerOff => crate::EXIT_OK,
        VcpuStop::Reset => crate::EXIT_GUEST_RESET,
        VcpuStop::TripleFault => crate::EXIT_TRIPLE_FAULT,
        VcpuStop::InternalError { .. } => crate::EXIT_EMULATION_FAILURE,
        VcpuStop::Error(_) => crate::EXIT_VCPU_ERROR,
    }
}

/// Logs why a vCPU stopped; the exit code for it (None: `ev` is not a stop).
fn stop_of(ev: &VcpuEvent) -> Option<i32> {
    match ev {
        VcpuEvent::Stopped(i, stop) => {
            match stop {
                VcpuStop::InternalError {
                    suberror,
                    rip,
                    data,
                } => crate::log_error!(
                    "vCPU {i}: KVM_EXIT_INTERNAL_ERROR (suberror {suberror}{}) at rip {rip:#x}, data {data:x?}",
                    if *suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                        ": emulation failure"
                    } else {
                        ""
                    }
                ),
                VcpuStop::Error(m) => crate::log_error!("vCPU {i} failed: {m}"),
                other => crate::log_info!("vCPU {i}: guest {other:?}"),
            }
            Some(stop_code(stop))
        }
        _ => None,
    }
}

/// Appends one metrics line (counters, boot time, `id`/`properties` as configured) to the
/// metrics file, if `PUT /metrics` set one.
fn write_metrics(res: &VmResources, boot: Option<BootTime>, id: &str) {
    let Some(m) = &res.metrics else { return };
    let mut v = METRICS.snapshot(boot);
    if let Some(o) = v.as_object_mut() {
        if m.emit_id {
            o.insert("id".into(), id.to_string().into());
        }
        if !m.properties.is_empty() {
            o.insert(
                "properties".into(),
                serde_json::to_value(&m.properties).unwrap_or_default(),
            );
        }
    }
    let line = v.to_string() + "\n";
    match OpenOptions::new()
        .create(true)
        .append(true)
        .open(&m.metrics_path)
    {
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(e) => crate::log_warn!("cannot write metrics: {e}"),
    }
}

/// `PUT`/`PATCH`/`GET /mmds`, before or after boot: the data store is the process's.
fn mmds_action(res: &VmResources, action: VmmAction) -> VmmResult {
    let mut m = res.mmds.lock().unwrap_or_else(|e| e.into_inner());
    match action {
        VmmAction::PutMmds(v) => m.put(v)?,
        VmmAction::PatchMmds(v) => m.patch(v)?,
        _ => return Ok(VmmData::MmdsValue(m.data().clone())),
    }
    Ok(VmmData::Empty)
}

/// `FlushMetrics`, before or after boot.
fn flush_metrics(res: &VmResources, boot: Option<BootTime>, id: &str) -> VmmResult {
    if res.metrics.is_none() {
        return Err(VmmActionError::MetricsNotConfigured);
    }
    write_metrics(res, boot, id);
    Ok(VmmData::Empty)
}

impl EventLoop {
    /// Creates the loop over `res`; `api` is None with `--no-api`.
    pub fn new(
        res: VmResources,
        api: Option<ApiEndpoint>,
        opts: LoopOptions,
        extra: ExtraDevices,
    ) -> io::Result<EventLoop> {
        let epoll = Epoll::new()?;
        if let Some(a) = &api {
            epoll.ctl(
                ControlOperation::Add,
                a.wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_API),
            )?;
        }
        Ok(EventLoop {
            io: LoopIo {
                epoll,
                console: None,
                stdin_open: false,
                filters: opts.filters,
            },
            vmm: Controller::Preboot(Box::new(PrebootApiController::new(&opts.id, res, extra))),
            id: opts.id,
            start_now: opts.start_now,
            load: opts.load,
            api,
        })
    }

    /// Runs until the guest stops (or, without an API, until the VM cannot start); returns the
    /// process exit code.
    pub fn run(mut self) -> i32 {
        if let Some(p) = self.load.take() {
            if let Err(e) = self.handle(VmmAction::SnapshotLoad(p)) {
                crate::log_error!("cannot load the snapshot: {e}");
                eprintln!("kobako vmm: cannot load the snapshot: {e}");
                return crate::EXIT_BAD_CONFIGURATION;
            }
        } else if self.start_now {
            if let Err(e) = self.handle(VmmAction::Action(ActionType::InstanceStart)) {
                crate::log_error!("cannot start the microVM: {e}");
                return crate::EXIT_BAD_CONFIGURATION;
            }
        } else if self.api.is_none() {
            return crate::EXIT_BAD_CONFIGURATION;
        }
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.io.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::log_error!("event loop epoll failed: {e}");
                    return crate::EXIT_GENERIC;
                }
            };
            for ev in events.iter().take(n) {
                let code = match ev.data() {
                    TOKEN_API => self.on_api(),
                    TOKEN_VCPU => self.on_vcpu_events(),
                    TOKEN_RESET => Some(crate::EXIT_GUEST_RESET),
                    TOKEN_STDIN => {
                        self.on_stdin();
                        None
                    }
                    TOKEN_CONSOLE_LISTENER => {
                        self.on_console_accept();
                        None
                    }
                    t if t >= TOKEN_VIRTIO => {
                        self.on_virtio(crate::cast::usize_from(t - TOKEN_VIRTIO));
                        None
                    }
                    t if t >= TOKEN_CONSOLE_CLIENT => {
                        // Console client tokens are TOKEN_CONSOLE_CLIENT + the client's fd.
                        if let Ok(fd) = i32::try_from(t - TOKEN_CONSOLE_CLIENT) {
                            self.on_console_client(fd);
                        }
                        None
                    }
                    _ => None,
                };
                if let Some(code) = code {
                    return self.shutdown(code);
                }
            }
        }
    }

    /// Applies one API action: the pre-boot controller answers until it has booted a
    /// microVM, which the runtime controller then owns.
    pub fn handle(&mut self, action: VmmAction) -> VmmResult {
        match &mut self.vmm {
            Controller::Preboot(p) => {
                let r = p.handle(action, &mut self.io);
                if let Some(rt) = p.take_booted() {
                    self.vmm = Controller::Runtime(rt);
                }
                r
            }
            Controller::Runtime(rt) => rt.handle(action),
        }
    }

    /// The running microVM (None before boot).
    fn vm(&self) -> Option<&BuiltVm> {
        match &self.vmm {
            Controller::Preboot(_) => None,
            Controller::Runtime(rt) => Some(rt.vm()),
        }
    }

    fn shutdown(&mut self, code: i32) -> i32 {
        crate::log_info!("VMM exiting with code {code}");
        if let Some(vm) = self.vm() {
            if let Ok(mut s) = vm.serial.lock() {
                let _ = s.uart.writer_mut().flush();
            }
        }
        match &self.vmm {
            Controller::Preboot(p) => write_metrics(p.resources(), None, &self.id),
            Controller::Runtime(rt) => write_metrics(rt.resources(), rt.boot_time(), &self.id),
        }
        if let Some(c) = &self.io.console {
            let _ = std::fs::remove_file(&c.path);
        }
        code
    }

    fn on_api(&mut self) -> Option<i32> {
        let Some(api) = &self.api else { return None };
        let _ = api.wake.read();
        let mut pending = Vec::new();
        while let Ok(r) = api.requests.try_recv() {
            pending.push(r);
        }
        for r in pending {
            let resp = self.handle(r);
            if let Some(api) = &self.api {
                let _ = api.responses.send(resp);
            }
        }
        // A vCPU may have stopped while we waited for pause acknowledgements.
        match &self.vmm {
            Controller::Preboot(_) => None,
            Controller::Runtime(rt) => rt.pending_exit(),
        }
    }

    fn on_vcpu_events(&mut self) -> Option<i32> {
        let vm = self.vm()?;
        let _ = vm.vcpu_evt.read();
        while let Ok(ev) = vm.vcpu_events.try_recv() {
            if let Some(code) = stop_of(&ev) {
                return Some(code);
            }
        }
        None
    }

    fn on_virtio(&mut self, idx: usize) {
        if let Some(slot) = self.vm().and_then(|vm| vm.virtio.get(idx)) {
            slot.transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .process_events();
        }
    }

    fn on_stdin(&mut self) {
        let mut buf = [0u8; 64];
        match io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = self
                    .io
                    .epoll
                    .ctl(ControlOperation::Delete, 0, EpollEvent::default());
                self.io.stdin_open = false;
            }
            Ok(n) => self.serial_input(&buf[..n]),
        }
    }

    fn serial_input(&self, bytes: &[u8]) {
        if let Some(vm) = self.vm() {
            if let Ok(mut s) = vm.serial.lock() {
                s.enqueue_input(bytes);
            }
        }
    }

    fn on_console_accept(&mut self) {
        let Some(c) = &self.io.console else { return };
        while let Ok((s, _)) = c.listener.accept() {
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = s.as_raw_fd();
            if self
                .io
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    // An accepted socket's fd is >= 0.
                    EpollEvent::new(
                        EventSet::IN,
                        TOKEN_CONSOLE_CLIENT + u64::from(fd.unsigned_abs()),
                    ),
                )
                .is_ok()
            {
                c.clients.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            }
        }
    }

    fn on_console_client(&mut self, fd: i32) {
        let Some(c) = &self.io.console else { return };
        let mut buf = [0u8; 256];
        let mut input = None;
        {
            let mut clients = c.clients.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = clients.iter().position(|s| s.as_raw_fd() == fd) {
                match clients[pos].read(&mut buf) {
                    Ok(0) => {
                        let _ =
                            self.io
                                .epoll
                                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                        clients.remove(pos);
                    }
                    Ok(n) => input = Some(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        let _ =
                            self.io
                                .epoll
                                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                        clients.remove(pos);
                    }
                }
            }
        }
        if let Some(n) = input {
            self.serial_input(&buf[..n]);
        }
    }
}

impl LoopIo {
    /// The serial console's output for `res`; a console socket is bound and watched here.
    fn serial_out(&mut self, res: &VmResources) -> io::Result<SerialOut> {
        Ok(match ConsoleTarget::from_config(res) {
            ConsoleTarget::Stdout => SerialOut::Stdout(io::stdout()),
            ConsoleTarget::None => SerialOut::Sink,
            ConsoleTarget::File(p) => SerialOut::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
            ),
            ConsoleTarget::Socket(p) => {
                let listener = UnixListener::bind(&p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                listener.set_nonblocking(true)?;
                let clients = Arc::new(Mutex::new(Vec::new()));
                self.epoll.ctl(
                    ControlOperation::Add,
                    listener.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_CONSOLE_LISTENER),
                )?;
                self.console = Some(Console {
                    listener,
                    path: p.clone(),
                    clients: clients.clone(),
                });
                SerialOut::Clients(clients)
            }
        })
    }

    /// Watches a built VM's fds and closes the process with its seccomp filter.
    fn install(&mut self, vm: &BuiltVm, use_stdin: bool) -> Result<(), InstallError> {
        let add = |fd, token| {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(vm.vcpu_evt.as_raw_fd(), TOKEN_VCPU).map_err(InstallError::Epoll)?;
        add(vm.reset_evt.as_raw_fd(), TOKEN_RESET).map_err(InstallError::Epoll)?;
        for (i, slot) in vm.virtio.iter().enumerate() {
            let fd = slot
                .transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .epoll_fd();
            add(fd, TOKEN_VIRTIO + i as u64).map_err(InstallError::Epoll)?;
        }
        // stdin may be /dev/null or a regular file, which epoll refuses: then no console input.
        if use_stdin && add(0, TOKEN_STDIN).is_ok() {
            self.stdin_open = true;
        }
        if let Some(f) = &self.filters {
            seccompiler::apply_filter(&f.vmm).map_err(InstallError::Seccomp)?;
        }
        Ok(())
    }

    /// Closes a console socket a failed start left behind.
    fn drop_console(&mut self) {
        if let Some(c) = self.console.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.listener.as_raw_fd(),
                EpollEvent::default(),
            );
            let _ = std::fs::remove_file(&c.path);
        }
    }
}
