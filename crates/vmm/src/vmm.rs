//! The event loop: the one owner of the VM's state. It runs on the process's main thread
//! (named `fc_vmm`) and multiplexes with epoll:
//! - API requests from the API thread (channel + eventfd), applied to [`VmResources`] before
//!   boot, or to the running VM after;
//! - vCPU reports (channel + eventfd): a stopped vCPU ends the process with its exit code;
//! - the i8042 reset eventfd;
//! - console input: stdin, or the clients of the console Unix socket.
//!
//! It also builds the VM (`InstanceStart`), installs its own seccomp filter once the VM is
//! built, and then resumes the vCPUs.
//!
//! Snapshot create and load (`PUT /snapshot/...`, `--snapshot-load`) are in `persist`.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiRequest, ApiResponse};
use crate::builder::{self, BuiltVm, ConsoleTarget, ExtraDevices};
use crate::config::*;
use crate::devices::serial::SerialOut;
use crate::metrics::METRICS;
use crate::seccomp::Filters;
use crate::vstate::vcpu::{kick_signal, VcpuCommand, VcpuEvent, VcpuStop};

mod persist;

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
    fn name(self) -> &'static str {
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
    pub requests: Receiver<ApiRequest>,
    pub responses: Sender<ApiResponse>,
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

/// The event loop's state.
pub struct EventLoop {
    epoll: Epoll,
    opts: LoopOptions,
    res: VmResources,
    state: InstanceState,
    api: Option<ApiEndpoint>,
    vm: Option<BuiltVm>,
    console: Option<Console>,
    stdin_open: bool,
    extra: Option<ExtraDevices>,
    /// Set when a vCPU stopped while the loop was busy with a request.
    pending_exit: Option<i32>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("id", &self.opts.id)
            .field("state", &self.state)
            .field("res", &self.res)
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
            epoll,
            opts,
            res,
            state: InstanceState::NotStarted,
            api,
            vm: None,
            console: None,
            stdin_open: false,
            extra: Some(extra),
            pending_exit: None,
        })
    }

    /// Runs until the guest stops (or, without an API, until the VM cannot start); returns the
    /// process exit code.
    pub fn run(mut self) -> i32 {
        if let Some(p) = self.opts.load.take() {
            if let Err(e) = self.load_snapshot(p) {
                crate::log_error!("cannot load the snapshot: {e}");
                eprintln!("kobako vmm: cannot load the snapshot: {e}");
                return crate::EXIT_BAD_CONFIGURATION;
            }
        } else if self.opts.start_now {
            if let Err(e) = self.start() {
                crate::log_error!("cannot start the microVM: {e}");
                return crate::EXIT_BAD_CONFIGURATION;
            }
        } else if self.api.is_none() {
            return crate::EXIT_BAD_CONFIGURATION;
        }
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
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

    fn shutdown(&mut self, code: i32) -> i32 {
        crate::log_info!("VMM exiting with code {code}");
        if let Some(vm) = &self.vm {
            if let Ok(mut s) = vm.serial.lock() {
                let _ = s.uart.writer_mut().flush();
            }
        }
        self.flush_metrics();
        if let Some(c) = &self.console {
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
        self.pending_exit
    }

    fn on_vcpu_events(&mut self) -> Option<i32> {
        let vm = self.vm.as_ref()?;
        let _ = vm.vcpu_evt.read();
        while let Ok(ev) = vm.vcpu_events.try_recv() {
            if let Some(code) = Self::stop_of(&ev) {
                return Some(code);
            }
        }
        None
    }

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

    fn on_virtio(&mut self, idx: usize) {
        if let Some(slot) = self.vm.as_ref().and_then(|vm| vm.virtio.get(idx)) {
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
                    .epoll
                    .ctl(ControlOperation::Delete, 0, EpollEvent::default());
                self.stdin_open = false;
            }
            Ok(n) => self.serial_input(&buf[..n]),
        }
    }

    fn serial_input(&self, bytes: &[u8]) {
        if let Some(vm) = &self.vm {
            if let Ok(mut s) = vm.serial.lock() {
                s.enqueue_input(bytes);
            }
        }
    }

    fn on_console_accept(&mut self) {
        let Some(c) = &self.console else { return };
        while let Ok((s, _)) = c.listener.accept() {
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = s.as_raw_fd();
            if self
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
        let Some(c) = &self.console else { return };
        let mut buf = [0u8; 256];
        let mut input = None;
        {
            let mut clients = c.clients.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = clients.iter().position(|s| s.as_raw_fd() == fd) {
                match clients[pos].read(&mut buf) {
                    Ok(0) => {
                        let _ = self
                            .epoll
                            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                        clients.remove(pos);
                    }
                    Ok(n) => input = Some(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        let _ = self
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

    /// InstanceStart: build, register fds, seccomp, resume.
    fn start(&mut self) -> Result<(), String> {
        if self.state != InstanceState::NotStarted {
            return Err(
                "The microVM is already running: InstanceStart is only allowed once.".into(),
            );
        }
        let res = self.res.clone();
        let out = self
            .serial_out(&res)
            .map_err(|e| format!("Cannot open the serial console output: {e}"))?;
        let use_stdin = matches!(out, SerialOut::Stdout(_));
        let extra = self.extra.take().unwrap_or_default();
        let vm = match builder::build(&self.res, out, self.opts.filters.as_ref(), extra) {
            Ok(vm) => vm,
            Err(e) => {
                // Leave nothing behind, so that a corrected InstanceStart can succeed.
                self.drop_console();
                return Err(crate::error_chain(&e));
            }
        };
        self.install(vm, use_stdin)?;
        self.resume_all();
        self.state = InstanceState::Running;
        crate::log_info!("microVM started");
        Ok(())
    }

    /// Watches a built VM's fds, closes the process with its seccomp filter, keeps the VM.
    fn install(&mut self, vm: BuiltVm, use_stdin: bool) -> Result<(), String> {
        let add = |fd, token| {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(vm.vcpu_evt.as_raw_fd(), TOKEN_VCPU).map_err(|e| e.to_string())?;
        add(vm.reset_evt.as_raw_fd(), TOKEN_RESET).map_err(|e| e.to_string())?;
        for (i, slot) in vm.virtio.iter().enumerate() {
            let fd = slot
                .transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .epoll_fd();
            add(fd, TOKEN_VIRTIO + i as u64).map_err(|e| e.to_string())?;
        }
        // stdin may be /dev/null or a regular file, which epoll refuses: then no console input.
        if use_stdin && add(0, TOKEN_STDIN).is_ok() {
            self.stdin_open = true;
        }
        if let Some(f) = &self.opts.filters {
            seccompiler::apply_filter(&f.vmm)
                .map_err(|e| format!("Cannot install the VMM seccomp filter: {e}"))?;
        }
        self.vm = Some(vm);
        Ok(())
    }

    /// Lets every (parked) vCPU thread run.
    fn resume_all(&self) {
        if let Some(vm) = &self.vm {
            for v in &vm.vcpus {
                let _ = v.commands.send(VcpuCommand::Resume);
            }
        }
    }

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

    /// Sends `cmd` to every vCPU, kicks them out of KVM_RUN, and waits for each to confirm.
    fn vcpus_do(&mut self, cmd: VcpuCommand) -> Result<(), String> {
        let r = self.vcpus_do_inner(cmd);
        match &r {
            Err((_, Some(code))) => self.pending_exit = Some(*code),
            Err((_, None)) if cmd == VcpuCommand::Pause => {
                // Some vCPUs may pause later (e.g. one blocked writing console output nobody
                // reads): queue a Resume behind the Pause so every vCPU ends up running, as the
                // unchanged state says.
                if let Some(vm) = &self.vm {
                    for v in &vm.vcpus {
                        let _ = v.commands.send(VcpuCommand::Resume);
                    }
                }
            }
            _ => {}
        }
        r.map_err(|(m, _)| m)
    }

    fn vcpus_do_inner(&self, cmd: VcpuCommand) -> Result<(), (String, Option<i32>)> {
        let Some(vm) = &self.vm else {
            return Err(("The microVM is not running.".into(), None));
        };
        for v in &vm.vcpus {
            if v.commands.send(cmd).is_err() {
                return Err(("A vCPU thread has exited.".into(), None));
            }
            // SAFETY: the pthread_t comes from a JoinHandle we still own, so the thread has not
            // been joined (detached or not, the id stays valid until join).
            unsafe { libc::pthread_kill(v.thread.as_pthread_t(), kick_signal()) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut acked = 0;
        while acked < vm.vcpus.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match vm.vcpu_events.recv_timeout(left) {
                Ok(VcpuEvent::Paused(_)) if cmd == VcpuCommand::Pause => acked += 1,
                Ok(VcpuEvent::Resumed(_)) if cmd == VcpuCommand::Resume => acked += 1,
                Ok(VcpuEvent::Saved(_)) if cmd == VcpuCommand::Save => acked += 1,
                Ok(ev @ VcpuEvent::Stopped(..)) => {
                    return Err((
                        "A vCPU stopped while changing the microVM state.".into(),
                        Self::stop_of(&ev),
                    ));
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(("Timed out waiting for the vCPUs.".into(), None))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(("The vCPU threads have exited.".into(), None))
                }
            }
        }
        Ok(())
    }

    fn flush_metrics(&self) {
        let Some(m) = &self.res.metrics else { return };
        let boot = self
            .vm
            .as_ref()
            .and_then(|v| *v.boot_time.lock().unwrap_or_else(|e| e.into_inner()));
        let mut v = METRICS.snapshot(boot);
        if let Some(o) = v.as_object_mut() {
            if m.emit_id {
                o.insert("id".into(), self.opts.id.clone().into());
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

    fn pre_boot(&self, what: &str) -> Result<(), String> {
        if self.state == InstanceState::NotStarted {
            Ok(())
        } else {
            Err(format!(
                "The requested operation is not supported after starting the microVM: {what}."
            ))
        }
    }

    fn cfg<T>(r: Result<T, ConfigError>) -> ApiResponse {
        match r {
            Ok(_) => ApiResponse::Empty,
            Err(e) => ApiResponse::Error(e.to_string()),
        }
    }

    /// Applies one API request.
    pub fn handle(&mut self, req: ApiRequest) -> ApiResponse {
        use ApiRequest as R;
        let gate = |name: &str| self.pre_boot(name).err().map(ApiResponse::Error);
        match req {
            R::GetInstanceInfo => ApiResponse::Json(serde_json::json!({
                "id": self.opts.id,
                "state": self.state.name(),
                "vmm_version": crate::VERSION,
                "app_name": "kobako-vmm",
            })),
            R::GetVersion => {
                ApiResponse::Json(serde_json::json!({ "firecracker_version": crate::VERSION }))
            }
            R::GetMachineConfig => ApiResponse::Json(
                serde_json::to_value(&self.res.machine).unwrap_or_default(),
            ),
            R::GetFullConfig => {
                ApiResponse::Json(serde_json::to_value(self.res.to_full()).unwrap_or_default())
            }
            R::GetBootTime => match self
                .vm
                .as_ref()
                .and_then(|v| *v.boot_time.lock().unwrap_or_else(|e| e.into_inner()))
            {
                Some(t) => ApiResponse::Json(serde_json::to_value(t).unwrap_or_default()),
                None => ApiResponse::Error("The guest has not signalled boot completion yet.".into()),
            },
            R::PutBootSource(b) => gate("PUT /boot-source")
                .unwrap_or_else(|| Self::cfg(self.res.set_boot_source(b))),
            R::PutMachineConfig(m) => gate("PUT /machine-config")
                .unwrap_or_else(|| Self::cfg(self.res.set_machine_config(m))),
            R::PatchMachineConfig(m) => gate("PATCH /machine-config")
                .unwrap_or_else(|| Self::cfg(self.res.update_machine_config(m))),
            R::PutDrive(id, d) => {
                gate("PUT /drives").unwrap_or_else(|| Self::cfg(self.res.put_drive(&id, d)))
            }
            // Firecracker: PATCH of drives and interfaces is post-boot only (it updates the
            // live device). Without block/net devices there is nothing to update yet.
            R::PatchDrive(id, d) => match self.state {
                InstanceState::NotStarted => ApiResponse::Error(
                    "The requested operation is not supported before starting the microVM: PATCH /drives.".into(),
                ),
                _ => self.patch_drive(id, d),
            },
            R::PutNet(id, n) => gate("PUT /network-interfaces")
                .unwrap_or_else(|| Self::cfg(self.res.put_net(&id, n))),
            R::PatchNet(id, n) => match self.state {
                InstanceState::NotStarted => ApiResponse::Error(
                    "The requested operation is not supported before starting the microVM: PATCH /network-interfaces.".into(),
                ),
                _ => self.patch_net(id, n),
            },
            R::PutVsock(v) => {
                gate("PUT /vsock").unwrap_or_else(|| Self::cfg(self.res.set_vsock(v)))
            }
            R::PutEntropy(e) => gate("PUT /entropy").unwrap_or_else(|| {
                self.res.entropy = Some(e);
                ApiResponse::Empty
            }),
            R::PutMetrics(m) => gate("PUT /metrics").unwrap_or_else(|| {
                match OpenOptions::new().create(true).append(true).open(&m.metrics_path) {
                    Ok(_) => {
                        self.res.metrics = Some(m);
                        ApiResponse::Empty
                    }
                    Err(e) => ApiResponse::Error(format!(
                        "Cannot open the metrics file {}: {e}",
                        m.metrics_path.display()
                    )),
                }
            }),
            R::PutLogger(l) => gate("PUT /logger").unwrap_or_else(|| self.put_logger(l)),
            R::PutSerial(s) => gate("PUT /serial").unwrap_or_else(|| {
                self.res.serial = Some(s);
                ApiResponse::Empty
            }),
            R::Action(ActionType::InstanceStart) => match self.start() {
                Ok(()) => ApiResponse::Empty,
                Err(e) => ApiResponse::Error(e),
            },
            R::Action(ActionType::FlushMetrics) => {
                if self.res.metrics.is_none() {
                    return ApiResponse::Error("The metrics system is not configured: PUT /metrics first.".into());
                }
                self.flush_metrics();
                ApiResponse::Empty
            }
            R::Action(ActionType::SendCtrlAltDel) => match &self.vm {
                None => ApiResponse::Error(
                    "The requested operation is not supported before starting the microVM: SendCtrlAltDel.".into(),
                ),
                Some(vm) => {
                    let r = vm
                        .i8042
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .trigger_ctrl_alt_del();
                    match r {
                        Ok(()) => ApiResponse::Empty,
                        Err(e) => ApiResponse::Error(format!("Cannot send Ctrl+Alt+Del: {e}")),
                    }
                }
            },
            R::PatchVm(target) => self.patch_vm(target),
            R::SnapshotCreate(p) => match self.create_snapshot(p) {
                Ok(()) => ApiResponse::Empty,
                Err(e) => ApiResponse::Error(e),
            },
            R::SnapshotLoad(p) => match self.load_snapshot(p) {
                Ok(()) => ApiResponse::Empty,
                Err(e) => ApiResponse::Error(e),
            },
        }
    }

    /// Post-boot `PATCH /drives/{id}`: validated against the configuration, applied to the
    /// live block device, then recorded.
    fn patch_drive(&mut self, id: String, d: DriveUpdate) -> ApiResponse {
        let mut res = self.res.clone();
        if let Err(e) = res.patch_drive(&id, d.clone()) {
            return ApiResponse::Error(e.to_string());
        }
        let Some(vm) = &self.vm else {
            return ApiResponse::Error("The microVM is not running.".into());
        };
        match crate::devices::virtio::setup::patch_drive(&vm.virtio, &id, &d) {
            Ok(()) => {
                self.res = res;
                ApiResponse::Empty
            }
            Err(e) => ApiResponse::Error(e),
        }
    }

    /// Post-boot `PATCH /network-interfaces/{id}` (rate limiters).
    fn patch_net(&mut self, id: String, n: NetworkInterfaceUpdate) -> ApiResponse {
        let mut res = self.res.clone();
        if let Err(e) = res.patch_net(&id, n.clone()) {
            return ApiResponse::Error(e.to_string());
        }
        let Some(vm) = &self.vm else {
            return ApiResponse::Error("The microVM is not running.".into());
        };
        match crate::devices::virtio::setup::patch_net(&vm.virtio, &id, &n) {
            Ok(()) => {
                self.res = res;
                ApiResponse::Empty
            }
            Err(e) => ApiResponse::Error(e),
        }
    }

    fn put_logger(&mut self, l: LoggerConfig) -> ApiResponse {
        let level = match l.level.as_deref() {
            Some(s) => match crate::logger::Level::parse(s) {
                Some(v) => Some(v),
                None => return ApiResponse::Error(format!("Invalid log level: {s}")),
            },
            None => None,
        };
        if let Some(p) = &l.log_path {
            if let Err(e) = crate::logger::set_path(p) {
                return ApiResponse::Error(format!(
                    "Cannot open the log file {}: {e}",
                    p.display()
                ));
            }
        }
        if let Some(v) = level {
            crate::logger::set_level(v);
        }
        self.res.logger = Some(l);
        ApiResponse::Empty
    }

    fn patch_vm(&mut self, target: VmStateName) -> ApiResponse {
        match (self.state, target) {
            (InstanceState::NotStarted, _) => ApiResponse::Error(
                "The requested operation is not supported before starting the microVM.".into(),
            ),
            (InstanceState::Paused, VmStateName::Paused)
            | (InstanceState::Running, VmStateName::Resumed) => ApiResponse::Empty,
            (InstanceState::Running, VmStateName::Paused) => {
                match self.vcpus_do(VcpuCommand::Pause) {
                    Ok(()) => {
                        self.state = InstanceState::Paused;
                        crate::log_info!("microVM paused");
                        ApiResponse::Empty
                    }
                    Err(e) => ApiResponse::Error(e),
                }
            }
            (InstanceState::Paused, VmStateName::Resumed) => {
                match self.vcpus_do(VcpuCommand::Resume) {
                    Ok(()) => {
                        self.state = InstanceState::Running;
                        crate::log_info!("microVM resumed");
                        ApiResponse::Empty
                    }
                    Err(e) => ApiResponse::Error(e),
                }
            }
        }
    }
}
