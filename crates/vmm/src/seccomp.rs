//! Seccomp allow-lists, one per thread kind, compiled with seccompiler and installed by each
//! thread on itself before the guest runs: the API thread when it starts, each vCPU thread
//! before its first `KVM_RUN`, the event-loop thread right after the VM is built (it needs
//! `open`, `mmap`, KVM creation ioctls etc. to build it). `--no-seccomp` skips all of them.
//!
//! A syscall outside the list raises SIGSYS; the handler writes the syscall number to stderr
//! and exits with [`crate::EXIT_BAD_SYSCALL`] (148, as Firecracker), so a missing entry is easy
//! to diagnose. Syscalls are allowed whole except `ioctl`, which is limited per thread to the
//! requests that thread makes after its filter is in place: `KVM_RUN` and `KVM_GET_REGS` on
//! vCPU threads (nothing else on KVM fds: the VM is fully built before), `FIONBIO` (std's
//! `set_nonblocking`) on the API and event-loop threads.
//!
//! `openat` on the API and vCPU threads fails with `EACCES` instead of raising SIGSYS: glibc's
//! `free()` in a thread's own malloc arena, the first time it gives a large freed block back
//! (`shrink_heap`), opens `/proc/sys/vm/overcommit_memory` once to choose how to release it.
//! A client could trigger that from the API thread with any request that allocates ~100 KiB
//! (a 24 KB path echoed in an error; 1,800 held connections), which ended the VMM with 148.
//! With `EACCES` glibc falls back to `madvise(MADV_DONTNEED)` (its choice for any overcommit
//! mode but 2) and caches the answer; nothing else on those threads opens files, so they still
//! cannot open anything.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::cast::{u16_of, u32_of};

/// `KVM_RUN` = `_IO(KVMIO, 0x80)` (include/uapi/linux/kvm.h).
pub const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS` = `_IOR(KVMIO, 0x81, struct kvm_regs)`, `sizeof(struct kvm_regs)` = 144.
pub const KVM_GET_REGS: u64 = (2 << 30) | (144 << 16) | (0xae << 8) | 0x81;

const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
const fn ior<T>(nr: u64) -> u64 {
    kvm_ioc(2, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    kvm_ioc(3, nr, std::mem::size_of::<T>())
}

/// What a paused vCPU thread reads for `PUT /snapshot/create` (include/uapi/linux/kvm.h).
pub const VCPU_SAVE_IOCTLS: [u64; 9] = [
    iowr::<kvm_bindings::kvm_cpuid2>(0x91),     // KVM_GET_CPUID2
    ior::<kvm_bindings::kvm_mp_state>(0x98),    // KVM_GET_MP_STATE
    ior::<kvm_bindings::kvm_sregs>(0x83),       // KVM_GET_SREGS
    ior::<kvm_bindings::kvm_xsave>(0xa4),       // KVM_GET_XSAVE
    ior::<kvm_bindings::kvm_xcrs>(0xa6),        // KVM_GET_XCRS
    ior::<kvm_bindings::kvm_debugregs>(0xa1),   // KVM_GET_DEBUGREGS
    ior::<kvm_bindings::kvm_lapic_state>(0x8e), // KVM_GET_LAPIC
    iowr::<kvm_bindings::kvm_msrs>(0x88),       // KVM_GET_MSRS
    ior::<kvm_bindings::kvm_vcpu_events>(0x9f), // KVM_GET_VCPU_EVENTS
];

/// What the event loop reads from the VM fd for a snapshot.
pub const VM_SAVE_IOCTLS: [u64; 3] = [
    iowr::<kvm_bindings::kvm_irqchip>(0x62),   // KVM_GET_IRQCHIP
    ior::<kvm_bindings::kvm_clock_data>(0x7c), // KVM_GET_CLOCK
    ior::<kvm_bindings::kvm_pit_state2>(0x9f), // KVM_GET_PIT2
];

/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;

/// Failure to compile a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
}

/// The compiled filters.
#[derive(Debug, Clone)]
pub struct Filters {
    pub api: BpfProgram,
    pub vmm: BpfProgram,
    pub vcpu: BpfProgram,
}

/// Syscalls every thread needs: memory allocation, locks, signals, exit, clocks, logging.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_sched_yield,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_getrandom,
    libc::SYS_rseq,
    // Debug builds of std check an fd with F_GETFD before closing it.
    libc::SYS_fcntl,
];

const API: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_accept4,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_fcntl,
];

const VMM: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_fcntl,
    libc::SYS_openat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // Virtio devices: disk images, taps, vsock sockets, rate-limiter timers.
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_readv,
    // FLUSH of virtio-blk and virtio-pmem (queue work: this thread only).
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_timerfd_settime,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
];

const VCPU: &[i64] = &[
    // Serial output to console-socket clients (std sends with MSG_NOSIGNAL).
    libc::SYS_sendto,
    // Re-reading /proc/self/statm (opened before the filter) at the first KVM_RUN.
    libc::SYS_lseek,
];

fn ioctl_rule(name: &'static str, request: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
        .map_err(|e| SeccompError::Build(name, e))?;
    SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(name, e))
}

/// `AUDIT_ARCH_X86_64` (include/uapi/linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Offsets in `struct seccomp_data` (include/uapi/linux/seccomp.h).
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
// Classic BPF opcodes are 16 bits (struct sock_filter.code); libc types them u32. The
// conversions are checked at compile time.
const BPF_LD_W_ABS: u16 = u16_of(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS);
const BPF_JEQ_K: u16 = u16_of(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K);
const BPF_RET_K: u16 = u16_of(libc::BPF_RET | libc::BPF_K);
/// `__NR_openat` (257) as the 32-bit `seccomp_data.nr` (checked at compile time).
const NR_OPENAT: u32 = u32_of(libc::SYS_openat as u64);

/// Instructions put in front of a compiled filter: on x86_64, `openat` returns `EACCES`;
/// everything else (and any other arch) goes on to the filter unchanged. It can only turn
/// calls into errors, never allow one.
fn openat_refused_prefix() -> [sock_filter; 5] {
    let ins = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    [
        ins(BPF_LD_W_ABS, SECCOMP_DATA_ARCH, 0, 0),
        // Another arch: skip the next 3 (to the compiled filter, which kills it).
        ins(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
        ins(BPF_LD_W_ABS, SECCOMP_DATA_NR, 0, 0),
        ins(BPF_JEQ_K, NR_OPENAT, 0, 1),
        ins(
            BPF_RET_K,
            libc::SECCOMP_RET_ERRNO | libc::EACCES as u32,
            0,
            0,
        ),
    ]
}

/// `filter` with [`openat_refused_prefix`] in front.
fn refusing_openat(filter: BpfProgram) -> BpfProgram {
    let mut p = openat_refused_prefix().to_vec();
    p.extend(filter);
    p
}

fn compile(name: &'static str, extra: &[i64], ioctls: &[u64]) -> Result<BpfProgram, SeccompError> {
    let mut rules = BTreeMap::new();
    for nr in COMMON.iter().chain(extra) {
        rules.insert(*nr, vec![]);
    }
    if !ioctls.is_empty() {
        let r = ioctls
            .iter()
            .map(|req| ioctl_rule(name, *req))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, r);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(name, e))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(name, e))
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo for SIGSYS carries the syscall number in si_syscall (after si_call_addr).
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; for SIGSYS the
    // `_sigsys` union member is the active one: pointer (8 bytes) then `int si_syscall`,
    // starting 16 bytes into the struct (after si_signo, si_errno, si_code + padding).
    let nr = unsafe {
        let base = info as *const u8;
        std::ptr::read_unaligned(base.add(16 + 8) as *const i32)
    };
    let mut msg = *b"kobako-vmm: blocked syscall 0000 (seccomp), exiting\n";
    let mut n = u32::try_from(nr).unwrap_or(0);
    for i in (28..32).rev() {
        msg[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: write and _exit are async-signal-safe; `msg` is a valid buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(crate::EXIT_BAD_SYSCALL);
    }
}

/// Compiles all filters and installs the SIGSYS handler.
pub fn build_filters() -> Result<Filters, SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(SeccompError::Handler)?;
    Ok(Filters {
        api: refusing_openat(compile("api", API, &[libc::FIONBIO])?),
        // TUNSETOFFLOAD: a tap's offloads follow what the guest driver acked.
        // The VM fd reads: `PUT /snapshot/create`.
        vmm: compile(
            "vmm",
            VMM,
            &[&[libc::FIONBIO, TUNSETOFFLOAD][..], &VM_SAVE_IOCTLS[..]].concat(),
        )?,
        vcpu: refusing_openat(compile(
            "vcpu",
            VCPU,
            &[&[KVM_RUN, KVM_GET_REGS][..], &VCPU_SAVE_IOCTLS[..]].concat(),
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openat_prefix_jumps_land_on_the_compiled_filter() {
        let f = build_filters().unwrap();
        let p = openat_refused_prefix();
        assert_eq!(&f.api[..p.len()], &p[..]);
        // Not x86_64: 1 + 1 + jf lands on the first instruction after the prefix.
        assert_eq!(1 + 1 + usize::from(p[1].jf), p.len());
        // openat: the next instruction is the errno return; else skip it.
        assert_eq!((p[3].jt, p[3].jf), (0, 1));
        assert_eq!(p[4].k, 0x0005_0000 | 13, "SECCOMP_RET_ERRNO | EACCES");
        assert_eq!(&f.vcpu[..p.len()], &p[..]);
        assert_ne!(&f.vmm[..p.len()], &p[..], "the event loop opens files");
    }

    #[test]
    fn filters_compile() {
        let f = build_filters().unwrap();
        assert!(!f.vcpu.is_empty() && !f.api.is_empty() && !f.vmm.is_empty());
        // The vCPU list must not contain socket setup or file opening.
        assert!(!VCPU.contains(&libc::SYS_accept4) && !VCPU.contains(&libc::SYS_openat));
        // Device flushes (blk, pmem) run on the event loop; vCPU threads never sync files.
        assert!(VMM.contains(&libc::SYS_fdatasync) && !VCPU.contains(&libc::SYS_fdatasync));
        assert!(!API.contains(&libc::SYS_fdatasync) && !COMMON.contains(&libc::SYS_fdatasync));
        assert_eq!(
            KVM_GET_REGS,
            0x8090_ae81,
            "sizeof(kvm_regs) = {}",
            std::mem::size_of::<kvm_bindings::kvm_regs>()
        );
        assert_eq!(std::mem::size_of::<kvm_bindings::kvm_regs>(), 144);
        // Values from the kernel headers (x86_64).
        assert!(VCPU_SAVE_IOCTLS.contains(&0x8138_ae83), "KVM_GET_SREGS");
        assert!(VCPU_SAVE_IOCTLS.contains(&0xc008_ae88), "KVM_GET_MSRS");
        assert!(VCPU_SAVE_IOCTLS.contains(&0x9000_aea4), "KVM_GET_XSAVE");
        assert!(
            VCPU_SAVE_IOCTLS.contains(&0x8040_ae9f),
            "KVM_GET_VCPU_EVENTS"
        );
        assert!(VCPU_SAVE_IOCTLS.contains(&0x8400_ae8e), "KVM_GET_LAPIC");
        assert!(VM_SAVE_IOCTLS.contains(&0x8070_ae9f), "KVM_GET_PIT2");
        assert!(VM_SAVE_IOCTLS.contains(&0xc208_ae62), "KVM_GET_IRQCHIP");
        assert!(VM_SAVE_IOCTLS.contains(&0x8030_ae7c), "KVM_GET_CLOCK");
    }
}
