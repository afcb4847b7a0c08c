//! The jail's cgroups: `kobako/<vm>.<uid>` in each v1 controller (memory, cpu, pids, blkio) or
//! in the v2 hierarchy, with the VM's limits; its OOM record.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::Jail;
use crate::{io, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cgroup v1 controllers kobako uses (mounted separately on these hosts).
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "blkio"];

/// Whether the host runs cgroup v2 only (unified hierarchy at /sys/fs/cgroup).
fn unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The directories of a VM's cgroup, one per controller (v1) or one (v2).
pub fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    if unified() {
        return vec![Path::new(CGROUP_ROOT).join(cgroup)];
    }
    V1_CONTROLLERS
        .iter()
        .map(|c| Path::new(CGROUP_ROOT).join(c))
        .filter(|c| c.is_dir())
        .map(|c| c.join(cgroup))
        .collect()
}

fn write_knob(dir: &Path, knob: &str, value: &str) -> Result<()> {
    let p = dir.join(knob);
    std::fs::write(&p, value).map_err(io(format!("write {value} to {}", p.display())))
}

/// Creates the VM's cgroups with its limits; returns each one's `cgroup.procs`, opened for the
/// child to write itself into. A group left by a killed supervisor is removed first.
pub fn create_cgroups(j: &Jail) -> Result<Vec<std::fs::File>> {
    remove_cgroups(&j.cgroup);
    // A parent may vanish under us: the last VM of a lab removes the lab's group when it ends.
    let mut tries = 0;
    loop {
        match create_parents(j).and_then(|()| create_own(j)) {
            Ok(procs) => return Ok(procs),
            Err(_) if tries < 3 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The groups above the VM's (a user's, a lab's) with their limits, set again at each start
/// (a quota may have changed).
fn create_parents(j: &Jail) -> Result<()> {
    for p in &j.parents {
        let dirs: Vec<PathBuf> = if unified() {
            vec![Path::new(CGROUP_ROOT).join(&p.path)]
        } else {
            ["memory", "pids"]
                .iter()
                .map(|c| Path::new(CGROUP_ROOT).join(c).join(&p.path))
                .collect()
        };
        for dir in dirs {
            std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
            let memory_knob = if unified() {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            if let Some(m) = p.memory_mib {
                if dir.join(memory_knob).exists() {
                    write_knob(&dir, memory_knob, &(m * 1024 * 1024).to_string())?;
                }
            }
            if let Some(n) = p.pids {
                if dir.join("pids.max").exists() {
                    write_knob(&dir, "pids.max", &n.to_string())?;
                }
            }
        }
    }
    Ok(())
}

/// The VM's own group in each hierarchy, with its limits; its `cgroup.procs` files.
fn create_own(j: &Jail) -> Result<Vec<std::fs::File>> {
    let mut procs = Vec::new();
    let mem = (j.limits.memory_mib * 1024 * 1024).to_string();
    let period = 100_000u64;
    let quota = (u64::from(j.limits.cpu_percent) * period / 100).to_string();
    if unified() {
        let root = Path::new(CGROUP_ROOT);
        let dir = root.join(&j.cgroup);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        // Controllers must be enabled in every parent's subtree_control.
        let mut parent = root.to_path_buf();
        for part in Path::new(&j.cgroup)
            .parent()
            .into_iter()
            .flat_map(|p| p.iter())
        {
            let _ = std::fs::write(
                parent.join("cgroup.subtree_control"),
                "+memory +cpu +pids +io",
            );
            parent = parent.join(part);
        }
        let _ = std::fs::write(
            parent.join("cgroup.subtree_control"),
            "+memory +cpu +pids +io",
        );
        write_knob(&dir, "memory.max", &mem)?;
        let _ = write_knob(&dir, "memory.swap.max", "0");
        write_knob(&dir, "cpu.max", &format!("{quota} {period}"))?;
        write_knob(
            &dir,
            "cpu.weight",
            &(j.limits.cpu_shares * 100 / 1024)
                .clamp(1, 10_000)
                .to_string(),
        )?;
        write_knob(&dir, "pids.max", &j.limits.pids.to_string())?;
        procs.push(open_procs(&dir)?);
        return Ok(procs);
    }
    for dir in cgroup_dirs(&j.cgroup) {
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let controller = dir
            .strip_prefix(CGROUP_ROOT)
            .ok()
            .and_then(|p| p.iter().next())
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        match controller.as_str() {
            "memory" => {
                write_knob(&dir, "memory.limit_in_bytes", &mem)?;
                // No swapping the guest out to stay under the limit: over it, the VM is killed.
                let _ = write_knob(&dir, "memory.swappiness", "0");
            }
            "cpu" => {
                write_knob(&dir, "cpu.cfs_period_us", &period.to_string())?;
                write_knob(&dir, "cpu.cfs_quota_us", &quota)?;
                write_knob(&dir, "cpu.shares", &j.limits.cpu_shares.to_string())?;
            }
            "pids" => write_knob(&dir, "pids.max", &j.limits.pids.to_string())?,
            // blkio: the VM's I/O is accounted per VM (blkio.throttle.io_service_bytes);
            // throttles are per device and set when an operator asks for them.
            _ => {}
        }
        procs.push(open_procs(&dir)?);
    }
    Ok(procs)
}

fn open_procs(dir: &Path) -> Result<std::fs::File> {
    let p = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&p)
        .map_err(io(format!("open {}", p.display())))
}

/// Removes a VM's cgroups (they are empty once its processes are gone; a few retries cover
/// the kernel finishing the exit).
pub fn remove_cgroups(cgroup: &str) {
    for dir in cgroup_dirs(cgroup) {
        for _ in 0..50 {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        // The groups above it (a lab's, a user's) go with their last VM; one still holding
        // others is busy and stays.
        let mut up = dir.parent();
        while let Some(p) = up {
            if p.file_name().is_none_or(|n| n == "kobako") || std::fs::remove_dir(p).is_err() {
                break;
            }
            up = p.parent();
        }
    }
}

/// Whether the kernel's OOM killer killed a process of this cgroup (its memory limit).
pub fn oom_killed(cgroup: &str) -> bool {
    let (file, key) = if unified() {
        ("memory.events", "oom_kill")
    } else {
        ("memory.oom_control", "oom_kill")
    };
    cgroup_dirs(cgroup)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
        .any(|s| {
            s.lines().any(|l| {
                l.split_once(' ')
                    .is_some_and(|(k, v)| k == key && v.trim().parse::<u64>().unwrap_or(0) > 0)
            })
        })
}

/// A VM's memory limit raised for a while ([`raise_memory`]); the old one is back when dropped.
pub struct MemoryRaise {
    restore: Vec<(PathBuf, String)>,
}

/// Raises the memory limit of a VM's cgroup by `mib` until the returned guard is dropped: a
/// `kobako vmm` snapshot stages the guest's memory in the VM's work directory (a tmpfs on most
/// hosts), whose pages count against the VM's own cgroup.
pub fn raise_memory(cgroup: &str, mib: u64) -> MemoryRaise {
    let knob = if unified() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let mut restore = Vec::new();
    for dir in cgroup_dirs(cgroup) {
        let p = dir.join(knob);
        let Ok(old) = std::fs::read_to_string(&p) else {
            continue;
        };
        let old = old.trim().to_string();
        if let Ok(n) = old.parse::<u64>() {
            if std::fs::write(&p, (n + mib * 1024 * 1024).to_string()).is_ok() {
                restore.push((p, old));
            }
        }
    }
    MemoryRaise { restore }
}

impl Drop for MemoryRaise {
    fn drop(&mut self) {
        for (p, old) in &self.restore {
            let _ = std::fs::write(p, old);
        }
    }
}

/// Starts, on a thread of its own, a move of this process into the cgroup it is already in
/// (a no-op for its accounting). Moving a process between cgroups waits for an RCU grace period
/// when none is under way (10-20 ms here), and moves that come during or just after one do not
/// wait again: begun when the supervisor starts, this one's grace period passes while it binds
/// the VM's sockets and builds the jail, and the VM process's own join is then about free.
pub fn warm_up_moves() {
    let _ = std::thread::Builder::new()
        .name("cgroup-warm".into())
        .spawn(|| {
            let Ok(mine) = std::fs::read_to_string("/proc/self/cgroup") else {
                return;
            };
            // The first hierarchy that lists a controller kobako uses (v1) or the unified one.
            let dir = mine.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                let base = if ctrls.is_empty() {
                    Path::new(CGROUP_ROOT).to_path_buf()
                } else {
                    let c = ctrls.split(',').find(|c| V1_CONTROLLERS.contains(c))?;
                    Path::new(CGROUP_ROOT).join(c)
                };
                Some(base.join(path.trim_start_matches('/')))
            });
            if let Some(dir) = dir {
                let _ = std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string());
            }
        });
}
