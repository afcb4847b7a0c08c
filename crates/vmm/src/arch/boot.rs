//! Loading a guest kernel and writing what its boot protocol needs: the command line, the
//! initrd, and either the PVH `hvm_start_info` or the Linux zero page with the e820 map.
//!
//! Runs on the event-loop thread while building the VM (before any vCPU runs).
//!
//! Which entry is used:
//! - ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note (a vmlinux built with CONFIG_PVH): the PVH
//!   entry, 32-bit protected mode, `%ebx` = `hvm_start_info` (Xen's PVH ABI, also Firecracker's
//!   and Cloud Hypervisor's preferred path).
//! - ELF without the note: 64-bit entry at `e_entry` with the Linux zero page in `%rsi`
//!   (Documentation/arch/x86/boot.rst, "64-bit boot protocol").
//! - bzImage (`HdrS` at 0x202): protected-mode part loaded at 1 MiB, 64-bit entry at
//!   load address + 0x200, zero page built from the image's own setup header.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::*;
use super::regs::{EntryMode, EntryPoint};

/// [`CMDLINE_START`] as the setup header's 32-bit pointer (checked at compile time).
const CMDLINE_START_U32: u32 = crate::cast::u32_of(CMDLINE_START);

/// Failure to load the kernel or write its boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is neither an ELF vmlinux nor a bzImage")]
    NotAKernel(String),
    #[error("cannot load the kernel image into guest memory")]
    Load(#[source] linux_loader::loader::Error),
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line into guest memory")]
    CmdlineLoad(#[source] linux_loader::loader::Error),
    #[error("initrd of {size} bytes does not fit in guest memory below 3 GiB above the kernel")]
    InitrdTooLarge { size: u64 },
    #[error("cannot read the initrd into guest memory")]
    InitrdRead(#[source] vm_memory::GuestMemoryError),
    #[error("cannot write {what} into guest memory")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Kernel image formats kobako can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Sniffs the first bytes of a file: ELF magic, or the `HdrS` setup-header magic at 0x202.
pub fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    if n >= 4 && head[0..4] == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Opens `path` and checks it looks like a kernel. Used by `PUT /boot-source` so that bad input
/// fails at configuration time, not at InstanceStart.
pub fn check_kernel(path: &Path) -> Result<KernelFormat, BootError> {
    let mut f = File::open(path).map_err(|source| BootError::Open {
        what: "kernel image",
        path: path.display().to_string(),
        source,
    })?;
    match detect_format(&mut f) {
        Ok(Some(fmt)) => Ok(fmt),
        Ok(None) => Err(BootError::NotAKernel(path.display().to_string())),
        Err(source) => Err(BootError::Open {
            what: "kernel image",
            path: path.display().to_string(),
            source,
        }),
    }
}

/// What a boot needs from the configuration.
#[derive(Debug, Clone)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_bytes: u64,
}

/// Where the initrd ended up.
#[derive(Debug, Clone, Copy)]
struct InitrdPlacement {
    addr: u64,
    size: u64,
}

/// Loads the kernel, command line and initrd and writes the boot protocol structures.
/// Returns vCPU 0's entry point.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec<'_>) -> Result<EntryPoint, BootError> {
    let mut kernel = File::open(spec.kernel).map_err(|source| BootError::Open {
        what: "kernel image",
        path: spec.kernel.display().to_string(),
        source,
    })?;
    let format = detect_format(&mut kernel)
        .ok()
        .flatten()
        .ok_or_else(|| BootError::NotAKernel(spec.kernel.display().to_string()))?;
    let result: KernelLoaderResult = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))),
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
        }
    }
    .map_err(BootError::Load)?;

    let cmdline = Cmdline::try_from(spec.cmdline, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BootError::CmdlineLoad)?;
    // Cmdline::try_from above refused anything longer than CMDLINE_MAX_SIZE (2 KiB).
    let cmdline_len = u32::try_from(spec.cmdline.len() + 1)
        .map_err(|_| BootError::Cmdline(linux_loader::cmdline::Error::TooLarge))?;

    let initrd = match spec.initrd {
        Some(p) => Some(load_initrd(mem, p, result.kernel_end, spec.mem_bytes)?),
        None => None,
    };

    match (format, result.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(entry)) => {
            write_pvh_info(mem, spec.mem_bytes, initrd)?;
            Ok(EntryPoint {
                mode: EntryMode::Protected32,
                addr: entry.raw_value(),
                boot_info: PVH_INFO_START,
            })
        }
        (KernelFormat::Elf, _) => {
            write_zero_page(mem, spec.mem_bytes, None, cmdline_len, initrd)?;
            Ok(EntryPoint {
                mode: EntryMode::Long64,
                addr: result.kernel_load.raw_value(),
                boot_info: ZERO_PAGE_START,
            })
        }
        (KernelFormat::BzImage, _) => {
            write_zero_page(
                mem,
                spec.mem_bytes,
                result.setup_header,
                cmdline_len,
                initrd,
            )?;
            Ok(EntryPoint {
                mode: EntryMode::Long64,
                // 64-bit entry of the protected-mode kernel (boot.rst: "startup_64 at +0x200").
                addr: result.kernel_load.raw_value() + 0x200,
                boot_info: ZERO_PAGE_START,
            })
        }
    }
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    mem_bytes: u64,
) -> Result<InitrdPlacement, BootError> {
    let mut f = File::open(path).map_err(|source| BootError::Open {
        what: "initrd",
        path: path.display().to_string(),
        source,
    })?;
    let size = f
        .seek(SeekFrom::End(0))
        .and_then(|s| f.seek(SeekFrom::Start(0)).map(|_| s))
        .map_err(|source| BootError::Open {
            what: "initrd",
            path: path.display().to_string(),
            source,
        })?;
    // Highest page-aligned spot in low memory (the kernel may not reach above 4 GiB this early).
    let low_end = mem_bytes.min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or(BootError::InitrdTooLarge { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, crate::cast::usize_from(size))
        .map_err(BootError::InitrdRead)?;
    Ok(InitrdPlacement { addr, size })
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// The memory map shared by both protocols: RAM below the EBDA, the legacy hole reserved, RAM
/// from 1 MiB up to the MMIO gap and above it.
pub fn e820_map(mem_bytes: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(mem_bytes) {
        let s = start.max(HIMEM_START);
        let e = start + len;
        if e > s {
            map.push((s, e - s, E820_RAM));
        }
    }
    map
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    let w = |what| move |source| BootError::Write { what, source };
    let map = e820_map(mem_bytes);
    for (i, (addr, size, ty)) in map.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *ty,
            reserved: 0,
        };
        mem.write_obj(
            e,
            GuestAddress(PVH_MEMMAP_START + (i * std::mem::size_of_val(&e)) as u64),
        )
        .map_err(w("PVH memory map"))?;
    }
    let mut info = hvm_start_info {
        // XEN_HVM_START_MAGIC_VALUE, xen/include/public/arch-x86/hvm/start_info.h.
        magic: 0x336e_c578,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        // e820_map has at most 4 entries.
        memmap_entries: u32::try_from(map.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    if let Some(rd) = initrd {
        let m = hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        };
        mem.write_obj(m, GuestAddress(PVH_MODLIST_START))
            .map_err(w("PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(w("PVH start info"))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    header: Option<setup_header>,
    cmdline_len: u32,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    // Values from Documentation/arch/x86/boot.rst.
    params.hdr.type_of_loader = 0xff; // "undefined" boot loader
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.kernel_alignment = 0x0100_0000;
    params.hdr.cmd_line_ptr = CMDLINE_START_U32;
    params.hdr.cmdline_size = cmdline_len;
    if let Some(rd) = initrd {
        // load_initrd placed it below the MMIO gap (3 GiB).
        let too_large = || BootError::InitrdTooLarge { size: rd.size };
        params.hdr.ramdisk_image = u32::try_from(rd.addr).map_err(|_| too_large())?;
        params.hdr.ramdisk_size = u32::try_from(rd.size).map_err(|_| too_large())?;
    }
    let map = e820_map(mem_bytes);
    for (i, (addr, size, ty)) in map.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *ty,
        };
    }
    // At most e820_table.len() (128) entries.
    params.e820_entries = u8::try_from(map.len().min(params.e820_table.len())).unwrap_or(u8::MAX);
    mem.checked_offset(
        GuestAddress(ZERO_PAGE_START),
        std::mem::size_of::<boot_params>(),
    )
    .ok_or(BootError::Write {
        what: "zero page",
        source: vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(ZERO_PAGE_START)),
    })?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::Write {
            what: "zero page",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_skips_gap() {
        let m = e820_map(4 << 30);
        assert_eq!(m[0], (0, EBDA_START, E820_RAM));
        assert_eq!(m[2], (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM));
        assert_eq!(m[3], (MMIO_GAP_END, 1 << 30, E820_RAM));
        assert_eq!(e820_map(64 << 20).len(), 3);
    }

    #[test]
    fn detect_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"not a kernel at all").unwrap();
        assert!(matches!(check_kernel(&p), Err(BootError::NotAKernel(_))));
        assert!(matches!(
            check_kernel(&dir.path().join("missing")),
            Err(BootError::Open { .. })
        ));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&p, &bz).unwrap();
        assert_eq!(check_kernel(&p).unwrap(), KernelFormat::BzImage);
    }
}
