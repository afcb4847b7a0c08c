//! HTTPS: a given certificate and key, or a self-signed one made on first start
//! (`<state>/server/tls/{cert,key}.pem`, the key 0600) for `localhost`, `127.0.0.1`, `::1` and
//! the host name. Clients pin `cert.pem` (curl `--cacert`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `data` to `path` with mode 0600 (atomically: temporary file, then rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// What [`make_private`] changed on a path, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fixed {
    Mode { from: u32, to: u32 },
    Owner { from: u32, to: u32 },
    Created,
}

/// Makes `path` private to this process's user: a directory 0700 (created when missing and
/// `create`), a file 0600, owned by the effective uid. Only ever removes permissions; a
/// symbolic link is refused (not followed). Returns what it changed.
pub fn make_private(path: &Path, dir: bool, create: bool) -> Result<Vec<Fixed>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let want = if dir { 0o700 } else { 0o600 };
    let mut fixed = Vec::new();
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create && dir => {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))?;
            }
            match std::fs::DirBuilder::new().mode(want).create(path) {
                Ok(()) => fixed.push(Fixed::Created),
                // Another server starting at the same moment made it first: check what is
                // there like any existing directory.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("create {}", path.display())),
            }
            std::fs::symlink_metadata(path)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fixed),
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    if md.file_type().is_symlink() {
        anyhow::bail!(
            "{} is a symbolic link; the server's private files must be real files (remove it)",
            path.display()
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if md.uid() != uid {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to uid {uid}", path.display()))?;
        fixed.push(Fixed::Owner {
            from: md.uid(),
            to: uid,
        });
    }
    let mode = md.mode() & 0o7777;
    if mode & !want != 0 {
        let to = mode & want;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(to))
            .with_context(|| format!("chmod {} to {to:o}", path.display()))?;
        fixed.push(Fixed::Mode { from: mode, to });
    }
    Ok(fixed)
}

/// The certificate and key to serve: given paths, or the self-signed pair under `dir`
/// (generated when missing). Returns (cert, key, generated now).
pub fn ensure_cert(
    dir: &Path,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<(PathBuf, PathBuf, bool)> {
    match (cert, key) {
        (Some(c), Some(k)) => return Ok((c, k, false)),
        (None, None) => {}
        _ => anyhow::bail!("--cert and --key go together: give both or neither"),
    }
    let c = dir.join("tls/cert.pem");
    let k = dir.join("tls/key.pem");
    if c.exists() && k.exists() {
        return Ok((c, k, false));
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_string());
        }
    }
    let ck = rcgen::generate_simple_self_signed(names).context("generate a TLS certificate")?;
    write_private(&k, ck.key_pair.serialize_pem().as_bytes())?;
    std::fs::create_dir_all(dir.join("tls"))?;
    // Atomically too: clients (and tests) read it as soon as it exists.
    let tmp = c.with_extension("pem.tmp");
    std::fs::write(&tmp, ck.cert.pem()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &c).with_context(|| format!("rename to {}", c.display()))?;
    Ok((c, k, true))
}
