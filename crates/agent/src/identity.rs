//! A fresh identity for a restored guest (see [`kobako_agent::proto::Identity`]).

use std::io;

use kobako_agent::proto::Identity;

use crate::netcfg::NetError;

/// `_IOW('R', 0x03, int[2])`: add entropy with credit.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Why a new identity could not be applied; the agent sends the message to the host.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("seed: odd number of hex digits")]
    SeedOddLength,
    #[error("seed: not hex")]
    SeedNotHex,
    #[error("seed: at least 32 bytes")]
    SeedTooShort,
    #[error("/dev/urandom: {0}")]
    OpenUrandom(io::Error),
    /// An entropy ioctl (`RNDADDENTROPY`, `RNDRESEEDCRNG`) failed.
    #[error("{op}: {err}")]
    Reseed { op: &'static str, err: io::Error },
    #[error("clock_settime: {0}")]
    SetClock(io::Error),
    #[error("{0}")]
    Mac(#[from] NetError),
    #[error("machine-id '{0}': 32 hex digits")]
    BadMachineId(String),
    #[error("/etc/machine-id: {0}")]
    WriteMachineId(io::Error),
}

fn unhex(s: &str) -> Result<Vec<u8>, IdentityError> {
    if !s.len().is_multiple_of(2) {
        return Err(IdentityError::SeedOddLength);
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| IdentityError::SeedNotHex))
        .collect()
}

/// Mixes `seed` into the kernel's input pool with full credit and reseeds the CRNG from it.
fn reseed(seed: &[u8]) -> Result<(), IdentityError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(IdentityError::OpenUrandom)?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // The kernel reads buf_size bytes after the header; keep the buffer 4-byte aligned.
    while !info.len().is_multiple_of(4) {
        info.push(0);
    }
    let words: Vec<u32> = info
        .chunks(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header and buf_size bytes from the pointer;
    // `words` holds exactly that, aligned for the struct's ints.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, words.as_ptr()) } != 0 {
        return Err(IdentityError::Reseed {
            op: "RNDADDENTROPY",
            err: io::Error::last_os_error(),
        });
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(IdentityError::Reseed {
            op: "RNDRESEEDCRNG",
            err: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn set_clock(ns: u64) -> Result<(), IdentityError> {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads one timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(IdentityError::SetClock(io::Error::last_os_error()));
    }
    Ok(())
}

pub fn apply(id: &Identity) -> Result<(), IdentityError> {
    if !id.seed.is_empty() {
        let seed = unhex(&id.seed)?;
        if seed.len() < 32 {
            return Err(IdentityError::SeedTooShort);
        }
        reseed(&seed)?;
    }
    if let Some(ns) = id.realtime_ns {
        set_clock(ns)?;
    }
    for (old, new) in &id.macs {
        if !old.eq_ignore_ascii_case(new) {
            crate::netcfg::set_mac(old, new)?;
        }
    }
    if let Some(h) = &id.hostname {
        crate::init::set_hostname(h);
    }
    if let Some(m) = &id.machine_id {
        if m.len() != 32 || !m.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(IdentityError::BadMachineId(m.clone()));
        }
        std::fs::write("/etc/machine-id", format!("{}\n", m.to_ascii_lowercase()))
            .map_err(IdentityError::WriteMachineId)?;
    }
    Ok(())
}
