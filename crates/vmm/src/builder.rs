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
use crate::devices::boot_timer::{BootTime, BootTimer, BOOT_TIMER_PORT};
use crate::devices::i8042::{I8042, I8042_PORT, KBD_IRQ};
use crate::devices::serial::{SerialDevice, SerialOut, COM1_IRQ, COM1_PORT};
use crate::devices::virtio::mmio::{MMIO_LEN, NOTIFY_REG_OFFSET};
use crate::devices::virtio::setup::{self as virtio_setup, VirtioSlot};
use crate::devices::{Bus, EventFdTrigger, SharedDevice};
use crate::seccomp::Filters;
use crate::vstate::vcpu::{Vcpu, VcpuCommand, VcpuEvent, VcpuThread};
use crate::vstate::vm::Vm;

/// Failure to build the VM; the message becomes InstanceStart's `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("No kernel was configured: PUT /boot-source first.")]
    NoBootSource,
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
    #[error("Cannot register the eventfds of virtio device {what}")]
    VirtioFd {
        what: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    Cpuid(#[source] kvm_ioctls::Error),
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

/// Builds the VM described by `res`.
pub fn build(
    res: &VmResources,
    serial_out: SerialOut,
    filters: Option<&Filters>,
    extra: ExtraDevices,
) -> Result<BuiltVm, BuildError> {
    let bs = res.boot_source.as_ref().ok_or(BuildError::NoBootSource)?;
    let mem_bytes = res.machine.mem_size_mib << 20;
    let vcpu_count = res.machine.vcpu_count;
    let pvm = cpuid::host_is_pvm();

    // Memory and interrupt controllers.
    let mut vm = Vm::with_thp(
        mem_bytes,
        res.machine.huge_pages == crate::config::HugePages::Transparent,
    )?;
    vm.setup_irqchip()?;

    // Virtio devices (their places go on the command line).
    let virtio = virtio_setup::create(res, &vm.memory)?;

    // Kernel, command line, initrd, boot protocol structures.
    let mut cmdline = bs
        .boot_args
        .clone()
        .unwrap_or_else(|| "console=ttyS0 reboot=k panic=1".to_string());
    cmdline.push_str(&virtio_setup::cmdline_entries(res, &virtio));
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
    mptable::setup(&vm.memory, vcpu_count)?;

    // Legacy devices on the I/O bus; interrupts as irqfds.
    let mut io_bus = Bus::new();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(dev_err("serial irq"))?;
    vm.fd
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(|e| dev_err("serial irqfd")(e.into()))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger(serial_irq),
        serial_out,
    )));
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
    io_bus.insert(i8042.clone(), I8042_PORT, 5)?;

    let boot_time = Arc::new(Mutex::new(None));
    io_bus.insert(
        Arc::new(Mutex::new(BootTimer {
            recorded: boot_time.clone(),
        })),
        BOOT_TIMER_PORT,
        1,
    )?;
    let mut mmio_bus = Bus::new();
    for slot in &virtio {
        let t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        let what = format!("{:?}", slot.id);
        vm.fd
            .register_irqfd(t.irq_evt(), slot.irq)
            .map_err(|source| BuildError::VirtioFd {
                what: what.clone(),
                source,
            })?;
        for (q, evt) in t.queue_evts().iter().enumerate() {
            vm.fd
                .register_ioevent(
                    evt,
                    &kvm_ioctls::IoEventAddress::Mmio(slot.base + NOTIFY_REG_OFFSET),
                    q as u32,
                )
                .map_err(|source| BuildError::VirtioFd {
                    what: what.clone(),
                    source,
                })?;
        }
        drop(t);
        mmio_bus.insert(slot.transport.clone(), slot.base, MMIO_LEN)?;
    }
    for (base, len, dev) in extra.pio {
        io_bus.insert(dev, base, len)?;
    }
    for (base, len, dev) in extra.mmio {
        mmio_bus.insert(dev, base, len)?;
    }
    let io_bus = Arc::new(io_bus);
    let mmio_bus = Arc::new(mmio_bus);

    // vCPUs: configured here, then parked on their own threads.
    let supported = vm
        .kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    crate::vstate::vcpu::register_kick_handler().map_err(|e| {
        dev_err("vCPU kick signal handler")(std::io::Error::from_raw_os_error(e.errno()))
    })?;
    let vcpu_evt = EventFd::new(EFD_NONBLOCK).map_err(dev_err("vCPU eventfd"))?;
    let (ev_tx, ev_rx) = channel();
    let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
    for index in 0..vcpu_count {
        let vcpu = Vcpu::new(&vm, index, vcpu_count, pvm, &supported, &entry)?;
        let (cmd_tx, cmd_rx) = channel();
        let t = VcpuThread {
            vcpu,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            commands: cmd_rx,
            events: ev_tx.clone(),
            wake: vcpu_evt.try_clone().map_err(dev_err("vCPU eventfd"))?,
            seccomp: filters.map(|f| f.vcpu.clone()),
        };
        let thread = std::thread::Builder::new()
            .name(format!("fc_vcpu {index}"))
            .stack_size(256 << 10)
            .spawn(move || t.run())
            .map_err(BuildError::Thread)?;
        vcpus.push(VcpuHandle {
            commands: cmd_tx,
            thread,
        });
    }
    Ok(BuiltVm {
        vm,
        vcpus,
        vcpu_events: ev_rx,
        vcpu_evt,
        reset_evt,
        serial,
        i8042,
        boot_time,
        virtio,
    })
}
