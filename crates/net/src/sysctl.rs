//! Host sysctls that labs need, set while at least one lab holds them and restored to their
//! original value when the last holder lets go.
//!
//! State lives in a directory the caller chooses (the run directory: a reboot resets sysctls,
//! and it resets `/run` with them, so a recorded original never outlives the value it describes):
//!
//! ```text
//! <dir>/.lock                          flock: one change at a time, across processes
//! <dir>/<key>/original                 the value before the first holder (written before the change)
//! <dir>/<key>/holders/<lab>            one empty file per lab that needs the value
//! ```
//! `<key>` is the sysctl under `/proc/sys/net` with `/` replaced by `.` (`ipv4.ip_forward`).
//! The original is written (and synced) before the sysctl changes and removed only after it was
//! restored, so a crash at any point leaves enough to restore it: the next [`HostSysctls::release`]
//! of the last holder does.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{NetError, Result};
use crate::netns::Netns;
use crate::types::LabName;

/// The host-wide state directory: sysctls are host-wide, so every kobako process on the host
/// (whatever its `KOBAKO_RUN`) counts holders in the same place.
pub const HOST_DIR: &str = "/run/kobako/host-sysctl";

/// Sysctls under `/proc/sys/net` of the host namespace, reference-counted by lab.
#[derive(Debug, Clone)]
pub struct HostSysctls {
    dir: PathBuf,
}

/// A sysctl a lab may hold. Only these can be changed through [`HostSysctls`]; the key is
/// therefore never a path built from input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostSysctl {
    /// `net.ipv4.ip_forward`: lab traffic leaving through the host (uplink NAT).
    Ipv4Forward,
}

impl HostSysctl {
    /// Every sysctl kobako may change on the host.
    pub const ALL: &'static [HostSysctl] = &[HostSysctl::Ipv4Forward];

    /// The key under `/proc/sys/net`.
    pub fn key(self) -> &'static str {
        match self {
            HostSysctl::Ipv4Forward => "ipv4/ip_forward",
        }
    }

    fn dir_name(self) -> String {
        self.key().replace('/', ".")
    }
}

/// Held for its `Drop`: closing the file releases the lock.
struct Flock(#[allow(dead_code)] fs::File);

impl Flock {
    fn acquire(path: &Path) -> Result<Flock> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(NetError::io(format!("open {}", path.display())))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed. The lock is released
        // when the file is closed (Drop), also when the process dies.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            return Err(NetError::io(format!("lock {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Flock(f))
    }
}

impl HostSysctls {
    /// State in `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> HostSysctls {
        HostSysctls { dir: dir.into() }
    }

    fn lock(&self) -> Result<Flock> {
        fs::create_dir_all(&self.dir)
            .map_err(NetError::io(format!("create {}", self.dir.display())))?;
        Flock::acquire(&self.dir.join(".lock"))
    }

    fn key_dir(&self, s: HostSysctl) -> PathBuf {
        self.dir.join(s.dir_name())
    }

    /// Sets `s` to `value` on the host for `lab`. The first holder records the value it finds.
    pub fn acquire(&self, lab: &LabName, s: HostSysctl, value: &str) -> Result<()> {
        let _l = self.lock()?;
        let host = Netns::host()?;
        let kd = self.key_dir(s);
        let holders = kd.join("holders");
        fs::create_dir_all(&holders)
            .map_err(NetError::io(format!("create {}", holders.display())))?;
        let orig = kd.join("original");
        if !orig.exists() {
            let now = host.sysctl(s.key())?;
            write_synced(&orig, &now)?;
        }
        let h = holders.join(lab.as_str());
        fs::write(&h, b"").map_err(NetError::io(format!("write {}", h.display())))?;
        if host.sysctl(s.key())? != value {
            tracing::info!(key = s.key(), value, lab = %lab, "set host sysctl");
            host.set_sysctl(s.key(), value)?;
        }
        Ok(())
    }

    /// Drops every hold of `lab`; a sysctl with no holder left gets its original value back.
    /// Returns the sysctls restored. Fine to call for a lab that holds nothing.
    pub fn release(&self, lab: &LabName) -> Result<Vec<(HostSysctl, String)>> {
        let mut restored = Vec::new();
        if !self.dir.exists() {
            return Ok(restored);
        }
        let _l = self.lock()?;
        let host = Netns::host()?;
        for &s in HostSysctl::ALL {
            let kd = self.key_dir(s);
            let holders = kd.join("holders");
            let h = holders.join(lab.as_str());
            match fs::remove_file(&h) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(NetError::io(format!("remove {}", h.display()))(e)),
            }
            let left = fs::read_dir(&holders).map(|d| d.count()).unwrap_or(0);
            let orig = kd.join("original");
            if left > 0 || !orig.exists() {
                continue;
            }
            let v = fs::read_to_string(&orig)
                .map_err(NetError::io(format!("read {}", orig.display())))?;
            let v = v.trim().to_string();
            if host.sysctl(s.key())? != v {
                tracing::info!(key = s.key(), value = %v, "restore host sysctl");
                host.set_sysctl(s.key(), &v)?;
            }
            fs::remove_file(&orig).map_err(NetError::io(format!("remove {}", orig.display())))?;
            restored.push((s, v));
        }
        Ok(restored)
    }

    /// The labs holding `s`.
    pub fn holders(&self, s: HostSysctl) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.key_dir(s).join("holders"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The recorded original value of `s`, while some lab holds it.
    pub fn original(&self, s: HostSysctl) -> Option<String> {
        fs::read_to_string(self.key_dir(s).join("original"))
            .ok()
            .map(|v| v.trim().to_string())
    }
}

/// Writes `path` through a temporary file, synced and renamed, so a crash leaves either no
/// file or the whole value.
fn write_synced(path: &Path, value: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |what: &str| NetError::io(format!("{what} {}", tmp.display()));
    let mut f = fs::File::create(&tmp).map_err(io("create"))?;
    f.write_all(value.as_bytes()).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    fs::rename(&tmp, path).map_err(io("rename"))?;
    Ok(())
}
