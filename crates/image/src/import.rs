//! `kobako image import FILE|DIR --name N`: a root filesystem a user brings becomes a stored
//! image.
//!
//! Sources:
//! - a rootfs tarball: tar, tar.gz, tar.xz, tar.zst, tar.bz2 (recognised by content, decompressed
//!   by the host's `gzip`/`xz`/`zstd`/`bzip2` as a pipe);
//! - an OCI image layout directory: `oci-layout` + `index.json` → (nested index →) manifest →
//!   layers applied in order. Every blob read is checked against its sha256 digest first; a
//!   missing or corrupt blob is an error naming the digest. Whiteouts (`.wh.NAME` removes NAME of
//!   the layers below, `.wh..wh..opq` empties a directory of the layers below) follow the OCI
//!   image spec, "layer.md" (Whiteouts).
//!
//! Then kobako-agent is injected: as a systemd service when the tree has systemd (the same units
//! as Debian images), otherwise as init (`init=/usr/local/sbin/kobako-agent`, recorded in the
//! manifest). The tree becomes ext4 and is stored as a qcow2 base. A failed import leaves nothing
//! (the store's staging directory is removed).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde::Deserialize;

use crate::disk::{self, DiskError, Sniff};
use crate::store::{self, ImageKind, Manifest, Store, StoreError};
use crate::{base, deps, Progress};

/// Where the agent goes in an imported tree (as in every image).
pub use crate::base::AGENT_PATH;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Deps(#[from] deps::DepsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    #[error("{path}: not a root filesystem archive kobako can import ({what}); give a tar, tar.gz, tar.xz, tar.zst or tar.bz2 of a root filesystem, or an OCI image layout directory")]
    Foreign { path: PathBuf, what: String },
    #[error("OCI layout {dir}: {problem}")]
    Oci { dir: PathBuf, problem: String },
    #[error("OCI layout {dir}: blob {digest} ({role}) is missing: expected at {path}")]
    MissingBlob {
        dir: PathBuf,
        digest: String,
        role: String,
        path: PathBuf,
    },
    #[error("OCI layout {dir}: blob {digest} ({role}) is corrupt: its content hashes to sha256:{actual}")]
    CorruptBlob {
        dir: PathBuf,
        digest: String,
        role: String,
        actual: String,
    },
    #[error("{what}: bad archive entry {entry}: {problem}")]
    Entry {
        what: String,
        entry: String,
        problem: String,
    },
    #[error("{what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the archive holds no root filesystem (no /bin, /usr or /etc): {0}")]
    NotARootfs(PathBuf),
}

fn rd(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImportError {
    let what = what.into();
    move |source| ImportError::Read { what, source }
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub name: String,
    pub source: PathBuf,
    /// Filesystem size the guest sees; default: content + 1 GiB, at least 1 GiB.
    pub size_bytes: Option<u64>,
}

/// Import into the store.
pub fn import(
    store: &Store,
    opts: &ImportOptions,
    agent: &Path,
    progress: &dyn Progress,
) -> Result<store::Image, ImportError> {
    let t0 = Instant::now();
    let src = &opts.source;
    if !src.exists() {
        return Err(ImportError::Missing(src.clone()));
    }
    // Classify before creating anything.
    let kind = if src.is_dir() {
        if !src.join("oci-layout").is_file() || !src.join("index.json").is_file() {
            return Err(ImportError::Foreign {
                path: src.clone(),
                what: "a directory without oci-layout and index.json".into(),
            });
        }
        None
    } else {
        let s = disk::sniff(src)?;
        match s {
            Sniff::Tar | Sniff::Gzip | Sniff::Xz | Sniff::Zstd | Sniff::Bzip2 => Some(s),
            Sniff::Qcow2 | Sniff::Ext4 => {
                return Err(ImportError::Foreign {
                    path: src.clone(),
                    what: format!(
                        "a {s:?} disk image; boot it directly with `kobako vm run --image {}`",
                        src.display()
                    ),
                })
            }
            other => {
                return Err(ImportError::Foreign {
                    path: src.clone(),
                    what: match other {
                        Sniff::Cpio => "a cpio archive".into(),
                        _ => "unrecognised content".into(),
                    },
                })
            }
        }
    };
    deps::ensure(disk::PACKAGES, progress)?;
    let (st, root) = base::stage(store, &opts.name)?;
    std::fs::create_dir_all(&root).map_err(rd("create the staging tree"))?;
    let (source, packages) = match kind {
        None => {
            let layers = oci_layers(src)?;
            let n = layers.len();
            for (i, l) in layers.iter().enumerate() {
                progress.step(&format!(
                    "import: layer {}/{n} {} ({} KiB)",
                    i + 1,
                    l.digest,
                    l.size / 1024
                ));
                let what = format!("layer {} of {n} ({})", i + 1, l.digest);
                apply_layer_file(&l.path, &root, true, &what)?;
            }
            (format!("OCI layout {}", src.display()), Vec::new())
        }
        Some(_) => {
            progress.step(&format!("import: unpacking {}", src.display()));
            apply_layer_file(src, &root, false, &src.display().to_string())?;
            (format!("tarball {}", src.display()), Vec::new())
        }
    };
    if !["bin", "usr", "etc"]
        .iter()
        .any(|d| root.join(d).symlink_metadata().is_ok())
    {
        return Err(ImportError::NotARootfs(src.clone()));
    }
    progress.step("import: injecting kobako-agent");
    let agent_bytes = base::read_agent(agent)?;
    let init = inject_agent(&root, &agent_bytes)?;
    let cloud_init = base::has_cloud_init(&root);
    let disk = base::tree_to_base(
        &root,
        &st.dir,
        opts.size_bytes,
        |content| (content + (1 << 30)).max(1 << 30),
        "import",
        progress,
    )?;
    let m = Manifest {
        packages,
        source,
        cloud_init,
        init,
        ..base::manifest(&opts.name, ImageKind::Imported, &disk, agent, t0)?
    };
    let img = st.commit(m)?;
    progress.step(&format!(
        "import: image '{}' ({:.1} MiB qcow2) in {:.1} s",
        opts.name,
        img.manifest.size as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    ));
    Ok(img)
}

/// Put the agent into a tree. Returns the init to boot with when it is not `/sbin/init` (trees
/// without systemd boot the agent as PID 1).
///
/// The tree is untrusted (its symlinks may point anywhere on the host): every path is resolved
/// inside it ([`crate::inroot`]), and a path that cannot be (a link to a directory the tree
/// does not have) fails the import, naming the path.
fn inject_agent(root: &Path, agent: &[u8]) -> Result<Option<String>, ImportError> {
    let tree = crate::inroot::Root::open(root).map_err(rd("open the staging tree"))?;
    let inside = |what: String| {
        move |e: std::io::Error| {
            ImportError::Read {
            what: format!(
                "{what} inside the imported tree: a symlink on the way points outside the tree or to nothing in it (kobako resolves the tree's symlinks inside the tree, never on the host); fix the link in the archive"
            ),
            source: e,
        }
        }
    };
    for d in ["dev", "proc", "sys", "run", "tmp", "usr/local/sbin"] {
        if root.join(d).symlink_metadata().is_err() {
            tree.mkdir_all(d, 0o755)
                .map_err(inside(format!("mkdir /{d}")))?;
        }
    }
    // Only a real directory (not through a symlink) becomes world-writable.
    let _ = tree.chmod_dir("tmp", 0o1777);
    tree.write(AGENT_PATH, agent, 0o755)
        .map_err(inside(format!("write {AGENT_PATH}")))?;
    let has_systemd = ["lib/systemd/systemd", "usr/lib/systemd/systemd"]
        .iter()
        .any(|p| tree.exists(p))
        && root.join("sbin/init").symlink_metadata().is_ok();
    if has_systemd {
        crate::debian::customize_systemd(root)?;
        Ok(None)
    } else {
        Ok(Some(AGENT_PATH.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// OCI image layout

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// One layer to apply: its verified blob.
#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: String,
    pub path: PathBuf,
    pub size: u64,
}

const MT_INDEX: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Resolve an OCI layout to its layers (bottom first), verifying every blob it reads.
pub fn oci_layers(dir: &Path) -> Result<Vec<Layer>, ImportError> {
    let oci = |problem: String| ImportError::Oci {
        dir: dir.to_path_buf(),
        problem,
    };
    let layout: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("oci-layout"))
            .map_err(rd(format!("read {}/oci-layout", dir.display())))?,
    )
    .map_err(|e| oci(format!("oci-layout: {e}")))?;
    if layout["imageLayoutVersion"].as_str().is_none() {
        return Err(oci("oci-layout has no imageLayoutVersion".into()));
    }
    let data = std::fs::read(dir.join("index.json"))
        .map_err(rd(format!("read {}/index.json", dir.display())))?;
    let mut index: Index =
        serde_json::from_slice(&data).map_err(|e| oci(format!("index.json: {e}")))?;
    // Follow nested indexes down to one image manifest.
    for depth in 0..4 {
        let d = pick_manifest(&index.manifests).ok_or_else(|| {
            oci(if index.manifests.is_empty() {
                "index.json lists no manifests".into()
            } else {
                "no manifest for linux/amd64".into()
            })
        })?;
        let blob = read_blob(dir, &d.digest, "manifest")?;
        let next: Index = serde_json::from_slice(&blob)
            .map_err(|e| oci(format!("manifest {}: {e}", d.digest)))?;
        let is_index = MT_INDEX.contains(&d.media_type.as_str())
            || MT_INDEX.contains(&next.media_type.as_str())
            || (next.layers.is_none() && !next.manifests.is_empty());
        if !is_index {
            let layers = next
                .layers
                .ok_or_else(|| oci(format!("manifest {} has no layers", d.digest)))?;
            if layers.is_empty() {
                return Err(oci(format!("manifest {} has no layers", d.digest)));
            }
            let n = layers.len();
            return layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let role = format!("layer {} of {n}", i + 1);
                    let path = verify_blob(dir, &l.digest, &role)?;
                    Ok(Layer {
                        digest: l.digest.clone(),
                        path,
                        size: l.size,
                    })
                })
                .collect();
        }
        if depth == 3 {
            break;
        }
        index = next;
    }
    Err(oci("indexes nested too deeply".into()))
}

fn pick_manifest(ms: &[Descriptor]) -> Option<&Descriptor> {
    ms.iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| ms.iter().find(|d| d.platform.is_none()))
}

/// `blobs/<alg>/<hex>` of a digest, rejecting anything that is not `sha256:<64 hex>`.
fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ImportError> {
    let hexpart = digest.strip_prefix("sha256:").filter(|h| {
        h.len() == 64
            && h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    });
    match hexpart {
        Some(h) => Ok(dir.join("blobs/sha256").join(h)),
        None => Err(ImportError::Oci {
            dir: dir.to_path_buf(),
            problem: format!("digest '{digest}' is not sha256:<64 lowercase hex digits>"),
        }),
    }
}

/// Check a blob exists and hashes to its digest; returns its path.
fn verify_blob(dir: &Path, digest: &str, role: &str) -> Result<PathBuf, ImportError> {
    let path = blob_path(dir, digest)?;
    if !path.is_file() {
        return Err(ImportError::MissingBlob {
            dir: dir.to_path_buf(),
            digest: digest.to_string(),
            role: role.to_string(),
            path,
        });
    }
    let actual = disk::sha256_file(&path)?;
    if Some(actual.as_str()) != digest.strip_prefix("sha256:") {
        return Err(ImportError::CorruptBlob {
            dir: dir.to_path_buf(),
            digest: digest.to_string(),
            role: role.to_string(),
            actual,
        });
    }
    Ok(path)
}

fn read_blob(dir: &Path, digest: &str, role: &str) -> Result<Vec<u8>, ImportError> {
    let p = verify_blob(dir, digest, role)?;
    std::fs::read(&p).map_err(rd(format!("read {}", p.display())))
}

// ---------------------------------------------------------------------------------------------
// Layers and whiteouts

/// What one archive entry means for the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryAction {
    /// Extract it at this relative path.
    Extract(PathBuf),
    /// `.wh.NAME`: remove NAME (of lower layers) at this relative path.
    Whiteout(PathBuf),
    /// `.wh..wh..opq`: empty this directory (of lower layers' content).
    Opaque(PathBuf),
    /// The root directory itself, or `.`: nothing to do.
    Skip,
}

/// Classify an entry path. Absolute paths are made relative; `..` components are refused.
pub fn classify(path: &Path, whiteouts: bool) -> Result<EntryAction, String> {
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'".into()),
            Component::Prefix(_) => return Err("not a Unix path".into()),
        }
    }
    if rel.as_os_str().is_empty() {
        return Ok(EntryAction::Skip);
    }
    if whiteouts {
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == ".wh..wh..opq" {
            return Ok(EntryAction::Opaque(parent));
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            if target.is_empty() || target == "." || target == ".." {
                return Err("empty whiteout name".into());
            }
            return Ok(EntryAction::Whiteout(parent.join(target)));
        }
    }
    Ok(EntryAction::Extract(rel))
}

/// Resolve `rel` under `root` for removal, refusing to follow a symlinked parent out of the
/// tree (a layer could otherwise make `/etc` a link to the host's `/etc` and white it out).
fn inside(root: &Path, rel: &Path) -> Option<PathBuf> {
    let parent = root.join(rel.parent().unwrap_or(Path::new("")));
    let canon_root = root.canonicalize().ok()?;
    let canon_parent = parent.canonicalize().ok()?;
    if !canon_parent.starts_with(&canon_root) {
        return None;
    }
    Some(canon_parent.join(rel.file_name()?))
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Apply one layer (a tar stream) onto `root`. With `whiteouts`, OCI whiteout entries remove what
/// the layers below put there; entries of this same layer are never removed by them.
pub fn apply_layer<R: Read>(
    reader: R,
    root: &Path,
    whiteouts: bool,
    what: &str,
) -> Result<(), ImportError> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let bad = |entry: &str, problem: String| ImportError::Entry {
        what: what.to_string(),
        entry: entry.to_string(),
        problem,
    };
    // Paths this layer created: whiteouts and opaque markers must not remove them.
    let mut ours: HashSet<PathBuf> = HashSet::new();
    let mut opaque: Vec<PathBuf> = Vec::new();
    let entries = ar
        .entries()
        .map_err(|e| bad("(archive)", format!("not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad("(archive)", format!("unreadable: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad("(name)", e.to_string()))?
            .into_owned();
        let shown = path.display().to_string();
        match classify(&path, whiteouts).map_err(|p| bad(&shown, p))? {
            EntryAction::Skip => {}
            EntryAction::Whiteout(rel) => {
                if !ours.contains(&rel) {
                    if let Some(p) = inside(root, &rel) {
                        remove_any(&p).map_err(|e| bad(&shown, format!("whiteout: {e}")))?;
                    }
                }
            }
            EntryAction::Opaque(rel) => {
                // Applied at the end of the layer, so the layer's own entries in the directory
                // (before or after the marker) survive.
                opaque.push(rel);
            }
            EntryAction::Extract(rel) => {
                // A lower layer's non-directory in the way of a directory (or the reverse).
                let dest = root.join(&rel);
                if let Ok(m) = std::fs::symlink_metadata(&dest) {
                    let is_dir_entry = entry.header().entry_type().is_dir();
                    if m.is_dir() != is_dir_entry || (!m.is_dir() && m.file_type().is_symlink()) {
                        if let Some(p) = inside(root, &rel) {
                            remove_any(&p).map_err(|e| bad(&shown, e.to_string()))?;
                        }
                    }
                }
                entry.unpack_in(root).map_err(|e| {
                    let mut m = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        m = format!("{m}: {s}");
                        src = s.source();
                    }
                    bad(&shown, m)
                })?;
                let mut a = rel.clone();
                ours.insert(a.clone());
                while a.pop() && !a.as_os_str().is_empty() {
                    ours.insert(a.clone());
                }
            }
        }
    }
    for dir in opaque {
        let Some(d) = inside(root, &dir.join("x")).and_then(|p| p.parent().map(Path::to_path_buf))
        else {
            continue;
        };
        let Ok(rdir) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rdir.flatten() {
            let rel = dir.join(e.file_name());
            if !ours.contains(&rel) {
                remove_any(&e.path())
                    .map_err(|er| bad(&rel.display().to_string(), er.to_string()))?;
            }
        }
    }
    Ok(())
}

/// A decompressing reader over a file: the host tool as a child process, or the file itself.
struct Decoded {
    child: Option<Child>,
    reader: Box<dyn Read>,
}

fn open_decoded(path: &Path) -> Result<Decoded, ImportError> {
    let s = disk::sniff(path)?;
    let tool = match s {
        Sniff::Gzip => Some("gzip"),
        Sniff::Xz => Some("xz"),
        Sniff::Zstd => Some("zstd"),
        Sniff::Bzip2 => Some("bzip2"),
        _ => None,
    };
    if let Some(t) = tool {
        // The Debian package of each decompressor (gzip and xz-utils are always there; zstd
        // and bzip2 may not be).
        let pkg = match t {
            "zstd" => "zstd",
            "bzip2" => "bzip2",
            "xz" => "xz-utils",
            _ => "gzip",
        };
        deps::ensure(&[pkg], &crate::StderrProgress)?;
    }
    let file = std::fs::File::open(path).map_err(rd(format!("open {}", path.display())))?;
    match tool {
        None => Ok(Decoded {
            child: None,
            reader: Box::new(std::io::BufReader::new(file)),
        }),
        Some(t) => {
            let mut child = Command::new(t)
                .args(["-d", "-c"])
                .stdin(file)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| ImportError::Read {
                    what: format!("run {t} to decompress {} (install {t})", path.display()),
                    source: e,
                })?;
            let out = child.stdout.take().ok_or_else(|| ImportError::Read {
                what: format!("{t} pipe"),
                source: std::io::Error::other("no stdout"),
            })?;
            Ok(Decoded {
                child: Some(child),
                reader: Box::new(std::io::BufReader::new(out)),
            })
        }
    }
}

/// Apply a (possibly compressed) tar file onto `root`.
pub fn apply_layer_file(
    path: &Path,
    root: &Path,
    whiteouts: bool,
    what: &str,
) -> Result<(), ImportError> {
    let Decoded { child, reader } = open_decoded(path)?;
    let r = apply_layer(reader, root, whiteouts, what);
    if let Some(mut c) = child {
        let mut err = String::new();
        if let Some(mut e) = c.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let st = c.wait().map_err(rd("wait for the decompressor"))?;
        if !st.success() && r.is_ok() {
            return Err(ImportError::Entry {
                what: what.to_string(),
                entry: "(archive)".into(),
                problem: format!("decompression failed: {}", err.trim()),
            });
        }
        if !st.success() {
            if let Err(ImportError::Entry {
                what,
                entry,
                problem,
            }) = r
            {
                return Err(ImportError::Entry {
                    what,
                    entry,
                    problem: format!("{problem} (decompression: {})", err.trim()),
                });
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar layer from (path, content or None for a directory, or a whiteout marker name).
    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, c) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            match c {
                Some(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, p, data.as_bytes()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn classify_whiteouts() {
        assert_eq!(
            classify(Path::new("etc/.wh.passwd"), true).unwrap(),
            EntryAction::Whiteout("etc/passwd".into())
        );
        assert_eq!(
            classify(Path::new("./var/.wh..wh..opq"), true).unwrap(),
            EntryAction::Opaque("var".into())
        );
        assert_eq!(
            classify(Path::new("/etc/.wh.passwd"), false).unwrap(),
            EntryAction::Extract("etc/.wh.passwd".into())
        );
        assert_eq!(classify(Path::new("./"), true).unwrap(), EntryAction::Skip);
        assert!(classify(Path::new("a/../../etc"), true).is_err());
        assert!(classify(Path::new("a/.wh."), true).is_err());
    }

    #[test]
    fn layers_with_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let l1 = layer(&[
            ("etc", None),
            ("etc/keep", Some("1")),
            ("etc/gone", Some("1")),
            ("var", None),
            ("var/old1", Some("1")),
            ("var/sub", None),
            ("var/sub/old2", Some("1")),
            ("dir", None),
            ("dir/x", Some("1")),
        ]);
        apply_layer(&l1[..], root, true, "l1").unwrap();
        let l2 = layer(&[
            ("etc/.wh.gone", Some("")),
            ("var/new-before", Some("2")),
            ("var/.wh..wh..opq", Some("")),
            ("var/new-after", Some("2")),
            ("etc/keep", Some("2")),
            // Whiteout of something this same layer adds: must not remove it.
            ("etc/mine", Some("2")),
            ("etc/.wh.mine", Some("")),
            (".wh.dir", Some("")),
        ]);
        apply_layer(&l2[..], root, true, "l2").unwrap();
        assert_eq!(std::fs::read_to_string(root.join("etc/keep")).unwrap(), "2");
        assert!(!root.join("etc/gone").exists());
        assert!(root.join("etc/mine").exists());
        assert!(!root.join("etc/.wh.gone").exists());
        assert!(!root.join("var/old1").exists());
        assert!(!root.join("var/sub").exists());
        assert!(root.join("var/new-before").exists());
        assert!(root.join("var/new-after").exists());
        assert!(!root.join("var/.wh..wh..opq").exists());
        assert!(!root.join("dir").exists());
        // A file replaced by a directory in a later layer.
        let l3 = layer(&[("etc/keep", None), ("etc/keep/inner", Some("3"))]);
        apply_layer(&l3[..], root, true, "l3").unwrap();
        assert!(root.join("etc/keep/inner").is_file());
    }

    #[test]
    fn whiteout_never_leaves_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "x").unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        let l = layer(&[("link/.wh.precious", Some(""))]);
        apply_layer(&l[..], &root, true, "evil").unwrap();
        assert!(outside.path().join("precious").exists());
    }

    /// A rootfs tarball from (path, content, symlink target).
    fn tarball(entries: &[(&str, Option<&str>, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, c, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            match (c, link) {
                (_, Some(t)) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    h.set_mode(0o777);
                    b.append_link(&mut h, p, t).unwrap();
                }
                (Some(data), None) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, p, data.as_bytes()).unwrap();
                }
                (None, None) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn listing(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A rootfs whose `etc`, `tmp` and `usr/local/sbin` are symlinks to host directories, and
    /// whose `sbin/init` climbs out with `..`: the host directories are untouched (no file, no
    /// mode change) and the import fails naming the path, or writes inside the tree.
    #[test]
    fn import_of_a_rootfs_whose_dirs_link_to_host_dirs_never_writes_there() {
        use std::os::unix::fs::PermissionsExt;
        let host = tempfile::tempdir().unwrap();
        let h = |n: &str| {
            let p = host.path().join(n);
            std::fs::create_dir(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p.to_str().unwrap().to_string()
        };
        let (etc, tmp, sbin) = (h("etc"), h("tmp"), h("sbin"));
        std::fs::write(host.path().join("shadow"), "secret").unwrap();
        let climb = format!("../../../../../../..{}/shadow", host.path().display());
        let before = || {
            ["etc", "tmp", "sbin"]
                .iter()
                .map(|d| {
                    let p = host.path().join(d);
                    (
                        listing(&p),
                        std::fs::metadata(&p).unwrap().permissions().mode(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let was = before();
        // Plain tree (the agent becomes init), and a systemd tree (units and fstab written).
        for systemd in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().join("root");
            std::fs::create_dir(&root).unwrap();
            let mut entries = vec![
                ("bin", None, None),
                ("etc", None, Some(etc.as_str())),
                ("tmp", None, Some(tmp.as_str())),
                ("usr", None, None),
                ("usr/local", None, None),
                ("sbin", None, None),
                ("sbin/init", None, Some(climb.as_str())),
            ];
            if !systemd {
                entries.push(("usr/local/sbin", None, Some(sbin.as_str())));
            } else {
                // The agent goes in; the units then meet `etc`.
                entries.push(("lib", None, None));
                entries.push(("lib/systemd", None, None));
                entries.push(("lib/systemd/systemd", Some("elf"), None));
            }
            apply_layer(&tarball(&entries)[..], &root, false, "evil.tar").unwrap();
            // A later entry through the `etc` link: refused by the unpacker.
            let e = apply_layer(
                &tarball(&[("etc/passwd", Some("root::0:0::/:/bin/sh"), None)])[..],
                &root,
                false,
                "evil.tar",
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("etc/passwd"), "{e}");
            let r = inject_agent(&root, b"agent");
            eprintln!(
                "systemd={systemd}: {:?}",
                r.as_ref().map_err(|e| e.to_string())
            );
            match r {
                Ok(_) => {}
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("inside the imported tree") || e.contains(" in "),
                        "{e}"
                    );
                }
            }
            assert_eq!(before(), was, "systemd={systemd}");
            assert_eq!(
                std::fs::read_to_string(host.path().join("shadow")).unwrap(),
                "secret"
            );
        }
    }

    #[test]
    fn agent_is_init_unless_the_tree_has_systemd() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain");
        std::fs::create_dir_all(plain.join("bin")).unwrap();
        assert_eq!(
            inject_agent(&plain, b"agent").unwrap().as_deref(),
            Some(AGENT_PATH)
        );
        assert!(plain.join("usr/local/sbin/kobako-agent").is_file());
        for dir in ["dev", "proc", "sys", "run", "tmp"] {
            assert!(plain.join(dir).is_dir(), "{dir}");
        }
        let sd = d.path().join("systemd");
        std::fs::create_dir_all(sd.join("lib/systemd/system")).unwrap();
        std::fs::create_dir_all(sd.join("sbin")).unwrap();
        std::fs::write(sd.join("lib/systemd/systemd"), b"").unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", sd.join("sbin/init")).unwrap();
        assert_eq!(inject_agent(&sd, b"agent").unwrap(), None);
        assert!(sd
            .join("etc/systemd/system/sysinit.target.wants/kobako-agent.service")
            .symlink_metadata()
            .is_ok());
    }

    fn sha(b: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    }

    /// Write an OCI layout with the given layers; returns the layer digests.
    fn write_layout(dir: &Path, layers: &[Vec<u8>], nested: bool) -> Vec<String> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |b: &[u8]| {
            let h = sha(b);
            std::fs::write(blobs.join(&h), b).unwrap();
            format!("sha256:{h}")
        };
        let digests: Vec<String> = layers.iter().map(|l| put(l)).collect();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cfg_d = put(config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": config.len()},
            "layers": digests.iter().zip(layers).map(|(d, l)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": l.len()
            })).collect::<Vec<_>>(),
        });
        let mb = serde_json::to_vec(&manifest).unwrap();
        let md = put(&mb);
        let mut top = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mb.len(),
            "platform": {"architecture": "amd64", "os": "linux"}
        });
        if nested {
            let idx = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:".to_string() + &"0".repeat(64), "size": 1, "platform": {"architecture": "arm64", "os": "linux"}}, top]
            }))
            .unwrap();
            let id = put(&idx);
            top = serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": idx.len()});
        }
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]}))
                .unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        digests
    }

    #[test]
    fn oci_manifest_parsing_and_blob_checks() {
        let d = tempfile::tempdir().unwrap();
        let l1 = layer(&[("etc", None), ("etc/a", Some("1"))]);
        let l2 = layer(&[("etc/.wh.a", Some(""))]);
        let digests = write_layout(d.path(), &[l1.clone(), l2.clone()], true);
        let layers = oci_layers(d.path()).unwrap();
        assert_eq!(
            layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(),
            digests
        );
        // Corrupt blob: named with its digest.
        let p = blob_path(d.path(), &digests[1]).unwrap();
        std::fs::write(&p, b"garbage").unwrap();
        let e = oci_layers(d.path()).unwrap_err().to_string();
        assert!(
            e.contains(&digests[1]) && e.contains("corrupt") && e.contains("layer 2 of 2"),
            "{e}"
        );
        // Missing blob.
        std::fs::remove_file(&p).unwrap();
        let e = oci_layers(d.path()).unwrap_err().to_string();
        assert!(e.contains(&digests[1]) && e.contains("missing"), "{e}");
        // Bad digest syntax, no manifests.
        std::fs::write(
            d.path().join("index.json"),
            br#"{"schemaVersion":2,"manifests":[{"digest":"md5:xx","size":1}]}"#,
        )
        .unwrap();
        let e = oci_layers(d.path()).unwrap_err().to_string();
        assert!(e.contains("md5:xx"), "{e}");
        std::fs::write(
            d.path().join("index.json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        let e = oci_layers(d.path()).unwrap_err().to_string();
        assert!(e.contains("no manifests"), "{e}");
    }
}
