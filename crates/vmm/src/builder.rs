//! Turning a validated [`VmResources`] into a VM that is ready to run, as a sequence of small
//! steps: memory → irqchip → kernel + boot structures → legacy devices → vCPUs (created,
//! configured, their threads started and parked until the event loop resumes them).
//!
//! Runs on the event-loop thread when `InstanceStart` arrives (or at startup with
//! `--config-file`). Nothing is kept on failure: every resource is owned by locals that drop.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::{boot, cpuid, layout, mptable, regs};
use crate::config::VmResources;
use crate::devices::boot_timer::{BootTimer, BOOT_TIMER_PORT};
use crate::devices::i8042::{I8042, I8042_PORT, KBD_IRQ};
use crate::devices::serial::{SerialDevice, SerialOut, COM1_IRQ, COM1_PORT};
use crate::devices::virtio::mmio::{MMIO_LEN, NOTIFY_REG_OFFSET};
use crate::devices::virtio::setup::{self as virtio_setup, VirtioSlot};
use crate::devices::{Bus, EventFdTrigger, SharedDevice};
use crate::seccomp::Filters;
use crate::snapshot::MicrovmState;
use crate::timing::BootTime;
use crate::vstate::vcpu::{SavedSlot, Vcpu, VcpuCommand, VcpuEvent, VcpuThread};
use crate::vstate::vcpu_state::SaveCaps;
use crate::vstate::vm::Vm;

/// Failure to build the VM; the message becomes InstanceStart's `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("No kernel was configured: PUT /boot-source first.")]
    NoBootSource,
    #[error("The CPU template is invalid: {0}")]
    CpuTemplate(String),
    #[error("Cannot create the VM")]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error("Cannot load the kernel")]
    Boot(#[from] boot::BootError),
    #[error("Cannot set up the boot CPU state")]
    Regs(#[from] regs::RegsError),
    #[error("Cannot write the MP table")]
    MpTable(#[from] mptable::MpTableError),
    #[error("Cannot set up vCPUs")]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    #[error("Cannot set up device {what}")]
    Device {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot add a device to a bus")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("Cannot set up the virtio devices")]
    Virtio(#[from] crate::devices::virtio::setup::SetupError),
    #[error("{what}: its region ends at {end:#x}, beyond the guest's {bits}-bit physical address space: use smaller backing files or fewer pmem devices")]
    PmemBeyondPhysBits { what: String, end: u64, bits: u32 },
    #[error("Cannot map {what} into the guest")]
    PmemSlot {
        what: String,
        #[source]
        source: crate::vstate::vm::VmError,
    },
    #[error("Cannot register the eventfds of virtio device {what}")]
    VirtioFd {
        what: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("Cannot restore the snapshot: {0}")]
    Snapshot(String),
    #[error("Cannot start vCPU thread")]
    Thread(#[source] std::io::Error),
}

fn dev_err(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Device { what, source }
}

/// Where the serial console goes, resolved from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleTarget {
    Stdout,
    None,
    File(PathBuf),
    /// Listen on a Unix socket; clients get the output and may type.
    Socket(PathBuf),
}

impl ConsoleTarget {
    /// From `serial_out_path`: absent = stdout, `unix:PATH` = socket, `none`/`/dev/null` = none.
    pub fn from_config(r: &VmResources) -> ConsoleTarget {
        match r.serial.as_ref().and_then(|s| s.serial_out_path.as_ref()) {
            None => ConsoleTarget::Stdout,
            Some(p) => {
                let s = p.to_string_lossy();
                if let Some(rest) = s.strip_prefix("unix:") {
                    ConsoleTarget::Socket(PathBuf::from(rest))
                } else if s == "none" {
                    ConsoleTarget::None
                } else {
                    ConsoleTarget::File(p.clone())
                }
            }
        }
    }
}

/// Extra devices a library user (tests, later the virtio issue) plugs in.
#[derive(Default)]
pub struct ExtraDevices {
    /// `(base, len, device)` on the port-I/O bus.
    pub pio: Vec<(u64, u64, SharedDevice)>,
    /// `(base, len, device)` on the MMIO bus.
    pub mmio: Vec<(u64, u64, SharedDevice)>,
}

impl std::fmt::Debug for ExtraDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraDevices")
            .field("pio", &self.pio.len())
            .field("mmio", &self.mmio.len())
            .finish()
    }
}

/// A vCPU thread as seen by the event loop.
#[derive(Debug)]
pub struct VcpuHandle {
    pub commands: Sender<VcpuCommand>,
    pub thread: JoinHandle<()>,
    /// Filled by the thread on [`VcpuCommand::Save`].
    pub saved: SavedSlot,
}

/// A built VM whose vCPU threads wait for `Resume`.
#[derive(Debug)]
pub struct BuiltVm {
    pub vm: Vm,
    pub vcpus: Vec<VcpuHandle>,
    pub vcpu_events: Receiver<VcpuEvent>,
    /// Written by vCPU threads whenever they post a [`VcpuEvent`].
    pub vcpu_evt: EventFd,
    /// Written by the i8042 on a guest reset request.
    pub reset_evt: EventFd,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub boot_time: Arc<Mutex<Option<BootTime>>>,
    /// Virtio devices, in MMIO/IRQ order.
    pub virtio: Vec<VirtioSlot>,
}

/// Builds the VM described by `res`, ready to boot its kernel.
pub fn build(
    res: &VmResources,
    serial_out: SerialOut,
    filters: Option<&Filters>,
    extra: ExtraDevices,
) -> Result<BuiltVm, BuildError> {
    build_from(res, serial_out, filters, extra, None)
}

/// Builds the VM of a snapshot: `res` is the snapshot's configuration (with the load's
/// overrides applied), `mem` its memory file; every vCPU, the interrupt controllers and the
/// devices continue from `state`.
pub fn restore(
    res: &VmResources,
    serial_out: SerialOut,
    filters: Option<&Filters>,
    state: &MicrovmState,
    mem: &std::fs::File,
) -> Result<BuiltVm, BuildError> {
    build_from(
        res,
        serial_out,
        filters,
        ExtraDevices::default(),
        Some((state, mem)),
    )
}

fn build_from(
    res: &VmResources,
    serial_out: SerialOut,
    filters: Option<&Filters>,
    extra: ExtraDevices,
    snapshot: Option<(&MicrovmState, &std::fs::File)>,
) -> Result<BuiltVm, BuildError> {
    let mem_bytes = res.machine.mem_size_mib << 20;
    let state = snapshot.map(|(st, _)| st);

    // Memory and interrupt controllers.
    let mut vm = match snapshot {
        None => Vm::with_thp(
            mem_bytes,
            res.machine.huge_pages == crate::config::HugePages::Transparent,
        )?,
        Some((_, file)) => Vm::from_memory_file(mem_bytes, file)?,
    };
    vm.setup_irqchip()?;

    // Virtio devices (their places go on the command line), and the guest memory pmem
    // devices bring.
    let virtio = virtio_setup::create(res, &vm.memory)?;
    register_device_memory(&mut vm, &virtio)?;

    // Kernel, command line, initrd, boot protocol structures (a snapshot has them in RAM).
    let entry = match snapshot {
        Some(_) => None,
        None => Some(load_kernel(res, &vm, &virtio)?),
    };

    // Legacy devices on the I/O bus, virtio transports on the MMIO bus; interrupts as irqfds.
    let mut legacy = legacy_devices(&vm, serial_out, state)?;
    let mut mmio_bus = virtio_mmio_bus(&vm, &virtio)?;
    for (base, len, dev) in extra.pio {
        legacy.io_bus.insert(dev, base, len)?;
    }
    for (base, len, dev) in extra.mmio {
        mmio_bus.insert(dev, base, len)?;
    }
    let buses = (Arc::new(legacy.io_bus), Arc::new(mmio_bus));

    // vCPUs: configured here, then parked on their own threads.
    let vcpus = start_vcpus(res, &vm, state, entry.as_ref(), buses, filters)?;
    if let Some(st) = state {
        restore_vm_and_devices(&mut vm, st, &virtio)?;
    }

    Ok(BuiltVm {
        vm,
        vcpus: vcpus.handles,
        vcpu_events: vcpus.events,
        vcpu_evt: vcpus.wake,
        reset_evt: legacy.reset_evt,
        serial: legacy.serial,
        i8042: legacy.i8042,
        boot_time: legacy.boot_time,
        virtio,
    })
}

/// Each pmem device's mapping as a KVM slot at the address its config space gives, after
/// checking that it lies within the guest's physical address width.
fn register_device_memory(vm: &mut Vm, virtio: &[VirtioSlot]) -> Result<(), BuildError> {
    let regions: Vec<_> = virtio
        .iter()
        .filter_map(|s| s.memory.as_ref().map(|m| (s, m)))
        .collect();
    if regions.is_empty() {
        return Ok(());
    }
    let bits = guest_phys_bits(vm);
    for (s, (gpa, map)) in regions {
        let what = match &s.id {
            virtio_setup::DeviceId::Pmem(id) => format!("pmem device {id:?}"),
            other => format!("{other:?}"),
        };
        let end = gpa.saturating_add(map.len());
        if bits < 64 && end > 1u64 << bits {
            return Err(BuildError::PmemBeyondPhysBits { what, end, bits });
        }
        let slot = vm
            .add_file_slot(*gpa, map.clone())
            .map_err(|source| BuildError::PmemSlot {
                what: what.clone(),
                source,
            })?;
        crate::log_info!(
            "{what}: {} MiB at guest physical {gpa:#x} (KVM slot {slot}{})",
            map.len() >> 20,
            if map.read_only() { ", read-only" } else { "" }
        );
    }
    Ok(())
}

/// The guest's physical address width: CPUID leaf 0x8000_0008 EAX[7:0] as KVM offers it (36,
/// the architectural minimum, when KVM does not say).
fn guest_phys_bits(vm: &Vm) -> u32 {
    vm.kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .ok()
        .and_then(|c| {
            c.as_slice()
                .iter()
                .find(|e| e.function == 0x8000_0008)
                .map(|e| e.eax & 0xff)
        })
        .filter(|b| (32..=64).contains(b))
        .unwrap_or(36)
}

/// The port-I/O devices of every VM and their bus.
struct LegacyDevices {
    io_bus: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    /// Written by the i8042 on a guest reset request.
    reset_evt: EventFd,
    boot_time: Arc<Mutex<Option<BootTime>>>,
}

/// The serial port (COM1), the i8042 and the boot timer on a new I/O bus, their interrupts as
/// irqfds; a snapshot's serial and i8042 state restored.
fn legacy_devices(
    vm: &Vm,
    serial_out: SerialOut,
    snapshot: Option<&MicrovmState>,
) -> Result<LegacyDevices, BuildError> {
    let mut io_bus = Bus::new();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(dev_err("serial irq"))?;
    vm.fd
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(|e| dev_err("serial irqfd")(e.into()))?;
    let serial = match snapshot {
        None => SerialDevice::new(EventFdTrigger(serial_irq), serial_out),
        Some(st) => SerialDevice::from_state(EventFdTrigger(serial_irq), serial_out, &st.serial)
            .map_err(dev_err("serial state"))?,
    };
    let serial = Arc::new(Mutex::new(serial));
    io_bus.insert(serial.clone(), COM1_PORT, 8)?;

    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(dev_err("reset eventfd"))?;
    let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(dev_err("i8042 irq"))?;
    vm.fd
        .register_irqfd(&kbd_irq, KBD_IRQ)
        .map_err(|e| dev_err("i8042 irqfd")(e.into()))?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        reset_evt.try_clone().map_err(dev_err("reset eventfd"))?,
        EventFdTrigger(kbd_irq),
    )));
    if let Some(st) = snapshot {
        i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&st.i8042);
    }
    io_bus.insert(i8042.clone(), I8042_PORT, 5)?;

    let boot_time = Arc::new(Mutex::new(None));
    io_bus.insert(
        Arc::new(Mutex::new(BootTimer {
            recorded: boot_time.clone(),
        })),
        BOOT_TIMER_PORT,
        1,
    )?;
    Ok(LegacyDevices {
        io_bus,
        serial,
        i8042,
        reset_evt,
        boot_time,
    })
}

/// A new MMIO bus with every virtio transport, its interrupt as an irqfd and its queue
/// notifications as ioeventfds.
fn virtio_mmio_bus(vm: &Vm, virtio: &[VirtioSlot]) -> Result<Bus, BuildError> {
    let mut mmio_bus = Bus::new();
    for slot in virtio {
        let t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        let what = format!("{:?}", slot.id);
        vm.fd
            .register_irqfd(t.irq_evt(), slot.irq)
            .map_err(|source| BuildError::VirtioFd {
                what: what.clone(),
                source,
            })?;
        for (evt, q) in t.queue_evts().iter().zip(0u32..) {
            vm.fd
                .register_ioevent(
                    evt,
                    &kvm_ioctls::IoEventAddress::Mmio(slot.base + NOTIFY_REG_OFFSET),
                    q,
                )
                .map_err(|source| BuildError::VirtioFd {
                    what: what.clone(),
                    source,
                })?;
        }
        drop(t);
        mmio_bus.insert(slot.transport.clone(), slot.base, MMIO_LEN)?;
    }
    Ok(mmio_bus)
}

/// The parked vCPU threads and how they report.
struct StartedVcpus {
    handles: Vec<VcpuHandle>,
    events: Receiver<VcpuEvent>,
    /// Written by vCPU threads whenever they post a [`VcpuEvent`].
    wake: EventFd,
}

/// Creates every vCPU (cold boot at `entry`, or from the snapshot's state) and starts its
/// thread, parked until the event loop resumes it. `buses` are the I/O and MMIO buses.
fn start_vcpus(
    res: &VmResources,
    vm: &Vm,
    snapshot: Option<&MicrovmState>,
    entry: Option<&regs::EntryPoint>,
    buses: (Arc<Bus>, Arc<Bus>),
    filters: Option<&Filters>,
) -> Result<StartedVcpus, BuildError> {
    let vcpu_count = res.machine.vcpu_count;
    let pvm = cpuid::host_is_pvm();
    // Checked when it was set; compiled again here (cheap) rather than stored twice.
    let template = match &res.cpu_config {
        Some(c) => Some(
            c.compile()
                .map_err(|e| BuildError::CpuTemplate(e.to_string()))?,
        ),
        None => None,
    };
    let (io_bus, mmio_bus) = buses;
    let supported = vm
        .kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    let caps = Arc::new(save_caps(vm));
    if let Some(st) = snapshot {
        check_snapshot_fits(st, &supported, vcpu_count)?;
    }
    crate::vstate::vcpu::register_kick_handler().map_err(|e| {
        dev_err("vCPU kick signal handler")(std::io::Error::from_raw_os_error(e.errno()))
    })?;
    let vcpu_evt = EventFd::new(EFD_NONBLOCK).map_err(dev_err("vCPU eventfd"))?;
    let (ev_tx, ev_rx) = channel();
    let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
    for index in 0..vcpu_count {
        let vcpu = match (snapshot, entry) {
            (Some(st), _) => Vcpu::restore(vm, &st.vcpus[usize::from(index)])?,
            (None, Some(entry)) => Vcpu::new(
                vm,
                index,
                vcpu_count,
                pvm,
                &supported,
                entry,
                template.as_ref(),
            )?,
            (None, None) => return Err(BuildError::NoBootSource),
        };
        let (cmd_tx, cmd_rx) = channel();
        let saved: SavedSlot = Arc::new(Mutex::new(None));
        let t = VcpuThread {
            vcpu,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            commands: cmd_rx,
            events: ev_tx.clone(),
            wake: vcpu_evt.try_clone().map_err(dev_err("vCPU eventfd"))?,
            seccomp: filters.map(|f| f.vcpu.clone()),
            saved: saved.clone(),
            caps: caps.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("fc_vcpu {index}"))
            .stack_size(256 << 10)
            .spawn(move || t.run())
            .map_err(BuildError::Thread)?;
        vcpus.push(VcpuHandle {
            commands: cmd_tx,
            thread,
            saved,
        });
    }
    Ok(StartedVcpus {
        handles: vcpus,
        events: ev_rx,
        wake: vcpu_evt,
    })
}

/// A snapshot's interrupt controllers, PIT and clock, then its virtio devices' state.
fn restore_vm_and_devices(
    vm: &mut Vm,
    st: &MicrovmState,
    virtio: &[VirtioSlot],
) -> Result<(), BuildError> {
    // After the vCPUs (Firecracker's order): the LAPICs exist, then the IOAPIC/PIC routes
    // and the PIT and clock go back.
    vm.restore_state(&st.vm)
        .map_err(|e| BuildError::Snapshot(crate::error_chain(&e)))?;
    // Last: a restored device may raise its interrupt at once (vsock's transport reset,
    // a pending InterruptStatus), which must land in the restored interrupt controllers,
    // not in fresh ones that KVM_SET_IRQCHIP/KVM_SET_LAPIC then overwrite (the vCPUs are
    // parked, so the interrupt waits for them).
    if st.virtio.len() != virtio.len() {
        return Err(BuildError::Snapshot(format!(
            "the snapshot has {} virtio devices, its configuration {}",
            st.virtio.len(),
            virtio.len()
        )));
    }
    for (slot, (id, ts)) in virtio.iter().zip(&st.virtio) {
        slot.transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(ts)
            .map_err(|e| BuildError::Snapshot(format!("device {id}: {e}")))?;
    }
    Ok(())
}

/// Kernel, command line, initrd, GDT, page tables and MP table of a cold boot.
fn load_kernel(
    res: &VmResources,
    vm: &Vm,
    virtio: &[VirtioSlot],
) -> Result<regs::EntryPoint, BuildError> {
    let bs = res.boot_source.as_ref().ok_or(BuildError::NoBootSource)?;
    let mem_bytes = res.machine.mem_size_mib << 20;
    let mut cmdline = bs
        .boot_args
        .clone()
        .unwrap_or_else(|| "console=ttyS0 reboot=k panic=1".to_string());
    cmdline.push_str(&virtio_setup::cmdline_entries(res, virtio));
    let entry = boot::load(
        &vm.memory,
        &boot::BootSpec {
            kernel: &bs.kernel_image_path,
            initrd: bs.initrd_path.as_deref(),
            cmdline: &cmdline,
            mem_bytes,
        },
    )?;
    regs::write_gdt(&vm.memory, entry.mode)?;
    if entry.mode == regs::EntryMode::Long64 {
        // Always cover the first 4 GiB so the MMIO gap (devices, IOAPIC, LAPIC) is reachable
        // with the boot page tables, plus all RAM above it (up to the layout's cap).
        regs::write_page_tables(&vm.memory, layout::ram_end(mem_bytes).max(1 << 32))?;
    }
    mptable::setup(&vm.memory, res.machine.vcpu_count)?;
    Ok(entry)
}

/// What the vCPU threads need to save their state later (asked now: /dev/kvm is closed to
/// the process once seccomp is on).
fn save_caps(vm: &Vm) -> SaveCaps {
    use kvm_ioctls::Cap;
    let msr_list = vm
        .kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    // KVM_CAP_XSAVE2 gives the XSAVE area size when it exceeds the legacy 4 KiB (AMX).
    let xsave2 = vm.kvm.check_extension_int(Cap::Xsave2);
    SaveCaps {
        msr_list,
        xsave: vm.kvm.check_extension(Cap::Xsave) && xsave2 <= 4096,
        xcrs: vm.kvm.check_extension(Cap::Xcrs),
        irqchip: vm.irqchip,
    }
}

/// Refuses a snapshot this host cannot run, with the reason.
fn check_snapshot_fits(
    st: &MicrovmState,
    supported: &kvm_bindings::CpuId,
    vcpu_count: u8,
) -> Result<(), BuildError> {
    if st.vcpus.len() != usize::from(vcpu_count) {
        return Err(BuildError::Snapshot(format!(
            "it has state for {} vCPUs, its configuration says {vcpu_count}",
            st.vcpus.len()
        )));
    }
    let vendor = crate::snapshot::cpu_vendor();
    if st.cpu_vendor != vendor {
        return Err(BuildError::Snapshot(format!(
            "it was taken on a {} CPU and this host has a {vendor} CPU: load it on a host like the one that took it",
            st.cpu_vendor
        )));
    }
    for v in &st.vcpus {
        let missing = crate::snapshot::missing_cpu_features(&v.cpuid, supported.as_slice());
        if let Some((leaf, reg, bits)) = missing.first() {
            return Err(BuildError::Snapshot(format!(
                "its vCPU {} uses CPU features this host's KVM lacks (CPUID leaf {leaf:#x} {reg} bits {bits:#x}): load it on a host with the same CPU model",
                v.index
            )));
        }
    }
    Ok(())
}
