//! The image store: named, read-only base images that VMs boot from through per-VM qcow2
//! overlays.
//!
//! ```text
//! root() ($KOBAKO_IMAGES as the binary reads it; default /var/lib/kobako/images)
//!   <name>/manifest.json     Manifest (below)
//!   <name>/base.qcow2        the base (or base.raw / rootfs.ext4): never written after commit
//!   .staging-<name>-<pid>/   a build or import in progress (removed on failure)
//!   .lock                    serialises commits and removals
//! root()/../vms/<vm>/root.qcow2    a VM's overlay (owned by the VM, removed with it)
//! ```
//! An image directory that exists is complete: builds write into a staging directory and rename
//! it into place last. Callers run on any thread; the store keeps no state in memory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disk::{self, DiskError};
use crate::{cache, tiny};

/// Root of the store: what [`set_root`] fixed (the binary passes `$KOBAKO_IMAGES`), else
/// `/var/lib/kobako/images`.
pub fn root() -> PathBuf {
    ROOT.get_or_init(|| PathBuf::from("/var/lib/kobako/images"))
        .clone()
}

/// The store root of this process, fixed by the first [`set_root`] or [`root`].
static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the store root for this process: the binary calls it once at start, before anything
/// asks for [`root`]. The first setting (or first use) holds; a later call is ignored and
/// returns false.
pub fn set_root(root: PathBuf) -> bool {
    ROOT.set(root).is_ok()
}

/// Where per-VM overlays live: a `vms` directory beside the store.
pub fn overlays_root() -> PathBuf {
    let r = root();
    r.parent().unwrap_or(Path::new("/")).join("vms")
}

/// What made an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    Tiny,
    Debian,
    Imported,
}

impl std::fmt::Display for ImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageKind::Tiny => "tiny",
            ImageKind::Debian => "debian",
            ImageKind::Imported => "imported",
        })
    }
}

/// `manifest.json` of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub kind: ImageKind,
    /// File name of the base inside the image directory.
    pub base: String,
    /// "raw" or "qcow2".
    pub format: String,
    /// Bytes the base occupies on disk.
    pub size: u64,
    /// Size of the filesystem the guest sees.
    pub virtual_size: u64,
    /// RFC 3339 UTC.
    pub created: String,
    /// Packages asked for (Debian) or recorded from the source.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Where it came from: "mmdebstrap bookworm ...", the imported file, the tiny cache dir.
    pub source: String,
    /// SHA-256 of the base file.
    pub sha256: String,
    /// The image contains cloud-init: VMs get a NoCloud seed disk.
    #[serde(default)]
    pub cloud_init: bool,
    /// Seconds the build or import took.
    #[serde(default)]
    pub build_secs: Option<f64>,
    /// The init to boot when it is not /sbin/init (imported trees without systemd boot the
    /// agent as PID 1).
    #[serde(default)]
    pub init: Option<String>,
    /// SHA-256 of the kobako-agent binary inside the image (to tell a stale image from a current
    /// one after the agent changed).
    #[serde(default)]
    pub agent_sha256: Option<String>,
    /// Version of the Debian recipe that built it ([`crate::debian::RECIPE`]).
    #[serde(default)]
    pub recipe: Option<u32>,
    /// Digest of the named recipe it was built from (`debian-web`, ... see
    /// [`crate::recipes`]); `None` for images built or imported by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no image named '{name}' (images: {known}); build one with `kobako image build debian --name {name}` or `kobako image import FILE --name {name}`")]
    NotFound { name: String, known: String },
    #[error(
        "image '{0}' already exists: remove it with `kobako image rm {0}` or choose another --name"
    )]
    Exists(String),
    #[error("image name '{0}': use 1-64 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit")]
    BadName(String),
    #[error("image name 'tiny' is reserved for the built-in tiny image")]
    Reserved,
    #[error("image '{name}' is used by VM(s) {vms}: stop them first (`kobako vm stop NAME`)")]
    InUse { name: String, vms: String },
    #[error("image '{name}': {problem}")]
    Corrupt { name: String, problem: String },
    #[error(transparent)]
    Disk(#[from] DiskError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let f = disk::io(what);
    move |e| StoreError::Disk(f(e))
}

/// Check an image name (used as a directory name and on the command line).
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
        })
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// One stored image.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Image {
    /// The base file.
    pub fn base_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.base)
    }
}

/// The store at a root directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Store { root: root() }
    }
}

impl Store {
    pub fn at(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    fn lock(&self) -> Result<cache::Lock, StoreError> {
        cache::lock(&self.root.join(".lock")).map_err(io("lock the image store"))
    }

    /// All images, by name.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let mut v = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(io(format!("read {}", self.root.display()))(e)),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Ok(img) = self.read(&name) {
                v.push(img);
            }
        }
        v.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        Ok(v)
    }

    fn read(&self, name: &str) -> Result<Image, StoreError> {
        let dir = self.root.join(name);
        let data = std::fs::read(dir.join("manifest.json"))
            .map_err(io(format!("read {}/manifest.json", dir.display())))?;
        let manifest: Manifest =
            serde_json::from_slice(&data).map_err(|e| StoreError::Corrupt {
                name: name.to_string(),
                problem: format!("manifest.json: {e}"),
            })?;
        Ok(Image { dir, manifest })
    }

    /// One image by name.
    pub fn get(&self, name: &str) -> Result<Image, StoreError> {
        validate_name(name)?;
        if !self.root.join(name).join("manifest.json").exists() {
            let known: Vec<String> = self.list()?.into_iter().map(|i| i.manifest.name).collect();
            return Err(StoreError::NotFound {
                name: name.to_string(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        self.read(name)
    }

    /// Remove an image. `users` are the VMs whose disks reference it (the caller knows the VMs;
    /// see [`Image::used_by`]); any user refuses the removal.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), StoreError> {
        let img = self.get(name)?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                name: name.to_string(),
                vms: users.join(", "),
            });
        }
        let _l = self.lock()?;
        // Rename first so a half-removed image never looks complete.
        let gone = self
            .root
            .join(format!(".removing-{name}-{}", std::process::id()));
        std::fs::rename(&img.dir, &gone).map_err(io(format!("remove {}", img.dir.display())))?;
        std::fs::remove_dir_all(&gone).map_err(io(format!("remove {}", gone.display())))
    }

    /// Start a new image: a staging directory removed on drop unless committed.
    pub fn begin(&self, name: &str) -> Result<Staging, StoreError> {
        validate_name(name)?;
        if name == "tiny" {
            return Err(StoreError::Reserved);
        }
        self.begin_any(name)
    }

    fn begin_any(&self, name: &str) -> Result<Staging, StoreError> {
        if self.root.join(name).exists() {
            return Err(StoreError::Exists(name.to_string()));
        }
        std::fs::create_dir_all(&self.root)
            .map_err(io(format!("create {}", self.root.display())))?;
        let dir = self
            .root
            .join(format!(".staging-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        Ok(Staging {
            store: self.clone(),
            name: name.to_string(),
            dir,
            done: false,
        })
    }

    /// Remove staging directories of builds whose process is gone.
    pub fn sweep(&self) {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid = n
                .strip_prefix(".staging-")
                .or_else(|| n.strip_prefix(".removing-"))
                .and_then(|r| r.rsplit_once('-'))
                .and_then(|(_, p)| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    if let Err(err) = remove_tree(&e.path()) {
                        tracing::warn!("leaving {}: {err}", e.path().display());
                    }
                }
            }
        }
    }

    /// Make the cached tiny image's ext4 appear in the store as `tiny` (a hard link when the
    /// cache is on the same filesystem, else a copy). Re-registers when the cache key changed.
    pub fn register_tiny(&self, img: &tiny::TinyImage) -> Result<Image, StoreError> {
        let source = img.dir.display().to_string();
        if let Ok(cur) = self.read("tiny") {
            if cur.manifest.source == source && cur.base_path().exists() {
                return Ok(cur);
            }
        }
        let st = self.begin_any_replacing("tiny")?;
        let base = st.dir.join("rootfs.ext4");
        if std::fs::hard_link(&img.ext4, &base).is_err() {
            std::fs::copy(&img.ext4, &base).map_err(io("copy the tiny ext4 into the store"))?;
        }
        let m = Manifest {
            name: "tiny".into(),
            kind: ImageKind::Tiny,
            base: "rootfs.ext4".into(),
            format: "raw".into(),
            size: disk::allocated(&base),
            virtual_size: std::fs::metadata(&base).map(|m| m.len()).unwrap_or(0),
            created: now_rfc3339(),
            packages: vec!["busybox-static".into(), "kobako-agent".into()],
            source,
            sha256: disk::sha256_file(&base)?,
            cloud_init: false,
            build_secs: None,
            init: None,
            agent_sha256: None,
            recipe: None,
            recipe_digest: None,
        };
        st.commit(m)
    }

    fn begin_any_replacing(&self, name: &str) -> Result<Staging, StoreError> {
        let dir = self.root.join(name);
        if dir.exists() {
            let _l = self.lock()?;
            let gone = self
                .root
                .join(format!(".removing-{name}-{}", std::process::id()));
            std::fs::rename(&dir, &gone).map_err(io(format!("replace {}", dir.display())))?;
            let _ = std::fs::remove_dir_all(&gone);
        }
        self.begin_any(name)
    }

    /// Bytes on disk: per image, and of all VM overlays.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let images = self
            .list()?
            .into_iter()
            .map(|i| (i.manifest.name.clone(), disk::allocated(&i.dir)))
            .collect();
        let overlays = std::fs::read_dir(overlays_root())
            .map(|rd| {
                let mut v: Vec<(String, u64)> = rd
                    .flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            disk::allocated(&e.path()),
                        )
                    })
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        Ok(Usage { images, overlays })
    }
}

/// Disk usage of the store.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub images: Vec<(String, u64)>,
    pub overlays: Vec<(String, u64)>,
}

impl Image {
    /// Does a disk file of a VM reference this image (it is the base, or a qcow2 whose backing
    /// chain reaches the base)?
    pub fn is_referenced_by(&self, disk_path: &Path) -> bool {
        let base = self.base_path();
        let mut p = disk_path.to_path_buf();
        for _ in 0..8 {
            if p == base || p.starts_with(&self.dir) {
                return true;
            }
            match disk::qcow2_backing(&p) {
                Some(b) => p = b,
                None => return false,
            }
        }
        false
    }

    /// Names of the VMs (name, disk paths) that reference this image.
    pub fn used_by<'a>(
        &self,
        vms: impl IntoIterator<Item = (&'a str, Vec<PathBuf>)>,
    ) -> Vec<String> {
        vms.into_iter()
            .filter(|(_, disks)| disks.iter().any(|d| self.is_referenced_by(d)))
            .map(|(n, _)| n.to_string())
            .collect()
    }
}

/// Remove a staging tree safely: a build killed half-way may leave mounts inside it (mmdebstrap
/// mounts /proc, /sys and /dev into its chroot), and deleting through a /dev bind mount would
/// delete the host's device nodes. Mounts under `dir` are detached first (deepest first); if one
/// stays, nothing is removed.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let Ok(canon) = dir.canonicalize() else {
        return Ok(());
    };
    let mounts = || -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            // mountinfo escapes spaces etc. as \ooo; kobako paths have none.
            .map(PathBuf::from)
            .filter(|m| m.starts_with(&canon))
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        v
    };
    for m in mounts() {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid NUL-terminated path; MNT_DETACH has no other
            // preconditions.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if let Some(m) = mounts().first() {
        return Err(std::io::Error::other(format!(
            "{} is still mounted; unmount it, then remove {}",
            m.display(),
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir)
}

/// A build or import in progress. Dropped without [`Staging::commit`], it removes everything it
/// wrote.
pub struct Staging {
    store: Store,
    pub name: String,
    pub dir: PathBuf,
    done: bool,
}

impl Staging {
    /// Publish: write the manifest, rename the directory into place.
    pub fn commit(mut self, m: Manifest) -> Result<Image, StoreError> {
        let data = serde_json::to_vec_pretty(&m).map_err(|e| StoreError::Corrupt {
            name: m.name.clone(),
            problem: format!("serialise manifest: {e}"),
        })?;
        std::fs::write(self.dir.join("manifest.json"), data).map_err(io("write manifest.json"))?;
        let _l = self.store.lock()?;
        let dest = self.store.root.join(&self.name);
        if dest.exists() {
            return Err(StoreError::Exists(self.name.clone()));
        }
        std::fs::rename(&self.dir, &dest).map_err(io(format!("publish {}", dest.display())))?;
        self.done = true;
        Ok(Image {
            dir: dest,
            manifest: m,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_tree(&self.dir);
        }
    }
}

/// Create the overlay a VM boots from: `<overlays>/<vm>/root.qcow2` backed by the image's base.
/// Returns (the VM's overlay directory, the overlay file). A directory left by an earlier VM of
/// the same name is replaced (the caller checked no such VM runs).
pub fn create_overlay(img: &Image, vm: &str) -> Result<(PathBuf, PathBuf), StoreError> {
    let dir = overlays_root().join(vm);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(format!("remove stale {}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let file = dir.join("root.qcow2");
    if let Err(e) = disk::create_overlay(&img.base_path(), &img.manifest.format, &file) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.into());
    }
    Ok((dir, file))
}

/// Current time as RFC 3339 UTC (`2026-11-28T20:01:02Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Milliseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339((ms.max(0) / 1000) as u64)
}

/// The civil date (year, month, day; proleptic Gregorian) of a day counted from 1970-01-01,
/// before it too (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            kind: ImageKind::Imported,
            base: "base.raw".into(),
            format: "raw".into(),
            size: 1,
            virtual_size: 1,
            created: now_rfc3339(),
            packages: vec![],
            source: "test".into(),
            sha256: "00".into(),
            cloud_init: false,
            build_secs: None,
            init: None,
            agent_sha256: None,
            recipe: None,
            recipe_digest: None,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn names() {
        assert!(validate_name("debian-web").is_ok());
        assert!(validate_name("a.b_c").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("../x").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("Upper").is_err());
    }

    #[test]
    fn manifest_parsing_rejects_unknown_fields() {
        let m = manifest("x");
        let s = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&s).unwrap();
        assert_eq!(back, m);
        let mut v: serde_json::Value = serde_json::from_str(&s).unwrap();
        v["bogus"] = 1.into();
        assert!(serde_json::from_value::<Manifest>(v).is_err());
        // Optional fields may be missing (older manifests).
        let mut v: serde_json::Value = serde_json::from_str(&s).unwrap();
        v.as_object_mut().unwrap().remove("cloud_init");
        v.as_object_mut().unwrap().remove("build_secs");
        v.as_object_mut().unwrap().remove("packages");
        assert!(serde_json::from_value::<Manifest>(v).is_ok());
    }

    #[test]
    fn staging_commit_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path());
        assert!(s.list().unwrap().is_empty());
        // Dropped staging leaves nothing.
        {
            let st = s.begin("a").unwrap();
            std::fs::write(st.dir.join("base.raw"), b"x").unwrap();
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let st = s.begin("a").unwrap();
        std::fs::write(st.dir.join("base.raw"), b"x").unwrap();
        let img = st.commit(manifest("a")).unwrap();
        assert!(img.base_path().exists());
        assert!(matches!(s.begin("a"), Err(StoreError::Exists(_))));
        assert!(matches!(s.begin("tiny"), Err(StoreError::Reserved)));
        assert_eq!(s.list().unwrap().len(), 1);
        let e = s.get("b").unwrap_err().to_string();
        assert!(
            e.contains("no image named 'b'") && e.contains("images: a"),
            "{e}"
        );
        // In use: refused, nothing removed.
        let users = img.used_by([("vm1", vec![img.base_path()]), ("vm2", vec![])]);
        assert_eq!(users, vec!["vm1".to_string()]);
        let e = s.remove("a", &users).unwrap_err().to_string();
        assert!(e.contains("used by VM(s) vm1"), "{e}");
        s.remove("a", &[]).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(!d.path().join("a").exists());
    }

    #[test]
    fn remove_tree_detaches_mounts_first() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("staging");
        let sub = tree.join("root/dev");
        std::fs::create_dir_all(&sub).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(&sub)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(sub.join("node"), b"x").unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(d.path().to_str().unwrap()));
    }

    #[test]
    fn corrupt_manifest_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("bad")).unwrap();
        std::fs::write(d.path().join("bad/manifest.json"), b"{nope").unwrap();
        let e = Store::at(d.path()).get("bad").unwrap_err().to_string();
        assert!(e.contains("image 'bad': manifest.json"), "{e}");
    }
}
