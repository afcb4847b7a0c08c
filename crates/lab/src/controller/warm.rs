//! Warm clones: `up` restores VMs from a snapshot of an already booted VM instead of booting
//! them, when one exists for the same boot configuration.
//!
//! `$KOBAKO_CACHE/warm/<key>/` (default `/var/cache/kobako/warm`):
//! ```text
//! warm.json   what it was made from (the key's inputs), the snapshot's MACs, timings
//! snap/       a VM snapshot (kobako_runtime::snapshot) taken when the agent was ready;
//!             with QEMU 8.2 or later its RAM is `snap/ram.bin` and its stream device state only
//! ```
//! Shared memory: on a QEMU that maps a file copy-on-write as guest RAM, the warm VM runs with
//! its RAM in a file, and each clone maps the snapshot's copy of it privately (QEMU's
//! `memory-backend-file`, `x-ignore-shared`; the same idea as Kata Containers' VM templates and
//! Firecracker's `MAP_PRIVATE` snapshot load): a clone reads kilobytes instead of the whole
//! memory stream, and the pages no clone has written exist once in the host's page cache,
//! however many clones run. On an older QEMU each clone reads its RAM from the stream.
//! The key is a hash of everything the snapshot depends on: runtime and QEMU version, kobako's
//! version, accelerator, vCPUs, memory, kernel (path, size, mtime), root (initramfs, or the
//! base image under a disk overlay: path, size, mtime), the image's kernel parameters, and the
//! number of NICs (virtio-net, the only model). A change of any of them is another key, so a
//! snapshot is never used for a configuration it was not made from; a VM with extra disks
//! (a cloud-init seed) is never cloned. At most [`KEEP`] warm snapshots are kept.
//!
//! Building one: a VM of the configuration boots once, with a neutral name and NICs on private
//! taps in a private namespace, is snapshotted when its agent is ready, and is killed. A clone:
//! the snapshot restored under the lab VM's name, on the lab VM's taps, then given its own
//! identity through the agent at once (kernel RNG reseeded from the host, clock, each NIC's MAC
//! changed from the snapshot's to the lab's, hostname, a new machine-id) before the lab
//! configures it like a booted VM (interfaces by MAC, addresses, routes, files, services).
//!
//! Disk-rooted VMs (Debian images: systemd, the agent a service) are cloned too; their warm VM
//! is snapshotted once systemd has finished booting (see [`settle`]), and each clone runs on its
//! own overlay over the image, like a booted VM.
//!
//! Opt out: `kobako up --cold`, or `KOBAKO_WARM=0` (the server reads it too).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kobako_runtime::agent::AgentClient;
use kobako_runtime::config::{Nic, Root, VmConfig};
use kobako_runtime::snapshot::{self, NewIdentity};
use kobako_runtime::{Runtime, VmDir};
use serde::{Deserialize, Serialize};

/// Why a VM gets no warm clone: it then boots cold, and `up` says why. Cloneable (causes
/// behind an `Arc`): one failed build answers every VM of that configuration in an `up`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WarmError {
    /// This configuration or image is never cloned (another runtime, extra disks, a raw
    /// writable root, no kernel, an agent that cannot give clones an identity).
    #[error("{0}")]
    Unsupported(String),
    #[error("warm snapshot {0} is locked by another process")]
    Locked(String),
    #[error("warm snapshot has {snapshot} NICs, the VM {vm}")]
    NicCount { snapshot: usize, vm: usize },
    /// Host I/O, naming the path or tool.
    #[error("{what}: {err}")]
    Io {
        what: String,
        err: Arc<std::io::Error>,
    },
    /// `qemu-img create` refused (its own words).
    #[error("qemu-img create: {0}")]
    QemuImg(String),
    #[error("namespace {ns}: {source}")]
    Netns {
        ns: String,
        #[source]
        source: Arc<kobako_net::NetError>,
    },
    #[error("giving the clone its identity: {0}")]
    Identity(#[source] Arc<kobako_runtime::RuntimeError>),
    /// Booting, snapshotting or restoring the VM.
    #[error(transparent)]
    Runtime(Arc<kobako_runtime::RuntimeError>),
    /// The key's inputs could not be encoded.
    #[error(transparent)]
    Encode(Arc<serde_json::Error>),
}

impl From<kobako_runtime::RuntimeError> for WarmError {
    fn from(e: kobako_runtime::RuntimeError) -> WarmError {
        WarmError::Runtime(Arc::new(e))
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WarmError {
    let what = what.into();
    move |e| WarmError::Io {
        what,
        err: Arc::new(e),
    }
}

fn unsupported(why: &str) -> WarmError {
    WarmError::Unsupported(why.into())
}

/// Changes whenever what a warm snapshot holds changes meaning (2: taken after systemd settled).
const FORMAT: u32 = 2;
/// Warm snapshots kept in the cache (the least recently used go first).
pub const KEEP: usize = 8;

/// Where warm snapshots live: `warm` under kobako's cache root ([`kobako_image::cache::root`]).
pub fn root() -> PathBuf {
    kobako_image::cache::root().join("warm")
}

/// What a warm snapshot was made from and holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmFile {
    pub key: String,
    pub inputs: serde_json::Value,
    pub created_ms: i64,
    /// Cold boot of the VM that was snapshotted (to agent ready).
    pub boot_ms: u64,
    pub snapshot_ms: u64,
    /// The snapshot's NIC MACs, in order (clones change them to their own).
    pub macs: Vec<String>,
}

/// A usable warm snapshot.
#[derive(Debug, Clone)]
pub struct Warm {
    pub dir: PathBuf,
    pub file: WarmFile,
}

impl Warm {
    pub fn snap(&self) -> PathBuf {
        self.dir.join("snap")
    }
}

fn file_id(p: &Path) -> Option<serde_json::Value> {
    let md = std::fs::metadata(p).ok()?;
    let mtime = md
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos()
        .to_string();
    Some(serde_json::json!({"path": p, "size": md.len(), "mtime_ns": mtime}))
}

/// Whether warm VMs keep their RAM in a file that clones map copy-on-write (QEMU 8.2 or later;
/// see `kobako_runtime::config::MemoryFile`) rather than in the snapshot's stream.
fn shares_ram() -> bool {
    kobako_runtime::qemu::maps_memory_files(Path::new("qemu-system-x86_64"))
}

fn qemu_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| snapshot::qemu_version(Path::new("qemu-system-x86_64")))
}

/// The warm-snapshot key of a VM's boot configuration and its inputs, or why it cannot be
/// cloned.
pub fn key(rt: &dyn Runtime, cfg: &VmConfig) -> Result<(String, serde_json::Value), WarmError> {
    if rt.name() != "qemu" {
        return Err(WarmError::Unsupported(format!(
            "the {} runtime has no snapshots",
            rt.name()
        )));
    }
    if !cfg.extra_disks.is_empty() {
        return Err(unsupported("it has extra disks (e.g. a cloud-init seed)"));
    }
    if !cfg.shares.is_empty() {
        return Err(unsupported(
            "it has shared directories (QEMU cannot snapshot a VM with a 9p export)",
        ));
    }
    let root = match &cfg.root {
        Root::Initramfs { path } => serde_json::json!({"initramfs": file_id(path)}),
        Root::Disk {
            path,
            format,
            read_only,
        } => {
            if *read_only {
                serde_json::json!({"disk_ro": file_id(path), "format": format})
            } else if format == "qcow2" {
                let base = kobako_runtime::qcow2::backing(path).ok_or_else(|| {
                    unsupported("its writable root disk is not an overlay on an image")
                })?;
                serde_json::json!({"overlay_on": file_id(&base)})
            } else {
                return Err(unsupported("its root disk is a writable raw disk"));
            }
        }
    };
    let inputs = serde_json::json!({
        "format": FORMAT,
        "runtime": rt.name(),
        "qemu": qemu_version(),
        "kobako": env!("CARGO_PKG_VERSION"),
        "accel": cfg.accel,
        "vcpus": cfg.vcpus,
        "memory_mib": cfg.memory_mib,
        "kernel": file_id(&cfg.kernel).ok_or_else(|| unsupported("its kernel file is missing"))?,
        "kernel_kind": cfg.kernel_kind,
        "root": root,
        "cmdline": cfg.extra_cmdline,
        "nics": cfg.nics.len(),
        "nic_model": "virtio-net-device",
        "ram": if shares_ram() { "file" } else { "stream" },
        "free_page_reporting": cfg.free_page_reporting,
    });
    let text = serde_json::to_vec(&inputs).map_err(|e| WarmError::Encode(Arc::new(e)))?;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, &text);
    let key = hex::encode(sha2::Digest::finalize(h))[..16].to_string();
    Ok((key, inputs))
}

/// The MAC of NIC `i` of a warm VM (locally administered; a placeholder every clone replaces:
/// labs derive theirs from names, [`kobako_net::MacAddr::derived`], or set their own).
fn warm_mac(i: usize) -> String {
    format!("0a:6b:77:00:00:{:02x}", i)
}

/// Waits until a systemd guest has finished booting (no start-up job left) before it is
/// snapshotted: a unit still running at the snapshot finishes in every clone, after the clone got
/// its identity (measured: Debian's hostname unit, still running when the agent was ready, set
/// the warm VM's name back in one clone of two). Guests without systemd (tiny: the agent is
/// init) are settled once their agent is ready.
async fn settle(client: &AgentClient) {
    let req = kobako_agent::proto::ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "[ \"$(cat /proc/1/comm)\" != systemd ] || systemctl is-system-running --wait".into(),
        ],
        env: Vec::new(),
        cwd: None,
        timeout_ms: Some(120_000),
        stdin: false,
        tty: None,
        user: None,
    };
    // "degraded" (a failed unit) exits non-zero but is settled too; only the wait matters.
    let _ = client.exec(req).await;
}

/// An exclusive lock on a warm key, taken without blocking the runtime.
async fn lock(key: &str) -> Result<std::fs::File, WarmError> {
    use std::os::fd::AsRawFd;
    let p = root().join(format!("{key}.lock"));
    std::fs::create_dir_all(root()).map_err(io(root().display().to_string()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io(p.display().to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        if Instant::now() > deadline {
            return Err(WarmError::Locked(key.into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(dir: &Path) -> Option<Warm> {
    let file: WarmFile =
        serde_json::from_slice(&std::fs::read(dir.join("warm.json")).ok()?).ok()?;
    Some(Warm {
        dir: dir.to_path_buf(),
        file,
    })
}

/// The warm snapshot of `cfg`'s configuration, built first when there is none.
pub async fn ensure(rt: &Arc<dyn Runtime>, cfg: &VmConfig) -> Result<Warm, WarmError> {
    let (key, inputs) = key(rt.as_ref(), cfg)?;
    let dir = root().join(&key);
    let _lock = lock(&key).await?;
    if let Some(w) = read(&dir) {
        // Still restorable here (QEMU version, kernel, files)? Otherwise rebuild.
        if snapshot::load(Path::new("qemu-system-x86_64"), &w.snap(), false).is_ok() {
            touch(&dir);
            return Ok(w);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Ok(why) = std::fs::read_to_string(dir.with_extension("unsupported")) {
        return Err(WarmError::Unsupported(why));
    }
    let w = build(rt, cfg, &key, inputs).await?;
    prune(&key);
    Ok(w)
}

fn touch(dir: &Path) {
    let _ = std::fs::File::options()
        .write(true)
        .open(dir.join("warm.json"))
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// Removes the least recently used warm snapshots beyond [`KEEP`] (never `keep`).
fn prune(keep: &str) {
    prune_in(&root(), keep)
}

fn prune_in(root: &Path, keep: &str) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let mut all: Vec<(SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| e.path().join("warm.json").exists())
        .filter(|e| e.file_name().to_string_lossy() != keep)
        .filter_map(|e| {
            let t = std::fs::metadata(e.path().join("warm.json"))
                .and_then(|m| m.modified())
                .ok()?;
            Some((t, e.path()))
        })
        .collect();
    all.sort();
    while all.len() >= KEEP {
        let (_, p) = all.remove(0);
        remove_if_unlocked(&p);
    }
    // Lock files of entries gone by now (pruned by older versions, or failed builds).
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "lock")
                && !p.with_extension("").exists()
                && !p.with_extension("unsupported").exists()
            {
                remove_if_unlocked(&p.with_extension(""));
            }
        }
    }
}

/// Removes a warm entry and its lock file, unless another process holds its lock (it is
/// being built or used right now).
fn remove_if_unlocked(dir: &Path) {
    use std::os::fd::AsRawFd;
    let lock = dir.with_extension("lock");
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(&lock) else {
        let _ = std::fs::remove_dir_all(dir);
        return;
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(&lock);
}

async fn build(
    rt: &Arc<dyn Runtime>,
    cfg: &VmConfig,
    key: &str,
    inputs: serde_json::Value,
) -> Result<Warm, WarmError> {
    // Left by a build that was killed (we hold the key's lock, so no build runs): its VM,
    // namespace and staging directory.
    let stale = format!("kobako-warm-{}-", &key[..8]);
    for d in kobako_runtime::vmdir::list() {
        if d.name.starts_with(&stale) {
            let _ = rt.kill(&d).await;
            let _ = kobako_net::Netns::delete(&d.name);
        }
    }
    if let Ok(rd) = std::fs::read_dir(root()) {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".staging-{key}-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let staging = root().join(format!(".staging-{key}-{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(io(staging.display().to_string()))?;
    let name = format!("kobako-warm-{}-{}", &key[..8], std::process::id() % 100_000);
    let mut wcfg = cfg.clone();
    wcfg.name = name.clone();
    wcfg.owned_paths = Vec::new();
    // Its own overlay on the same base when disk-rooted.
    if let Root::Disk {
        path,
        read_only: false,
        ..
    } = &cfg.root
    {
        let base =
            kobako_runtime::qcow2::backing(path).ok_or_else(|| unsupported("no base image"))?;
        let ov = staging.join("build-root.qcow2");
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&ov)
            .output()
            .map_err(io("qemu-img"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(WarmError::QemuImg(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        wcfg.root = Root::Disk {
            path: ov,
            format: "qcow2".into(),
            read_only: false,
        };
    }
    // Its RAM in a file of its own, which the snapshot takes (`snap/ram.bin`) and every clone
    // then maps copy-on-write: clones read a few kilobytes of device state and share the
    // pages they do not write. Created here: the jail binds it, writable, into the VM's root.
    if shares_ram() {
        let ram = staging.join("build-ram.bin");
        if let Err(e) = std::fs::File::create(&ram) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(io(ram.display().to_string())(e));
        }
        wcfg.memory_file = Some(kobako_runtime::config::MemoryFile {
            path: ram,
            shared: true,
        });
    }
    // NICs on private taps (QEMU creates them) in a private namespace: the device state in the
    // snapshot is that of a virtio-net on a tap, like a lab VM's.
    let netns = if cfg.nics.is_empty() {
        None
    } else {
        let ns = name.clone();
        kobako_net::Netns::create(&ns).map_err(|e| WarmError::Netns {
            ns: ns.clone(),
            source: Arc::new(e),
        })?;
        Some(ns)
    };
    wcfg.netns = netns.clone();
    wcfg.nics = (0..cfg.nics.len())
        .map(|i| Nic {
            tap: format!("kw{i}"),
            mac: warm_mac(i),
        })
        .collect();
    let t0 = Instant::now();
    let result = async {
        let vm = rt.create(&wcfg).await?;
        let r = async {
            rt.start(&vm).await?;
            let (client, _) =
                kobako_runtime::wait_ready(&vm, Duration::from_secs(wcfg.ready_timeout_secs))
                    .await?;
            let boot_ms = t0.elapsed().as_millis() as u64;
            // Clones need the agent's `identity` (MACs, RNG reseed): an image with an older
            // agent is remembered as unsupported and its VMs boot cold.
            if let Err(e) = client
                .identity(kobako_agent::proto::Identity::default())
                .await
            {
                let why = format!("the image's kobako-agent cannot give clones an identity ({e}); rebuild the image");
                let _ = std::fs::write(root().join(key).with_extension("unsupported"), &why);
                return Err(WarmError::Unsupported(why));
            }
            settle(&client).await;
            drop(client);
            let t1 = Instant::now();
            rt.snapshot(&vm, &staging.join("snap"), true).await?;
            Ok((boot_ms, t1.elapsed().as_millis() as u64))
        }
        .await;
        let _ = rt.kill(&vm).await;
        r
    }
    .await;
    if let Some(ns) = &netns {
        let _ = kobako_net::Netns::delete(ns);
    }
    let _ = std::fs::remove_file(staging.join("build-root.qcow2"));
    let _ = std::fs::remove_file(staging.join("build-ram.bin"));
    let (boot_ms, snapshot_ms) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let file = WarmFile {
        key: key.into(),
        inputs,
        created_ms: kobako_state::now_ms(),
        boot_ms,
        snapshot_ms,
        macs: wcfg.nics.iter().map(|n| n.mac.clone()).collect(),
    };
    let dir = root().join(key);
    let write = || -> std::io::Result<()> {
        std::fs::write(
            staging.join("warm.json"),
            serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&staging, &dir)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(io(format!("saving warm snapshot {}", dir.display()))(e));
    }
    Ok(Warm { dir, file })
}

/// In a clone's runtime directory until it has its own identity.
const PENDING: &str = "clone-pending";

/// Whether VM `name` is a clone that never got its identity (its `up` died half-way).
pub fn pending(name: &str) -> bool {
    VmDir::for_name(name).file(PENDING).exists()
}

fn warm_manifest_root(warm: &Warm) -> Option<PathBuf> {
    let p = warm.snap().join("root.qcow2");
    p.exists().then_some(p)
}

/// Restores a clone of `warm` as the VM `cfg` describes (its name, namespace, taps and MACs)
/// and gives it its own identity. The VM is ready (agent) when this returns; on an error
/// nothing of it is left running.
pub async fn clone(
    rt: &Arc<dyn Runtime>,
    warm: &Warm,
    cfg: &VmConfig,
) -> Result<(VmDir, AgentClient), WarmError> {
    if warm.file.macs.len() != cfg.nics.len() {
        return Err(WarmError::NicCount {
            snapshot: warm.file.macs.len(),
            vm: cfg.nics.len(),
        });
    }
    let overlay = kobako_state::state_root().join("vms").join(&cfg.name);
    let mut rcfg = rt.restore_config(&warm.snap(), &cfg.name, &overlay, false)?;
    // A disk root: the clone's overlay is a copy of the snapshot's (an overlay on the image
    // itself), so neither the clone nor a checkpoint of it depends on this cache entry.
    if let (Root::Disk { path, .. }, Some(r)) = (&rcfg.root, &warm_manifest_root(warm)) {
        if let Err(e) = std::fs::copy(r, path) {
            let _ = kobako_runtime::vmdir::remove_paths(&rcfg.owned_paths);
            return Err(io(format!("copy {} to {}", r.display(), path.display()))(e));
        }
    }
    // Its RAM file by a link of its own (same inode, so the same shared pages): the clone can
    // still reboot after this cache entry was pruned. Across file systems, the entry's path.
    if let Err(e) = link_ram(&mut rcfg, &overlay) {
        let _ = kobako_runtime::vmdir::remove_paths(&rcfg.owned_paths);
        return Err(e);
    }
    rcfg.netns = cfg.netns.clone();
    rcfg.nics = cfg.nics.clone();
    rcfg.cgroups = cfg.cgroups.clone();
    rcfg.ready_timeout_secs = cfg.ready_timeout_secs;
    let vm = match rt.create(&rcfg).await {
        Ok(vm) => vm,
        Err(e) => {
            let _ = kobako_runtime::vmdir::remove_paths(&rcfg.owned_paths);
            return Err(e.into());
        }
    };
    // Until it has its identity, a clone is not a lab VM: `up` after a crash here replaces it.
    let _ = std::fs::write(vm.file(PENDING), b"");
    let r = async {
        rt.start(&vm).await?;
        let (client, _) =
            kobako_runtime::wait_ready(&vm, Duration::from_secs(rcfg.ready_timeout_secs)).await?;
        let id = NewIdentity {
            hostname: Some(kobako_runtime::config::hostname_of(&cfg.name)),
            macs: warm
                .file
                .macs
                .iter()
                .cloned()
                .zip(cfg.nics.iter().map(|n| n.mac.clone()))
                .collect(),
            machine_id: true,
        };
        snapshot::fresh_identity(&client, &id)
            .await
            .map_err(|e| WarmError::Identity(Arc::new(e)))?;
        Ok(client)
    }
    .await;
    match r {
        Ok(c) => {
            let _ = std::fs::remove_file(vm.file(PENDING));
            Ok((vm, c))
        }
        Err(e) => {
            let _ = rt.kill(&vm).await;
            Err(e)
        }
    }
}

/// Points a clone's copy-on-write RAM file at a hard link in its own directory `overlay`
/// (created and owned by the clone when needed).
fn link_ram(rcfg: &mut VmConfig, overlay: &Path) -> Result<(), WarmError> {
    let Some(m) = rcfg.memory_file.as_mut().filter(|m| !m.shared) else {
        return Ok(());
    };
    if !rcfg.owned_paths.iter().any(|p| p == overlay) {
        std::fs::create_dir_all(overlay).map_err(io(overlay.display().to_string()))?;
        rcfg.owned_paths.push(overlay.to_path_buf());
    }
    let link = overlay.join(snapshot::RAM_FILE);
    let _ = std::fs::remove_file(&link);
    match std::fs::hard_link(&m.path, &link) {
        Ok(()) => m.path = link,
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => {
            return Err(io(format!(
                "link {} to {}",
                m.path.display(),
                link.display()
            ))(e))
        }
    }
    Ok(())
}

type Cell = Arc<tokio::sync::OnceCell<Result<Warm, WarmError>>>;

/// The warm snapshots one `up` uses: each key built (or found) once, shared by its VMs.
#[derive(Default, Clone)]
pub struct Pool {
    cells: Arc<std::sync::Mutex<HashMap<String, Cell>>>,
}

impl Pool {
    /// The warm snapshot for `cfg`, or why there is none (the VM then boots cold).
    pub async fn get(&self, rt: &Arc<dyn Runtime>, cfg: &VmConfig) -> Result<Warm, WarmError> {
        let (k, _) = key(rt.as_ref(), cfg)?;
        let cell = self
            .cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(k)
            .or_default()
            .clone();
        cell.get_or_init(|| ensure(rt, cfg)).await.clone()
    }
}

/// Warm snapshots in the cache.
pub fn list() -> Vec<Warm> {
    let mut v: Vec<Warm> = std::fs::read_dir(root())
        .map(|rd| rd.flatten().filter_map(|e| read(&e.path())).collect())
        .unwrap_or_default();
    v.sort_by_key(|w| w.file.created_ms);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_backing_is_read_from_the_header() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.qcow2");
        let ov = d.path().join("ov.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("1M")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("qemu-img not installed; skipped");
            return;
        }
        assert!(std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&ov)
            .status()
            .unwrap()
            .success());
        assert_eq!(kobako_runtime::qcow2::backing(&ov), Some(base.clone()));
        assert_eq!(kobako_runtime::qcow2::backing(&base), None);
    }

    #[test]
    fn prune_keeps_the_newest_and_removes_lock_files_nobody_holds() {
        use std::os::fd::AsRawFd;
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for i in 0..10u64 {
            let e = d.path().join(format!("k{i}"));
            std::fs::create_dir(&e).unwrap();
            let f = std::fs::File::create(e.join("warm.json")).unwrap();
            f.set_modified(now - Duration::from_secs(100 - i)).unwrap();
            std::fs::write(d.path().join(format!("k{i}.lock")), b"").unwrap();
        }
        std::fs::write(d.path().join("orphan.lock"), b"").unwrap();
        std::fs::write(d.path().join("busy.lock"), b"").unwrap();
        std::fs::write(d.path().join("odd.lock"), b"").unwrap();
        std::fs::write(d.path().join("odd.unsupported"), b"why").unwrap();
        let held = std::fs::File::open(d.path().join("busy.lock")).unwrap();
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0);
        prune_in(d.path(), "k0");
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // k0 (kept by name) and the 7 newest, each with its lock; a held lock and an
        // "unsupported" marker's lock stay.
        let mut want = vec!["busy.lock", "odd.lock", "odd.unsupported"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        for i in [0, 3, 4, 5, 6, 7, 8, 9] {
            want.push(format!("k{i}"));
            want.push(format!("k{i}.lock"));
        }
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn warm_macs_are_distinct_and_locally_administered() {
        let a = warm_mac(0);
        assert_ne!(a, warm_mac(1));
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0b10, 0b10, "locally administered bit");
        assert_eq!(first & 0b1, 0, "unicast");
    }
}
