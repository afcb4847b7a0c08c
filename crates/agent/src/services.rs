//! Supervised services: the VM's `run` commands. Each runs as `/bin/sh -c COMMAND` in its own
//! process group with stdout+stderr appended to /var/log/kobako/NAME.log (rotated at 1 MiB), and
//! is restarted per its policy with a backoff (0.2 s doubling to 10 s; reset after 10 s of
//! uptime). One thread per service.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kobako_agent::proto::{Restart, ServiceSpec, ServiceState};

use crate::lock;
use kobako_agent::reaper;

const LOG_DIR: &str = "/var/log/kobako";
const LOG_MAX: u64 = 1 << 20;

struct Svc {
    spec: ServiceSpec,
    /// Bumped when the service is replaced or removed; its thread exits when it differs.
    generation: u64,
    pid: Option<i32>,
    restarts: u32,
    last_exit: Option<String>,
}

fn table() -> &'static Mutex<HashMap<String, Svc>> {
    static T: OnceLock<Mutex<HashMap<String, Svc>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

fn next_generation() -> u64 {
    static G: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    G.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn log_path(name: &str) -> String {
    format!("{LOG_DIR}/{name}.log")
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !n.starts_with('.')
}

fn stop_pid(pid: i32) {
    // SAFETY: signalling the process group we created for the service.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while crate_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

fn crate_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Replace the set of services: unchanged ones keep running, changed or removed ones are stopped,
/// new ones started.
pub fn set(specs: Vec<ServiceSpec>) {
    let mut to_stop = Vec::new();
    let mut to_start = Vec::new();
    {
        let mut t = lock(table());
        let wanted: HashMap<String, ServiceSpec> = specs
            .into_iter()
            .filter(|s| valid_name(&s.name))
            .map(|s| (s.name.clone(), s))
            .collect();
        t.retain(|name, svc| {
            let keep = wanted.get(name) == Some(&svc.spec);
            if !keep {
                if let Some(pid) = svc.pid {
                    to_stop.push(pid);
                }
            }
            keep
        });
        for (name, spec) in wanted {
            if !t.contains_key(&name) {
                let generation = next_generation();
                t.insert(
                    name.clone(),
                    Svc {
                        spec,
                        generation,
                        pid: None,
                        restarts: 0,
                        last_exit: None,
                    },
                );
                to_start.push((name, generation));
            }
        }
    }
    for pid in to_stop {
        stop_pid(pid);
    }
    let _ = std::fs::create_dir_all(LOG_DIR);
    for (name, generation) in to_start {
        std::thread::Builder::new()
            .name(format!("svc-{name}"))
            .spawn(move || supervise(name, generation))
            .ok();
    }
}

fn current(name: &str, generation: u64) -> Option<ServiceSpec> {
    lock(table())
        .get(name)
        .filter(|s| s.generation == generation)
        .map(|s| s.spec.clone())
}

fn rotate(path: &str) {
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > LOG_MAX {
        let _ = std::fs::rename(path, format!("{path}.1"));
    }
}

fn supervise(name: String, generation: u64) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(spec) = current(&name, generation) else {
            return;
        };
        let path = log_path(&name);
        rotate(&path);
        let log = OpenOptions::new().create(true).append(true).open(&path);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&spec.command)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let started = Instant::now();
        let exit = match reaper::spawn(&mut cmd) {
            Ok((child, rx)) => {
                let pid = child.id() as i32;
                {
                    let mut t = lock(table());
                    match t.get_mut(&name).filter(|s| s.generation == generation) {
                        Some(s) => s.pid = Some(pid),
                        None => {
                            drop(t);
                            stop_pid(pid);
                            return;
                        }
                    }
                }
                match rx.recv() {
                    Ok(reaper::ExitStatus::Code(c)) => (format!("exited with status {c}"), c == 0),
                    Ok(reaper::ExitStatus::Signal(s)) => (format!("killed by signal {s}"), false),
                    Err(_) => ("lost".to_string(), false),
                }
            }
            Err(e) => (format!("could not start: {e}"), false),
        };
        let again = {
            let mut t = lock(table());
            let Some(s) = t.get_mut(&name).filter(|s| s.generation == generation) else {
                return;
            };
            s.pid = None;
            s.last_exit = Some(exit.0.clone());
            let again = match spec.restart {
                Restart::Always => true,
                Restart::OnFailure => !exit.1,
                Restart::Never => false,
            };
            if again {
                s.restarts += 1;
            }
            again
        };
        if !again {
            return;
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

pub fn status() -> Vec<ServiceState> {
    let t = lock(table());
    let mut v: Vec<ServiceState> = t
        .iter()
        .map(|(name, s)| ServiceState {
            name: name.clone(),
            running: s.pid.is_some(),
            pid: s.pid,
            restarts: s.restarts,
            last_exit: s.last_exit.clone(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn logs(name: &str, tail: u64) -> Result<String, String> {
    if !valid_name(name) || !lock(table()).contains_key(name) {
        return Err(format!("no service '{name}'"));
    }
    let mut f = std::fs::File::open(log_path(name)).map_err(|e| format!("log of {name}: {e}"))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(tail)));
    let mut s = Vec::new();
    f.read_to_end(&mut s).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&s).into_owned())
}
