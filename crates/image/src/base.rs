//! The steps every image made from a root tree shares, whether the tree came from mmdebstrap
//! ([`crate::debian`]) or from a user's tarball or OCI layout ([`crate::import`]):
//!
//! 1. [`stage`]: a staging directory in the store (swept of leftovers first) and the path of
//!    the tree in it;
//! 2. [`read_agent`]: the kobako-agent binary, written into the tree at [`AGENT_PATH`] by the
//!    caller's recipe;
//! 3. [`has_cloud_init`]: whether VMs of the image get a NoCloud seed;
//! 4. [`tree_to_base`]: the tree becomes ext4 (then is removed), the ext4 a read-only qcow2
//!    `base.qcow2` (the raw file removed);
//! 5. [`manifest`]: the manifest fields that follow from the base, the agent and the time
//!    taken; the caller adds what it knows (kind, packages, source, init, recipe) and commits.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::disk::{self, DiskError};
use crate::store::{self, ImageKind, Manifest, Staging, Store, StoreError};
use crate::Progress;

/// Where the agent goes in every image tree.
pub const AGENT_PATH: &str = "/usr/local/sbin/kobako-agent";

/// A staging directory for image `name` and the path of its root tree (not created: mmdebstrap
/// makes its own).
pub(crate) fn stage(store: &Store, name: &str) -> Result<(Staging, PathBuf), StoreError> {
    store.sweep();
    let st = store.begin(name)?;
    let root = st.dir.join("root");
    Ok((st, root))
}

/// The kobako-agent binary to put into a tree.
pub(crate) fn read_agent(agent: &Path) -> Result<Vec<u8>, DiskError> {
    std::fs::read(agent).map_err(disk::io(format!("read {}", agent.display())))
}

/// Whether the tree has cloud-init (resolved inside the tree: its symlinks never reach the
/// host's files).
pub(crate) fn has_cloud_init(root: &Path) -> bool {
    crate::inroot::Root::open(root)
        .map(|t| t.exists("usr/bin/cloud-init"))
        .unwrap_or(false)
}

/// A base made by [`tree_to_base`].
pub(crate) struct Base {
    /// `base.qcow2` in the staging directory, read-only.
    pub path: PathBuf,
    /// Size of the filesystem the guest sees.
    pub virtual_size: u64,
}

/// The tree at `root` becomes ext4 labelled `kobako-root` of `size_bytes`, or of `default_size`
/// (given the bytes of files in the tree), then the read-only qcow2 `dir/base.qcow2`. The tree
/// and the raw ext4 are removed on the way. `who` prefixes the progress lines (`debian`,
/// `import`).
pub(crate) fn tree_to_base(
    root: &Path,
    dir: &Path,
    size_bytes: Option<u64>,
    default_size: impl FnOnce(u64) -> u64,
    who: &str,
    progress: &dyn Progress,
) -> Result<Base, DiskError> {
    let content = disk::tree_bytes(root);
    let size = size_bytes.unwrap_or_else(|| default_size(content));
    progress.step(&format!(
        "{who}: ext4 of {} MiB ({} MiB of files)",
        size >> 20,
        content >> 20
    ));
    let raw = dir.join("rootfs.ext4");
    disk::mkfs_ext4(root, &raw, size, "kobako-root")?;
    std::fs::remove_dir_all(root).map_err(disk::io("remove the staging tree"))?;
    progress.step(&format!("{who}: converting to a qcow2 base"));
    let base = dir.join("base.qcow2");
    disk::raw_to_qcow2(&raw, &base)?;
    std::fs::remove_file(&raw).map_err(disk::io("remove the raw ext4"))?;
    disk::make_read_only(&base)?;
    Ok(Base {
        path: base,
        virtual_size: size,
    })
}

/// The manifest of image `name` of `kind` on `base`, started at `t0`, with `agent` inside; the
/// caller sets packages, source, cloud_init, init and the recipe fields.
pub(crate) fn manifest(
    name: &str,
    kind: ImageKind,
    base: &Base,
    agent: &Path,
    t0: Instant,
) -> Result<Manifest, DiskError> {
    let sha256 = disk::sha256_file(&base.path)?;
    Ok(Manifest {
        name: name.to_string(),
        kind,
        base: "base.qcow2".into(),
        format: "qcow2".into(),
        size: disk::allocated(&base.path),
        virtual_size: base.virtual_size,
        created: store::now_rfc3339(),
        packages: Vec::new(),
        source: String::new(),
        sha256,
        cloud_init: false,
        build_secs: Some((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        init: None,
        agent_sha256: Some(disk::sha256_file(agent)?),
        recipe: None,
        recipe_digest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Lines(Mutex<Vec<String>>);
    impl Progress for Lines {
        fn step(&self, msg: &str) {
            self.0.lock().unwrap().push(msg.to_string());
        }
    }

    fn have(tool: &str) -> bool {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok()
    }

    #[test]
    fn a_tree_becomes_a_read_only_qcow2_base_and_its_manifest() {
        if !have("mkfs.ext4") || !have("qemu-img") {
            eprintln!("skipped: no mkfs.ext4 or qemu-img");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/cloud-init"), "#!/bin/sh\n").unwrap();
        assert!(has_cloud_init(&root));
        let agent = d.path().join("agent");
        std::fs::write(&agent, b"agent").unwrap();
        assert_eq!(read_agent(&agent).unwrap(), b"agent");
        let lines = Lines(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let base = tree_to_base(&root, d.path(), None, |_| 16 << 20, "test", &lines).unwrap();
        assert_eq!(base.path, d.path().join("base.qcow2"));
        assert_eq!(base.virtual_size, 16 << 20);
        assert!(!root.exists() && !d.path().join("rootfs.ext4").exists());
        assert!(std::fs::metadata(&base.path)
            .unwrap()
            .permissions()
            .readonly());
        assert_eq!(
            lines.0.lock().unwrap()[..],
            [
                "test: ext4 of 16 MiB (0 MiB of files)",
                "test: converting to a qcow2 base"
            ]
        );
        let m = manifest("t", ImageKind::Imported, &base, &agent, t0).unwrap();
        assert_eq!(
            (m.base.as_str(), m.format.as_str()),
            ("base.qcow2", "qcow2")
        );
        assert_eq!(m.virtual_size, 16 << 20);
        assert_eq!(m.sha256, disk::sha256_file(&base.path).unwrap());
        assert_eq!(m.agent_sha256, Some(disk::sha256_file(&agent).unwrap()));
        assert!(!has_cloud_init(&d.path().join("none")));
    }
}
