//! PID 1 duties on tiny images: mount the API filesystems, hostname, loopback, a shell on the
//! serial console, and a clean power-off. Runs on the main thread before the agent serves.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Command;

use kobako_agent::reaper;

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f, d) = (
        CString::new(src).unwrap_or_default(),
        CString::new(target).unwrap_or_default(),
        CString::new(fstype).unwrap_or_default(),
        CString::new(data).unwrap_or_default(),
    );
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // EBUSY: already mounted (the kernel mounts devtmpfs on a disk root itself).
        if e.raw_os_error() != Some(libc::EBUSY) {
            console(&format!("kobako-agent: mount {target} ({fstype}): {e}"));
        }
    }
}

/// Write a line to the kernel console (shows in the VM's console log).
pub fn console(line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(f, "{line}\r");
    }
}

pub fn mount_api_filesystems() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid_nodev_noexec, "");
    mount("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    );
    mount(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
    );
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    );
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
    );
}

pub fn set_hostname(name: &str) {
    // SAFETY: pointer and length describe a valid byte buffer.
    let rc = unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) };
    if rc != 0 {
        console(&format!(
            "kobako-agent: sethostname {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let _ = std::fs::write("/etc/hostname", format!("{name}\n"));
}

/// Bring an interface up with SIOCGIFFLAGS/SIOCSIFFLAGS (no netlink needed for loopback).
pub fn link_up(ifname: &str) {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in ifname.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    // SAFETY: fd is a valid socket and ifr a valid ifreq for these ioctls.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) != 0 {
                console(&format!(
                    "kobako-agent: {ifname} up: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        libc::close(fd);
    }
}

/// Keep a login shell on the serial console, respawning it when it exits (like getty).
pub fn spawn_console_shell(tty: &str) {
    let tty = tty.to_string();
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || loop {
            let started = std::time::Instant::now();
            let path = format!("/dev/{tty}");
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-l")
                .env("HOME", "/root")
                .env("TERM", "vt100")
                .env("PATH", crate::DEFAULT_PATH)
                .current_dir("/root");
            let cpath = CString::new(path.clone()).unwrap_or_default();
            // SAFETY: the closure runs in the child between fork and exec and only calls
            // async-signal-safe functions (setsid, open, ioctl, dup2, close).
            unsafe {
                cmd.pre_exec(move || {
                    libc::setsid();
                    let fd = libc::open(cpath.as_ptr(), libc::O_RDWR);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::ioctl(fd, libc::TIOCSCTTY, 1);
                    for t in 0..3 {
                        libc::dup2(fd, t);
                    }
                    if fd > 2 {
                        libc::close(fd);
                    }
                    Ok(())
                });
            }
            match reaper::spawn(&mut cmd) {
                Ok((_child, rx)) => {
                    let _ = rx.recv();
                }
                Err(e) => {
                    console(&format!("kobako-agent: console shell on {path}: {e}"));
                    return;
                }
            }
            // A shell that dies at once (no tty, broken image) must not spin.
            if started.elapsed() < std::time::Duration::from_secs(1) {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        })
        .ok();
}

/// Stop everything and end the VM. As PID 1 this does not return.
pub fn shutdown(reboot: bool, pid1: bool) {
    if !pid1 {
        // A service on a distro image: ask the init system.
        // Through the reaper: it owns waiting for this process's children.
        let mut cmd = Command::new(if reboot { "reboot" } else { "poweroff" });
        if let Ok((_child, exited)) = reaper::spawn(&mut cmd) {
            let _ = exited.recv();
        }
        return;
    }
    // SAFETY: kill(-1) signals every process we may signal except ourselves (PID 1).
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(std::time::Duration::from_millis(50));
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let root = CString::new("/").unwrap_or_default();
    // SAFETY: remount of "/" read-only with valid strings; failure is harmless (initramfs).
    unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    // The runtimes start the VM with "reboot=t" and "-no-reboot" (or the VMM's equivalent): a
    // reset ends the VM process, which works on every machine type, with or without ACPI. The host
    // learns power-off vs reboot from the ShuttingDown message sent before this.
    // SAFETY: reboot(2) as PID 1; does not return on success.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // Only reached if reboot failed.
    console("kobako-agent: reboot(2) failed; halting");
    loop {
        std::thread::park();
    }
}

/// The boot-complete signal of kobako-vmm (and Firecracker): the value 123 written to I/O port
/// 0x3f0. The VMM records the time since its process start as the guest's boot time.
pub const BOOT_MARK_PORT: u16 = 0x3f0;
pub const BOOT_MARK_VALUE: u8 = 123;

/// Why the boot-complete signal could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootMarkError {
    #[cfg(target_arch = "x86_64")]
    #[error("ioperm({BOOT_MARK_PORT:#x}): {0}")]
    Ioperm(std::io::Error),
    #[cfg(not(target_arch = "x86_64"))]
    #[error("the boot-complete port write exists only on x86_64")]
    Unsupported,
}

/// Writes the boot-complete signal, when the host asked for it with `kobako.bootmark=1` (the
/// `vmm` runtime does; on other machines the port may belong to a device, so it is never
/// written unasked). Needs CAP_SYS_RAWIO (PID 1 and root have it).
#[cfg(target_arch = "x86_64")]
pub fn boot_mark() -> Result<(), BootMarkError> {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap for one port.
    if unsafe { libc::ioperm(u64::from(BOOT_MARK_PORT), 1, 1) } != 0 {
        return Err(BootMarkError::Ioperm(std::io::Error::last_os_error()));
    }
    // SAFETY: the port was just granted to this thread; writing one byte to it has no effect on
    // this process's memory. The host asked for exactly this write (kobako.bootmark=1).
    unsafe {
        std::arch::asm!("out dx, al", in("dx") BOOT_MARK_PORT, in("al") BOOT_MARK_VALUE,
            options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn boot_mark() -> Result<(), BootMarkError> {
    Err(BootMarkError::Unsupported)
}
