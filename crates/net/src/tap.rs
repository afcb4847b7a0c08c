//! Tap devices. Taps cannot be created over rtnetlink; they are made with the `TUNSETIFF`
//! ioctl on `/dev/net/tun` (drivers/net/tun.c) from a thread inside the lab namespace, marked
//! persistent (`TUNSETPERSIST`) so they outlive the creating fd, and then configured (MAC, MTU,
//! master, up) over rtnetlink like any link.
//!
//! A runtime attaches by opening `/dev/net/tun` and `TUNSETIFF`-ing the same name *inside the
//! namespace*: either QEMU itself runs in the namespace (`ip netns exec`-style, see
//! [`crate::Netns::spawn`]), or kobako opens the fd with [`open_tap`] and passes it
//! (`-netdev tap,fd=N`, Firecracker-style).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{NetError, Result};
use crate::netns::Netns;
use crate::types::IfName;

use libc::{TUNSETGROUP, TUNSETIFF, TUNSETOWNER, TUNSETPERSIST};
// ifr_flags is a C short; libc declares the flags as int. The values fit.
const IFF_TAP: i16 = libc::IFF_TAP as i16;
const IFF_NO_PI: i16 = libc::IFF_NO_PI as i16;
const IFF_VNET_HDR: i16 = libc::IFF_VNET_HDR as i16;

/// How a tap fd is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapFlags {
    /// Request `IFF_VNET_HDR` (virtio-net header on every frame; what QEMU/our VMM want for
    /// offloads).
    pub vnet_hdr: bool,
}

fn tunsetiff(name: &IfName, flags: TapFlags) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let fd: OwnedFd = f.into();
    // struct ifreq: char ifr_name[16]; union { short ifr_flags; ... } (40 bytes in total).
    let mut ifr = [0u8; 40];
    ifr[..name.as_str().len()].copy_from_slice(name.as_str().as_bytes());
    let mut fl = IFF_TAP | IFF_NO_PI;
    if flags.vnet_hdr {
        fl |= IFF_VNET_HDR;
    }
    ifr[16..18].copy_from_slice(&fl.to_ne_bytes());
    // SAFETY: TUNSETIFF reads/writes a struct ifreq; `ifr` is a live 40-byte buffer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Creates a persistent tap `name` in `ns` (no-op if a tap of that name exists).
pub fn create_tap(ns: &Netns, name: &IfName) -> Result<()> {
    let n = name.clone();
    ns.enter(move || -> io::Result<()> {
        let fd = tunsetiff(&n, TapFlags::default())?;
        // SAFETY: TUNSETPERSIST takes an int by value; fd is a valid attached tun fd.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })?
    .map_err(NetError::io(format!("create tap {name} in {}", ns.name())))
}

/// Opens a queue of the existing tap `name` in `ns` and returns its fd, ready to hand to a
/// runtime (`-netdev tap,fd=N`). Frames are plain Ethernet (no packet-info header).
pub fn open_tap(ns: &Netns, name: &IfName, flags: TapFlags) -> Result<OwnedFd> {
    let n = name.clone();
    let fd = ns
        .enter(move || tunsetiff(&n, flags))?
        .map_err(NetError::io(format!("open tap {name} in {}", ns.name())))?;
    Ok(fd)
}

/// Lets user `uid` and/or group `gid` attach to the persistent tap `name` in `ns` without
/// CAP_NET_ADMIN (`TUNSETOWNER`/`TUNSETGROUP`), so a runtime can run unprivileged. Call it
/// before the runtime attaches: a single-queue tap takes one fd at a time (EBUSY otherwise).
pub fn set_owner(ns: &Netns, name: &IfName, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    let n = name.clone();
    ns.enter(move || -> io::Result<()> {
        let fd = tunsetiff(&n, TapFlags::default())?;
        for (req, v) in [(TUNSETOWNER, uid), (TUNSETGROUP, gid)] {
            if let Some(v) = v {
                // SAFETY: TUNSETOWNER/TUNSETGROUP take the id by value; fd is an attached tun fd.
                if unsafe { libc::ioctl(fd.as_raw_fd(), req, v as libc::c_ulong) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    })?
    .map_err(NetError::io(format!(
        "set owner of tap {name} in {}",
        ns.name()
    )))
}
