//! Tiny guests on the real /dev/kvm: mode setup, memory layout, page tables, port and MMIO
//! exits reaching the right device, serial output to a file, boot-complete signal, reset,
//! triple fault, emulation failure.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use kobako_vmm::builder::ExtraDevices;
use kobako_vmm::config::{BootSource, MachineConfig, SerialConfig, VmResources};
use kobako_vmm::devices::BusDevice;

/// `(offset, bytes)` of each write a device saw.
type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Records writes; answers reads with a fixed value.
struct Recorder {
    writes: Writes,
    answer: u32,
    answer_offset: u64,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == self.answer_offset {
            self.answer
        } else {
            0
        };
        let b = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&b[..n]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
    }
}

struct Run {
    code: i32,
    serial: String,
    mmio: Vec<(u64, Vec<u8>)>,
    pio: Vec<(u64, Vec<u8>)>,
}

fn run_image(image: &[u8], mem_mib: u64, vcpus: u8, boot_args: &str, mmio_base: u64) -> Run {
    run_image_initrd(image, None, mem_mib, vcpus, boot_args, mmio_base)
}

fn run_image_initrd(
    image: &[u8],
    initrd: Option<&[u8]>,
    mem_mib: u64,
    vcpus: u8,
    boot_args: &str,
    mmio_base: u64,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "kernel", image);
    let initrd_path = initrd.map(|b| write(dir.path(), "initrd", b));
    let serial = dir.path().join("serial.log");
    let mut res = VmResources::default();
    res.set_machine_config(MachineConfig {
        vcpu_count: vcpus,
        mem_size_mib: mem_mib,
        ..Default::default()
    })
    .unwrap();
    res.set_boot_source(BootSource {
        kernel_image_path: kernel,
        initrd_path: initrd_path.clone(),
        boot_args: Some(boot_args.into()),
    })
    .unwrap();
    res.serial = Some(SerialConfig {
        serial_out_path: Some(serial.clone()),
        rate_limiter: None,
    });
    let mmio = Arc::new(Mutex::new(Vec::new()));
    let pio = Arc::new(Mutex::new(Vec::new()));
    let extra = ExtraDevices {
        mmio: vec![(
            mmio_base,
            0x1000,
            Arc::new(Mutex::new(Recorder {
                writes: mmio.clone(),
                answer: 0x600d_d00d,
                answer_offset: 4,
            })),
        )],
        pio: vec![(
            0x510,
            2,
            Arc::new(Mutex::new(Recorder {
                writes: pio.clone(),
                answer: 0x99,
                answer_offset: 1,
            })),
        )],
    };
    // Seccomp stays off in-process: the filters would also confine the test harness.
    let code = kobako_vmm::run_vm(res, extra, false, "test");
    let serial = std::fs::read_to_string(&serial).unwrap_or_default();
    let mmio = mmio.lock().unwrap().clone();
    let pio = pio.lock().unwrap().clone();
    Run {
        code,
        serial,
        mmio,
        pio,
    }
}

#[test]
fn long_mode_elf_reaches_devices_and_resets() {
    let img = elf(&long64(0x20_0000 - 0x800, 0xd000_0000), false);
    let r = run_image(&img, 64, 1, "console=ttyS0", 0xd000_0000);
    assert_eq!(
        r.serial,
        "hello from long mode\nzero page OK\nMEM OK\nMMIO OK\nPIO OK\ndone\n"
    );
    assert_eq!(r.code, kobako_vmm::EXIT_GUEST_RESET);
    assert_eq!(r.mmio, vec![(0, 0xcafe_f00du32.to_le_bytes().to_vec())]);
    assert_eq!(r.pio, vec![(0, vec![0x42])]);
}

#[test]
fn long_mode_guest_uses_memory_above_4g() {
    // 4200 MiB: 3 GiB below the MMIO gap, the rest from 4 GiB up. The guest writes and reads
    // back at 4 GiB + 256 MiB + a page boundary; the identity map must cover it and KVM must
    // back it with RAM (an unbacked address would be an MMIO exit reading all-ones).
    let img = elf(&long64(0x1_1000_0000, 0xd000_0000), false);
    let r = run_image(&img, 4200, 1, "console=ttyS0", 0xd000_0000);
    assert!(r.serial.contains("MEM OK\n"), "serial: {:?}", r.serial);
    assert_eq!(r.code, kobako_vmm::EXIT_GUEST_RESET);
}

#[test]
fn unbacked_address_is_not_ram() {
    // Point the RAM test into the MMIO gap where nothing is mapped: reads return all-ones, so
    // the guest must report MEM BAD (this is what makes the RAM tests above meaningful).
    let img = elf(&long64(0xe000_0000, 0xd000_0000), false);
    let r = run_image(&img, 64, 1, "console=ttyS0", 0xd000_0000);
    assert!(r.serial.contains("MEM BAD\n"), "serial: {:?}", r.serial);
    assert_eq!(r.code, kobako_vmm::EXIT_GUEST_RESET);
}

#[test]
fn bzimage_enters_at_64bit_entry() {
    let img = bzimage(&long64(0x30_0000, 0xd000_1000));
    let r = run_image(&img, 128, 2, "console=ttyS0", 0xd000_1000);
    assert!(
        r.serial.ends_with("PIO OK\ndone\n"),
        "serial: {:?}",
        r.serial
    );
    assert_eq!(r.code, kobako_vmm::EXIT_GUEST_RESET);
}

#[test]
fn pvh_elf_gets_start_info_and_cmdline() {
    let img = elf(guests::PVH32, true);
    let r = run_image(&img, 64, 1, "console=ttyS0 kobako.test=pvh", 0xd000_0000);
    assert_eq!(
        r.serial,
        "PVH OK cmdline=console=ttyS0 kobako.test=pvh\n3 memmap entries\n"
    );
    assert_eq!(r.code, kobako_vmm::EXIT_GUEST_RESET);
}

#[test]
fn pvh_initrd_is_loaded_as_module() {
    let img = elf(guests::PVH32, true);
    let r = run_image_initrd(&img, Some(b"INITRD-CONTENT\n\0"), 64, 1, "x", 0xd000_0000);
    assert_eq!(
        r.serial,
        "PVH OK cmdline=x\n3 memmap entries\ninitrd=INITRD-CONTENT\n"
    );
    assert_eq!(r.code, kobako_vmm::EXIT_GUEST_RESET);
}

#[test]
fn triple_fault_exit_code() {
    let img = elf(guests::TRIPLE, false);
    let r = run_image(&img, 64, 1, "", 0xd000_0000);
    assert_eq!(r.code, kobako_vmm::EXIT_TRIPLE_FAULT);
}

#[test]
fn cmpxchg16b_is_an_emulation_failure_on_pvm() {
    let img = elf(guests::CX16, false);
    let r = run_image(&img, 64, 1, "", 0xd000_0000);
    if kobako_vmm::arch::cpuid::host_is_pvm() {
        assert_eq!(r.code, kobako_vmm::EXIT_EMULATION_FAILURE);
        assert_eq!(r.serial, "");
    } else {
        assert_eq!(r.code, kobako_vmm::EXIT_GUEST_RESET);
        assert_eq!(r.serial, "X");
    }
}

#[test]
fn real_mode_guest_runs_on_a_bare_vcpu() {
    use kobako_vmm::arch::regs::{EntryMode, EntryPoint};
    use kobako_vmm::devices::Bus;
    use kobako_vmm::vstate::vcpu::{Vcpu, VcpuCommand, VcpuEvent, VcpuStop, VcpuThread};
    use kobako_vmm::vstate::vm::Vm;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    // No irqchip here, so the final HLT comes back to the VMM as a stop.
    let vm = Vm::new(16 << 20).unwrap();
    vm.memory
        .write_slice(guests::REAL16, GuestAddress(0x1000))
        .unwrap();
    let supported = vm
        .kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let entry = EntryPoint {
        mode: EntryMode::Real,
        addr: 0x1000,
        boot_info: 0,
    };
    let vcpu = Vcpu::new(
        &vm,
        0,
        1,
        kobako_vmm::arch::cpuid::host_is_pvm(),
        &supported,
        &entry,
        None,
    )
    .unwrap();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut io = Bus::new();
    io.insert(
        Arc::new(Mutex::new(Recorder {
            writes: writes.clone(),
            answer: 0,
            answer_offset: 0,
        })),
        0x3f8,
        8,
    )
    .unwrap();
    kobako_vmm::vstate::vcpu::register_kick_handler().unwrap();
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
    let (ev_tx, ev_rx) = std::sync::mpsc::channel();
    let t = VcpuThread {
        vcpu,
        io_bus: Arc::new(io),
        mmio_bus: Arc::new(Bus::new()),
        commands: cmd_rx,
        events: ev_tx,
        wake: EventFd::new(EFD_NONBLOCK).unwrap(),
        seccomp: None,
        saved: Default::default(),
        caps: Default::default(),
    };
    let h = std::thread::spawn(move || t.run());
    cmd_tx.send(VcpuCommand::Resume).unwrap();
    let timeout = std::time::Duration::from_secs(10);
    assert_eq!(ev_rx.recv_timeout(timeout).unwrap(), VcpuEvent::Resumed(0));
    assert_eq!(
        ev_rx.recv_timeout(timeout).unwrap(),
        VcpuEvent::Stopped(0, VcpuStop::PowerOff)
    );
    h.join().unwrap();
    assert_eq!(*writes.lock().unwrap(), vec![(0, vec![b'R'])]);
    let v: u16 = vm.memory.read_obj(GuestAddress(0x3000)).unwrap();
    assert_eq!(v, 0xbeef);
}
