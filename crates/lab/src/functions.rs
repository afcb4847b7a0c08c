//! Function as a VM: a handler command in a VM image, deployed once as a warm snapshot, and
//! every invocation run in a fresh clone of it that is destroyed afterwards.
//!
//! `<state>/functions/<name>/`:
//! ```text
//! function.json   the deployment (image, memory, handler, timeout, concurrency, warm timings)
//! warm/           the VM snapshot taken right after the booted VM's agent was ready
//! slots/N.lock    concurrency slots (flock; a killed invoker frees its slot)
//! invocations.jsonl   one line per invocation: timings, exit, bytes
//! ```
//! An invocation: take a slot → restore a clone from `warm/` (its own name and overlay) → give
//! it a fresh identity through the agent (hostname, machine-id, kernel RNG reseeded from the
//! host's randomness, clock; [`kobako_runtime::snapshot::fresh_identity`]) → run the handler with the caller's stdin → collect stdout, stderr and the
//! exit status → destroy the clone. Nothing of a clone survives it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_agent::proto::ExecRequest;
use kobako_runtime::agent::ExecEvent;
use kobako_runtime::config::VmConfig;
use kobako_runtime::{Runtime, VmDir};
use serde::{Deserialize, Serialize};

use crate::controller::Progress;

/// Why a function could not be deployed, found or invoked. Callers act on the variant (the
/// server: 404, 429 with a retry, 400, else 422); the text is what a user reads.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("function name '{0}': use 1-32 lowercase letters, digits or '-'")]
    InvalidName(String),
    #[error("no function '{0}' (deploy it with `kobako fn deploy {0} --run CMD`)")]
    NotFound(String),
    #[error("--run: the handler command is empty")]
    EmptyHandler,
    #[error("--concurrency and --timeout must be at least 1")]
    ZeroLimit,
    /// Every concurrency slot stayed taken for `secs`: try again later.
    #[error("function '{name}': all {slots} slots busy for {secs} s (raise --concurrency)")]
    Busy { name: String, slots: u32, secs: u64 },
    /// A `function.json` this kobako cannot read.
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The clone booted but could not be given its own identity.
    #[error("giving clone {clone} its identity failed: {source}")]
    Identity {
        clone: String,
        #[source]
        source: kobako_runtime::RuntimeError,
    },
    #[error("saving function {name}: {source}")]
    Save {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// Booting, snapshotting, restoring or running in the VM (the guest failed).
    #[error(transparent)]
    Runtime(#[from] kobako_runtime::RuntimeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = FunctionError> = std::result::Result<T, E>;

/// A deployed function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    /// Who deployed it over the API (`None`: root, locally).
    #[serde(default)]
    pub owner: Option<String>,
    pub image: String,
    pub memory_mib: u32,
    /// `sh -c` command; stdin is the invocation's input, stdout its output.
    pub run: String,
    pub timeout_secs: u64,
    /// Invocations running at the same time, at most.
    pub concurrency: u32,
    pub deployed_ms: i64,
    /// Cold boot of the VM that became the warm snapshot.
    pub boot_ms: u64,
    pub snapshot_bytes: u64,
}

/// Timings of one invocation, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub slot_wait_ms: u64,
    pub restore_ms: u64,
    pub identity_ms: u64,
    pub run_ms: u64,
    pub destroy_ms: u64,
    pub total_ms: u64,
}

/// What an invocation returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invocation {
    pub function: String,
    pub clone: String,
    #[serde(with = "bytes_as_text")]
    pub stdout: Vec<u8>,
    #[serde(with = "bytes_as_text")]
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub timings: Timings,
}

mod bytes_as_text {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

impl Invocation {
    /// The exit status a shell would report (128 + signal, 124 for a timeout).
    pub fn exit_code(&self) -> i32 {
        if self.timed_out {
            124
        } else {
            self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
        }
    }
}

fn root() -> PathBuf {
    kobako_state::state_root().join("functions")
}

fn dir(name: &str) -> PathBuf {
    root().join(name)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(FunctionError::InvalidName(name.into()))
    }
}

/// The deployed function `name`.
pub fn get(name: &str) -> Result<Function> {
    check_name(name)?;
    let p = dir(name).join("function.json");
    let text = std::fs::read(&p).map_err(|_| FunctionError::NotFound(name.into()))?;
    serde_json::from_slice(&text).map_err(|source| FunctionError::Unreadable { path: p, source })
}

/// Every deployed function.
pub fn list() -> Vec<Function> {
    let mut v: Vec<Function> = std::fs::read_dir(root())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| get(&e.file_name().to_string_lossy()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Removes a function (its running invocations finish with their clones).
pub fn remove(name: &str) -> Result<()> {
    get(name)?;
    Ok(std::fs::remove_dir_all(dir(name))?)
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Deploys `f` (replacing an older deployment): boots `cfg` once, snapshots it when its agent
/// is ready, stops it. `cfg` is the VM configuration of the function's image (no NICs).
pub async fn deploy(
    rt: Arc<dyn Runtime>,
    mut f: Function,
    mut cfg: VmConfig,
    progress: &dyn Progress,
) -> Result<Function> {
    check_name(&f.name)?;
    if f.run.trim().is_empty() {
        return Err(FunctionError::EmptyHandler);
    }
    if f.concurrency == 0 || f.timeout_secs == 0 {
        return Err(FunctionError::ZeroLimit);
    }
    std::fs::create_dir_all(root())?;
    let staging = root().join(format!(".staging-{}-{}", f.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    cfg.name = format!("fn-{}-warm", f.name);
    cfg.nics.clear();
    cfg.netns = None;
    cfg.cgroups = crate::controller::cgroups::function_levels(&f.name, f.owner.as_deref());
    // As for warm clones (`controller::warm`): on a QEMU that can, the deployed VM's RAM is a
    // file the snapshot takes, and every invocation's clone maps it copy-on-write.
    if rt.name() == "qemu"
        && kobako_runtime::qemu::maps_memory_files(std::path::Path::new("qemu-system-x86_64"))
    {
        let ram = staging.join("build-ram.bin");
        std::fs::File::create(&ram)?;
        cfg.memory_file = Some(kobako_runtime::config::MemoryFile {
            path: ram,
            shared: true,
        });
    }
    let t0 = Instant::now();
    let vm = match rt.create(&cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
    };
    let result = async {
        rt.start(&vm).await?;
        kobako_runtime::wait_ready(&vm, Duration::from_secs(cfg.ready_timeout_secs)).await?;
        f.boot_ms = t0.elapsed().as_millis() as u64;
        progress.event(&format!(
            "booted in {} ms; taking the warm snapshot",
            f.boot_ms
        ));
        rt.snapshot(&vm, &staging.join("warm"), true).await?;
        Ok::<_, FunctionError>(())
    }
    .await;
    let _ = rt.kill(&vm).await;
    let _ = std::fs::remove_file(staging.join("build-ram.bin"));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    f.snapshot_bytes = dir_size(&staging.join("warm"));
    f.deployed_ms = kobako_state::now_ms();
    let write = || -> std::io::Result<()> {
        std::fs::write(
            staging.join("function.json"),
            serde_json::to_vec_pretty(&f).map_err(std::io::Error::other)?,
        )?;
        let dest = dir(&f.name);
        if dest.exists() {
            let old = root().join(format!(".old-{}-{}", f.name, std::process::id()));
            std::fs::rename(&dest, &old)?;
            std::fs::rename(&staging, &dest)?;
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        } else {
            std::fs::rename(&staging, &dest)
        }
    };
    write().map_err(|source| {
        let _ = std::fs::remove_dir_all(&staging);
        FunctionError::Save {
            name: f.name.clone(),
            source,
        }
    })?;
    Ok(f)
}

/// Waits for one of the function's concurrency slots; the slot is held while the file lives.
fn take_slot(f: &Function, wait: Duration) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let slots = dir(&f.name).join("slots");
    std::fs::create_dir_all(&slots)?;
    let deadline = Instant::now() + wait;
    loop {
        for i in 0..f.concurrency {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(slots.join(format!("{i}.lock")))?;
            // SAFETY: flock on a descriptor we own; no memory involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(file);
            }
        }
        if Instant::now() > deadline {
            return Err(FunctionError::Busy {
                name: f.name.clone(),
                slots: f.concurrency,
                secs: wait.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if let Ok(mut r) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = r.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Invokes function `name` with `input` on stdin.
pub async fn invoke(rt: Arc<dyn Runtime>, name: &str, input: Vec<u8>) -> Result<Invocation> {
    let t0 = Instant::now();
    let f = get(name)?;
    let mut t = Timings::default();
    let f2 = f.clone();
    let slot = tokio::task::spawn_blocking(move || {
        take_slot(&f2, Duration::from_secs(f2.timeout_secs.max(30)))
    })
    .await??;
    t.slot_wait_ms = t0.elapsed().as_millis() as u64;
    let clone = format!("fn-{name}-{}", random_hex(4));
    let overlay = kobako_state::state_root().join("vms").join(&clone);
    let t1 = Instant::now();
    let mut cfg = rt.restore_config(&dir(name).join("warm"), &clone, &overlay, false)?;
    cfg.cgroups = crate::controller::cgroups::function_levels(name, f.owner.as_deref());
    let vm = match rt.create(&cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&overlay);
            return Err(e.into());
        }
    };
    let result = run_clone(&rt, &vm, &cfg, &f, &clone, input, &mut t, t1).await;
    let t4 = Instant::now();
    let _ = rt.kill(&vm).await;
    t.destroy_ms = t4.elapsed().as_millis() as u64;
    drop(slot);
    t.total_ms = t0.elapsed().as_millis() as u64;
    let (stdout, stderr, code, signal, timed_out) = result?;
    let inv = Invocation {
        function: name.into(),
        clone,
        stdout,
        stderr,
        code,
        signal,
        timed_out,
        timings: t,
    };
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir(name).join("invocations.jsonl"))
    {
        let line = serde_json::json!({
            "ts_ms": kobako_state::now_ms(), "clone": inv.clone, "exit": inv.exit_code(),
            "timed_out": inv.timed_out, "stdout_bytes": inv.stdout.len(), "timings": inv.timings,
        });
        let _ = writeln!(log, "{line}");
    }
    Ok(inv)
}

type Outcome = (Vec<u8>, Vec<u8>, Option<i32>, Option<i32>, bool);

#[allow(clippy::too_many_arguments)]
async fn run_clone(
    rt: &Arc<dyn Runtime>,
    vm: &VmDir,
    cfg: &VmConfig,
    f: &Function,
    clone: &str,
    input: Vec<u8>,
    t: &mut Timings,
    t1: Instant,
) -> Result<Outcome> {
    rt.start(vm).await?;
    let (client, _) =
        kobako_runtime::wait_ready(vm, Duration::from_secs(cfg.ready_timeout_secs)).await?;
    t.restore_ms = t1.elapsed().as_millis() as u64;
    // A fresh identity: every clone starts from the same memory image.
    let t2 = Instant::now();
    let id = kobako_runtime::snapshot::NewIdentity {
        hostname: Some(kobako_runtime::config::hostname_of(clone)),
        macs: Vec::new(),
        machine_id: true,
    };
    kobako_runtime::snapshot::fresh_identity(&client, &id)
        .await
        .map_err(|source| FunctionError::Identity {
            clone: clone.into(),
            source,
        })?;
    t.identity_ms = t2.elapsed().as_millis() as u64;
    let t3 = Instant::now();
    let mut s = client
        .exec_stream(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), f.run.clone()],
            env: vec![("KOBAKO_FUNCTION".into(), f.name.clone())],
            cwd: None,
            timeout_ms: Some(f.timeout_secs * 1000),
            stdin: true,
            tty: None,
            user: None,
        })
        .await?;
    s.stdin(&input).await?;
    s.close_stdin().await?;
    // The handler runs in the guest: what it prints is kept up to the client's output cap
    // (16 MiB per stream), then cut with a marker; the exit status is still reported.
    let mut out = kobako_runtime::agent::CappedBuf::new(client.max_output());
    let mut err = kobako_runtime::agent::CappedBuf::new(client.max_output());
    let mut status = (None, None, false);
    while let Some(ev) = s.next().await? {
        match ev {
            ExecEvent::Stdout(b) => out.push(&b),
            ExecEvent::Stderr(b) => err.push(&b),
            ExecEvent::Exited {
                code,
                signal,
                timed_out,
            } => status = (code, signal, timed_out),
        }
    }
    t.run_ms = t3.elapsed().as_millis() as u64;
    Ok((out.finish(), err.finish(), status.0, status.1, status.2))
}
