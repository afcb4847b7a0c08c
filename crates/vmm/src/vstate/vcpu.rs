//! One vCPU: its setup (CPUID, MSRs, registers, FPU, LAPIC; done by the builder on the
//! event-loop thread) and the thread that runs it.
//!
//! Each vCPU runs on its own thread named `fc_vcpu N` (Firecracker's naming, which tools grep
//! for). The thread owns its `VcpuFd`; it takes [`VcpuCommand`]s from the event loop over a
//! channel and reports [`VcpuEvent`]s back over another channel, waking the event loop through an
//! eventfd. To get a thread out of `KVM_RUN` (pause, exit) the event loop sends the command and
//! then signals the thread with `SIGRTMIN`: the handler sets `immediate_exit` in the thread's
//! `kvm_run`, so a signal that lands just before the ioctl is not lost either.
//!
//! Port I/O and MMIO exits are dispatched on this thread to the shared buses.

use std::cell::Cell;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{cpuid, regs};
use crate::devices::Bus;
use crate::metrics::{inc, METRICS};
use crate::timing::{rss_kib_from, Stamp, PROCESS_START};
use crate::vstate::vcpu_state::{self, SaveCaps, VcpuState, VcpuStateError};

/// Commands from the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuCommand {
    Resume,
    Pause,
    Exit,
    /// While paused: read the vCPU's state into its [`VcpuThread::saved`] slot, then report
    /// [`VcpuEvent::Saved`].
    Save,
}

/// Why a vCPU stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// `KVM_SYSTEM_EVENT_SHUTDOWN`, or HLT reaching userspace.
    PowerOff,
    /// `KVM_SYSTEM_EVENT_RESET`.
    Reset,
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    TripleFault,
    /// `KVM_EXIT_INTERNAL_ERROR`: KVM (on PVM: its instruction emulator) gave up.
    InternalError {
        suberror: u32,
        rip: u64,
        data: Vec<u64>,
    },
    /// Anything else (FailEntry, an unexpected exit, a failed ioctl, seccomp setup failure).
    Error(String),
}

/// Reports to the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    Paused(u8),
    Resumed(u8),
    /// The state asked for by [`VcpuCommand::Save`] is in the slot.
    Saved(u8),
    Stopped(u8, VcpuStop),
}

/// Why the vCPUs did not all confirm a [`VcpuCommand`] (pause, resume or save): the event
/// loop sends one to every vCPU thread and waits for each [`VcpuEvent`].
#[derive(Debug, thiserror::Error)]
pub enum VcpuControlError {
    #[error("A vCPU thread has exited.")]
    ThreadExited,
    /// A vCPU stopped (the VMM is exiting with its code).
    #[error("A vCPU stopped while changing the microVM state.")]
    Stopped,
    #[error("Timed out waiting for the vCPUs.")]
    Timeout,
    #[error("The vCPU threads have exited.")]
    ThreadsExited,
}

/// Failure to configure a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {index}")]
    Create {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set the CPUID of vCPU {index}")]
    Cpuid {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot restore the state of vCPU {index}: {why}")]
    Restore { index: u8, why: VcpuStateError },
    #[error("the CPU template does not fit vCPU {index}'s CPUID table")]
    TemplateCpuid { index: u8 },
    #[error("the CPU template's MSR {msr:#x} is not accepted by KVM on vCPU {index}")]
    TemplateMsr { index: u8, msr: u32 },
    #[error("cannot set up registers of vCPU {index}")]
    Regs {
        index: u8,
        #[source]
        source: regs::RegsError,
    },
}

/// A created and configured vCPU, ready to be moved onto its thread.
#[derive(Debug)]
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    /// The CPUID table it was given (for snapshots).
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
}

/// The MSR modifiers of a custom CPU template: each MSR read (after the boot MSRs), modified
/// and written back; one KVM refuses fails the build naming it.
fn apply_template_msrs(
    fd: &VcpuFd,
    index: u8,
    t: &crate::arch::cpu_template::CpuTemplate,
) -> Result<(), VcpuError> {
    for (msr, bitmap) in &t.msrs {
        let refused = || VcpuError::TemplateMsr { index, msr: *msr };
        let entry = |data| kvm_bindings::kvm_msr_entry {
            index: *msr,
            data,
            ..Default::default()
        };
        let mut m = kvm_bindings::Msrs::from_entries(&[entry(0)]).map_err(|_| refused())?;
        // An MSR KVM cannot read starts from 0.
        let old = match fd.get_msrs(&mut m) {
            Ok(1) => m.as_slice()[0].data,
            _ => 0,
        };
        let set =
            kvm_bindings::Msrs::from_entries(&[entry(bitmap.apply(old))]).map_err(|_| refused())?;
        if !matches!(fd.set_msrs(&set), Ok(1)) {
            return Err(refused());
        }
    }
    Ok(())
}

impl Vcpu {
    /// Creates vCPU `index` and sets CPUID, MSRs, FPU and LAPIC; vCPU 0 also gets `entry`.
    /// A custom CPU `template` (`PUT /cpu-config`) goes on top of the normalised CPUID and the
    /// boot MSRs.
    pub fn new(
        vm: &crate::vstate::vm::Vm,
        index: u8,
        count: u8,
        pvm: bool,
        supported: &kvm_bindings::CpuId,
        entry: &regs::EntryPoint,
        template: Option<&crate::arch::cpu_template::CpuTemplate>,
    ) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        let mut c = cpuid::normalise(
            supported,
            &cpuid::CpuidParams {
                vcpu_index: index,
                vcpu_count: count,
                pvm,
            },
        );
        if let Some(t) = template {
            if !t.apply_cpuid(&mut c) {
                return Err(VcpuError::TemplateCpuid { index });
            }
        }
        fd.set_cpuid2(&c)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        let r = |source| VcpuError::Regs { index, source };
        let set = regs::setup_msrs(&fd, !pvm).map_err(r)?;
        if set != regs::boot_msr_entries().len() {
            crate::log_debug!("vCPU {index}: KVM accepted {set} boot MSRs");
        }
        if let Some(t) = template {
            apply_template_msrs(&fd, index, t)?;
        }
        regs::setup_fpu(&fd).map_err(r)?;
        if vm.irqchip {
            regs::setup_lapic(&fd).map_err(r)?;
        }
        if index == 0 {
            regs::setup_boot_regs(&fd, entry).map_err(r)?;
        }
        Ok(Vcpu {
            index,
            fd,
            cpuid: c.as_slice().to_vec(),
        })
    }

    /// Creates vCPU `state.index` and gives it the saved state.
    pub fn restore(vm: &crate::vstate::vm::Vm, state: &VcpuState) -> Result<Vcpu, VcpuError> {
        let index = state.index;
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        vcpu_state::restore(&fd, state).map_err(|why| VcpuError::Restore { index, why })?;
        Ok(Vcpu {
            index,
            fd,
            cpuid: state.cpuid.clone(),
        })
    }
}

thread_local! {
    /// This thread's `kvm_run` page, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal (`SIGRTMIN`).
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: a TLS read and a store into our own kvm_run page.
    let p = KVM_RUN_PTR.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` points at this thread's mmap'd `kvm_run`, set by the vCPU thread before it
        // unblocked the signal and valid while the thread (which owns the `VcpuFd`) lives.
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (process-wide, once, before vCPU threads start).
pub fn register_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
}

/// Everything the vCPU thread owns.
pub struct VcpuThread {
    pub vcpu: Vcpu,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub commands: Receiver<VcpuCommand>,
    pub events: Sender<VcpuEvent>,
    pub wake: EventFd,
    pub seccomp: Option<seccompiler::BpfProgram>,
    /// Where [`VcpuCommand::Save`] leaves the state (or why it could not be read).
    pub saved: SavedSlot,
    /// What the state reads need to know about the host.
    pub caps: Arc<SaveCaps>,
}

impl std::fmt::Debug for VcpuThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuThread")
            .field("vcpu", &self.vcpu)
            .field("seccomp", &self.seccomp.is_some())
            .finish_non_exhaustive()
    }
}

/// A vCPU's saved state, handed from its thread to the event loop.
pub type SavedSlot = Arc<std::sync::Mutex<Option<Result<VcpuState, VcpuStateError>>>>;

impl VcpuThread {
    fn report(&self, ev: VcpuEvent) {
        let _ = self.events.send(ev);
        let _ = self.wake.write(1);
    }

    /// The thread body: installs the seccomp filter, waits for the first `Resume`, then runs.
    pub fn run(mut self) {
        let idx = self.vcpu.index;
        KVM_RUN_PTR.with(|c| c.set(self.vcpu.fd.get_kvm_run() as *mut kvm_run));
        // Opened before the filter (which forbids open): read at the first KVM_RUN.
        let mut statm = if idx == 0 {
            std::fs::File::open("/proc/self/statm").ok()
        } else {
            None
        };
        if let Some(f) = self.seccomp.take() {
            if let Err(e) = seccompiler::apply_filter(&f) {
                self.report(VcpuEvent::Stopped(
                    idx,
                    VcpuStop::Error(format!("cannot install the vCPU seccomp filter: {e}")),
                ));
                return;
            }
        }
        let mut paused = true;
        let mut first_run = true;
        loop {
            // Drain commands; while paused, block for the next one.
            loop {
                let cmd = if paused {
                    match self.commands.recv() {
                        Ok(c) => c,
                        Err(_) => return,
                    }
                } else {
                    match self.commands.try_recv() {
                        Ok(c) => c,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                };
                match cmd {
                    VcpuCommand::Pause => {
                        if !paused {
                            paused = true;
                        }
                        self.report(VcpuEvent::Paused(idx));
                    }
                    VcpuCommand::Resume => {
                        paused = false;
                        self.report(VcpuEvent::Resumed(idx));
                    }
                    VcpuCommand::Exit => return,
                    VcpuCommand::Save => {
                        let r = if paused {
                            vcpu_state::save(&self.vcpu.fd, idx, &self.vcpu.cpuid, &self.caps)
                        } else {
                            Err(VcpuStateError::Running)
                        };
                        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                        self.report(VcpuEvent::Saved(idx));
                    }
                }
            }
            if first_run {
                first_run = false;
                if idx == 0 {
                    let now = Stamp::now();
                    crate::log_info!(
                        "first KVM_RUN: wall_us={} cpu_us={} rss_kib={} mono_ns={}",
                        now.wall_since(&PROCESS_START),
                        now.cpu_us,
                        statm.as_mut().map(rss_kib_from).unwrap_or(0),
                        now.mono_ns
                    );
                }
            }
            if let Some(stop) = self.run_once() {
                crate::log_info!("vCPU {idx} stopped: {stop:?}");
                self.report(VcpuEvent::Stopped(idx, stop));
                return;
            }
        }
    }

    /// One `KVM_RUN`; returns why the vCPU must stop, if it must.
    fn run_once(&mut self) -> Option<VcpuStop> {
        let exit = match self.vcpu.fd.run() {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                inc(&METRICS.kicks);
                self.vcpu.fd.set_kvm_immediate_exit(0);
                return None;
            }
            Err(e) => return Some(VcpuStop::Error(format!("KVM_RUN failed: {e}"))),
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                inc(&METRICS.io_exits);
                if !self.io_bus.read(u64::from(port), data) {
                    inc(&METRICS.unhandled_io);
                }
                None
            }
            VcpuExit::IoOut(port, data) => {
                inc(&METRICS.io_exits);
                if !self.io_bus.write(u64::from(port), data) {
                    inc(&METRICS.unhandled_io);
                }
                None
            }
            VcpuExit::MmioRead(addr, data) => {
                inc(&METRICS.mmio_exits);
                if !self.mmio_bus.read(addr, data) {
                    inc(&METRICS.unhandled_mmio);
                }
                None
            }
            VcpuExit::MmioWrite(addr, data) => {
                inc(&METRICS.mmio_exits);
                if !self.mmio_bus.write(addr, data) {
                    inc(&METRICS.unhandled_mmio);
                }
                None
            }
            VcpuExit::Hlt => Some(VcpuStop::PowerOff),
            VcpuExit::Shutdown => Some(VcpuStop::TripleFault),
            VcpuExit::SystemEvent(ty, _) => Some(match ty {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
                other => VcpuStop::Error(format!("KVM system event {other}")),
            }),
            VcpuExit::InternalError => Some(self.internal_error()),
            VcpuExit::FailEntry(reason, cpu) => Some(VcpuStop::Error(format!(
                "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on cpu {cpu}"
            ))),
            VcpuExit::Intr => None,
            other => Some(VcpuStop::Error(format!("unexpected vCPU exit {other:?}"))),
        }
    }

    fn internal_error(&mut self) -> VcpuStop {
        let run = self.vcpu.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union: exit_reason is
        // KVM_EXIT_INTERNAL_ERROR (that is how kvm-ioctls produced VcpuExit::InternalError).
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let rip = self.vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        VcpuStop::InternalError {
            suberror: internal.suberror,
            rip,
            data: internal.data[..n].to_vec(),
        }
    }
}
