//! Snapshots of a microVM (Firecracker's `PUT /snapshot/create` and `PUT /snapshot/load`).
//!
//! A snapshot is two files:
//! - the **state file** (`snapshot_path`): `KBVMSNAP` magic, format number (u32 LE), body length
//!   (u64 LE), SHA-256 of the body, then the body: JSON of [`MicrovmState`] — the VM's whole
//!   configuration, every vCPU's KVM state, the interrupt controllers, PIT and kvmclock, the
//!   legacy devices and each virtio transport. Small (tens of KiB) and checked whole before
//!   anything is built from it.
//! - the **memory file** (`mem_file_path`): guest RAM, the regions of the memory layout one after
//!   the other, written sparse (4 KiB pages of zeros are holes), so an idle 512 MiB guest costs a
//!   few MiB of disk. A load maps it `MAP_PRIVATE`: pages come from the file when the guest
//!   first touches them (lazily, through the page cache; shared between clones of one snapshot)
//!   and the guest's writes stay in the process, so a snapshot can be loaded any number of times.
//!
//! Refused with the reason: a state file that is not one (magic), of another format, altered
//! or cut short (length, checksum), from another CPU vendor or with CPU features this host's
//! KVM lacks; a memory file of the wrong size; a configuration whose disks or taps are missing
//! (the overrides can point them elsewhere). Nothing of a refused load stays: the VMM is as
//! before and a corrected load can follow.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::config::FullConfig;
use crate::devices::i8042::I8042Snap;
use crate::devices::serial::SerialSnap;
use crate::devices::virtio::mmio::TransportState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

pub const MAGIC: [u8; 8] = *b"KBVMSNAP";
/// Bumped whenever [`MicrovmState`] changes incompatibly.
pub const FORMAT: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// A state file is small; anything bigger is not ours.
const MAX_BODY: u64 = 64 << 20;
const PAGE: usize = 4096;

/// Everything but guest RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct MicrovmState {
    pub vmm_version: String,
    pub created_unix_ms: u64,
    /// CPU vendor string of the host that took it (leaf 0).
    pub cpu_vendor: String,
    /// Taken on a kvm_pvm host.
    pub pvm: bool,
    /// The VM's configuration (without logger, metrics and serial, which belong to a process).
    pub config: FullConfig,
    pub mem_bytes: u64,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnap,
    pub i8042: I8042Snap,
    /// Virtio transports in MMIO order, with the device each belongs to.
    pub virtio: Vec<(String, TransportState)>,
}

/// The host CPU's vendor string ("GenuineIntel", "AuthenticAMD").
pub fn cpu_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = Vec::with_capacity(12);
    for w in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// Writes the state file (created or truncated).
pub fn write_state(path: &Path, s: &MicrovmState) -> io::Result<()> {
    let body = serde_json::to_vec(s).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    let mut f = File::create(path)?;
    f.write_all(&out)?;
    f.sync_all()
}

/// What is wrong with a snapshot's state or memory file (each case names the file).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file could not be opened or read.
    #[error("snapshot state file {}: {source}", path.display())]
    StateIo { path: PathBuf, source: io::Error },
    #[error("snapshot state file {} is not a kobako-vmm snapshot (too short for its header)", path.display())]
    TooShort { path: PathBuf },
    #[error("snapshot state file {} is not a kobako-vmm snapshot (bad magic): give the state file written by PUT /snapshot/create as snapshot_path", path.display())]
    BadMagic { path: PathBuf },
    /// Written by another kobako-vmm version.
    #[error("snapshot state file {} has state format {format}; this kobako-vmm ({}) reads format {FORMAT}: load it with the kobako-vmm version that took it", path.display(), crate::VERSION)]
    Format { path: PathBuf, format: u32 },
    /// The header's body length is implausible.
    #[error("snapshot state file {} is corrupted (body length {len})", path.display())]
    BodyLength { path: PathBuf, len: u64 },
    #[error("snapshot state file {} is truncated ({got} of {len} bytes of state)", path.display())]
    Truncated { path: PathBuf, got: usize, len: u64 },
    #[error("snapshot state file {} is corrupted (checksum mismatch): take the snapshot again", path.display())]
    Checksum { path: PathBuf },
    /// The body is not the state this version writes.
    #[error("snapshot state file {} cannot be read: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The memory file could not be opened or its size read.
    #[error("snapshot memory file {}: {source}", path.display())]
    MemoryIo { path: PathBuf, source: io::Error },
    #[error("snapshot memory file {} has {len} bytes; the snapshot's guest has {want} ({} MiB): it is truncated or belongs to another snapshot", path.display(), mem_bytes >> 20)]
    MemorySize {
        path: PathBuf,
        len: u64,
        want: u64,
        mem_bytes: u64,
    },
}

/// Reads and checks a state file; the error says what is wrong with it.
pub fn read_state(path: &Path) -> Result<MicrovmState, SnapshotError> {
    let p = || path.to_path_buf();
    let mut f = File::open(path).map_err(|source| SnapshotError::StateIo { path: p(), source })?;
    let mut h = [0u8; HEADER_LEN];
    f.read_exact(&mut h)
        .map_err(|_| SnapshotError::TooShort { path: p() })?;
    if h[..8] != MAGIC {
        return Err(SnapshotError::BadMagic { path: p() });
    }
    let format = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
    if format != FORMAT {
        return Err(SnapshotError::Format { path: p(), format });
    }
    let len = u64::from_le_bytes(h[12..20].try_into().unwrap_or_default());
    if len > MAX_BODY {
        return Err(SnapshotError::BodyLength { path: p(), len });
    }
    let mut body = Vec::with_capacity(crate::cast::usize_from(len));
    f.take(len)
        .read_to_end(&mut body)
        .map_err(|source| SnapshotError::StateIo { path: p(), source })?;
    if body.len() as u64 != len {
        return Err(SnapshotError::Truncated {
            path: p(),
            got: body.len(),
            len,
        });
    }
    if Sha256::digest(&body)[..] != h[20..52] {
        return Err(SnapshotError::Checksum { path: p() });
    }
    serde_json::from_slice(&body).map_err(|source| SnapshotError::Decode { path: p(), source })
}

/// Writes guest RAM to `path` (created or truncated), leaving pages of zeros as holes.
/// Returns the bytes actually written.
///
/// Runs on the event loop with every vCPU paused and the devices idle (they run on this
/// thread), so nothing writes guest memory while it is read.
pub fn write_memory(mem: &GuestMemoryMmap, path: &Path) -> io::Result<u64> {
    let f = File::create(path)?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    f.set_len(total)?;
    let zero = [0u8; PAGE];
    let mut file_off = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = crate::cast::usize_from(region.len());
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: `host` is the start of the region's live mapping of `len` bytes, owned by
        // `mem` for the duration of this call; it is only read, while no vCPU runs (see above).
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        let mut run_start: Option<usize> = None;
        let mut flush = |start: usize, end: usize| -> io::Result<()> {
            f.write_all_at(&bytes[start..end], file_off + start as u64)?;
            written += (end - start) as u64;
            Ok(())
        };
        let mut off = 0;
        while off < len {
            let end = (off + PAGE).min(len);
            let is_zero = bytes[off..end] == zero[..end - off];
            match (is_zero, run_start) {
                (false, None) => run_start = Some(off),
                (true, Some(s)) => {
                    flush(s, off)?;
                    run_start = None;
                }
                _ => {}
            }
            // Keep single writes at most 8 MiB.
            if let Some(s) = run_start {
                if end - s >= 8 << 20 {
                    flush(s, end)?;
                    run_start = None;
                }
            }
            off = end;
        }
        if let Some(s) = run_start {
            flush(s, len)?;
        }
        file_off += len as u64;
    }
    f.sync_all()?;
    Ok(written)
}

/// Opens a memory file for a load and checks its size against the snapshot's.
pub fn open_memory(path: &Path, mem_bytes: u64) -> Result<File, SnapshotError> {
    let io = |source| SnapshotError::MemoryIo {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let want: u64 = crate::arch::layout::ram_ranges(mem_bytes)
        .iter()
        .map(|(_, l)| l)
        .sum();
    if len != want {
        return Err(SnapshotError::MemorySize {
            path: path.to_path_buf(),
            len,
            want,
            mem_bytes,
        });
    }
    Ok(f)
}

/// CPU feature bits the snapshot's vCPUs were given that this host's KVM cannot provide:
/// `(leaf, register, bits)`. Empty when the snapshot fits.
pub fn missing_cpu_features(
    saved: &[kvm_bindings::kvm_cpuid_entry2],
    supported: &[kvm_bindings::kvm_cpuid_entry2],
) -> Vec<(u32, &'static str, u32)> {
    let mut out = Vec::new();
    for (leaf, index) in [(0x1u32, 0u32), (0x7, 0), (0x8000_0001, 0)] {
        let find = |t: &[kvm_bindings::kvm_cpuid_entry2]| {
            t.iter()
                .find(|e| e.function == leaf && e.index == index)
                .copied()
        };
        let (Some(s), Some(h)) = (find(saved), find(supported)) else {
            continue;
        };
        for (name, sv, hv) in [
            ("ebx", s.ebx, h.ebx),
            ("ecx", s.ecx, h.ecx),
            ("edx", s.edx, h.edx),
        ] {
            // Leaf 1 ebx is the APIC id / counts, not features; the hypervisor and HTT bits
            // are the VMM's own.
            let ours = match (leaf, name) {
                (1, "ebx") => u32::MAX,
                (1, "ecx") => 1 << 31,
                (1, "edx") => 1 << 28,
                _ => 0,
            };
            let missing = sv & !hv & !ours;
            if missing != 0 {
                out.push((leaf, name, missing));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_refusals_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, b"hello").unwrap();
        assert!(read_state(&p)
            .unwrap_err()
            .to_string()
            .contains("too short"));
        std::fs::write(&p, vec![7u8; 100]).unwrap();
        assert!(read_state(&p)
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&9u32.to_le_bytes());
        h.extend_from_slice(&[0u8; 40]);
        std::fs::write(&p, &h).unwrap();
        assert!(read_state(&p).unwrap_err().to_string().contains("format 9"));
        let body = b"{}";
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&FORMAT.to_le_bytes());
        h.extend_from_slice(&10u64.to_le_bytes());
        h.extend_from_slice(&Sha256::digest(body));
        h.extend_from_slice(body);
        std::fs::write(&p, &h).unwrap();
        assert!(read_state(&p)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        let n = h.len();
        h[12..20].copy_from_slice(&2u64.to_le_bytes());
        h[n - 1] = b']';
        std::fs::write(&p, &h).unwrap();
        assert!(read_state(&p).unwrap_err().to_string().contains("checksum"));
        assert!(read_state(&dir.path().join("none"))
            .unwrap_err()
            .to_string()
            .contains("No such file"));
    }

    #[test]
    fn memory_file_is_sparse_and_size_checked() {
        use vm_memory::{Bytes, GuestAddress};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x1234_u16, GuestAddress(0x3f_f000)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mem");
        let written = write_memory(&mem, &p).unwrap();
        assert_eq!(written, 2 * PAGE as u64, "only the two non-zero pages");
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 4 << 20);
        assert_eq!(&data[0x1000..0x1004], &0xdead_beef_u32.to_le_bytes());
        assert_eq!(&data[0x3f_f000..0x3f_f002], &0x1234_u16.to_le_bytes());
        assert!(open_memory(&p, 4 << 20).is_ok());
        let e = open_memory(&p, 8 << 20).unwrap_err().to_string();
        assert!(
            e.contains("truncated or belongs to another snapshot"),
            "{e}"
        );
    }

    #[test]
    fn cpu_feature_check() {
        let e = |function, ecx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            ecx,
            ..Default::default()
        };
        assert!(missing_cpu_features(&[e(1, 0b101)], &[e(1, 0b111)]).is_empty());
        assert_eq!(
            missing_cpu_features(&[e(1, 0b1101)], &[e(1, 0b0111)]),
            vec![(1, "ecx", 0b1000)]
        );
        assert!(!cpu_vendor().is_empty());
    }
}
