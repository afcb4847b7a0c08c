//! The `tiny` image: busybox-static and kobako-agent (as `/init` and `/sbin/init`), nothing else.
//! Built as an uncompressed initramfs (boots fastest) and as an ext4 filesystem (for a writable
//! disk root), cached under a key of the two binaries' contents.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cache, cpio, deps, sha256_hex, Progress};

const RECIPE: &str = "kobako-tiny-recipe-1";
const BUSYBOX: &str = "/bin/busybox";

/// Debian packages the build needs.
pub const BUILD_PACKAGES: &[&str] = &["busybox-static", "e2fsprogs"];

#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    #[error(transparent)]
    Deps(#[from] deps::DepsError),
    #[error("kobako-agent binary not found (looked at {looked}); build it with `scripts/build.sh` or set KOBAKO_AGENT=/path/to/kobako-agent")]
    NoAgent { looked: String },
    #[error("{0} is not a statically linked executable: the tiny image has no libc; build the agent with scripts/build.sh")]
    AgentNotStatic(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TinyError {
    let what = what.into();
    move |source| TinyError::Io { what, source }
}

/// The built tiny image.
#[derive(Debug, Clone)]
pub struct TinyImage {
    pub dir: PathBuf,
    pub initramfs: PathBuf,
    pub ext4: PathBuf,
}

/// The agent [`set_agent`] named for this process, if any.
static AGENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Names the static agent for this process (the binary passes `$KOBAKO_AGENT` when set): it is
/// taken as given by [`find_agent`]. Called once at start; a later call is ignored and returns
/// false.
pub fn set_agent(path: PathBuf) -> bool {
    AGENT.set(path).is_ok()
}

/// Where to find the static agent: the one [`set_agent`] named (`$KOBAKO_AGENT`), next to the
/// running executable, or in this source tree's build output.
pub fn find_agent() -> Result<PathBuf, TinyError> {
    let mut candidates = Vec::new();
    let explicit = AGENT.get();
    if let Some(p) = explicit {
        candidates.push(p.clone());
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("kobako-agent"));
            // target/{debug,release}/kobako -> target/x86_64-unknown-linux-gnu/agent/kobako-agent
            if let Some(target) = dir.parent() {
                candidates.push(target.join("x86_64-unknown-linux-gnu/agent/kobako-agent"));
            }
            // target/debug/deps/<test> (integration tests)
            if let Some(target) = dir.parent().and_then(Path::parent) {
                candidates.push(target.join("x86_64-unknown-linux-gnu/agent/kobako-agent"));
            }
        }
    }
    // The named agent ($KOBAKO_AGENT) is taken as given (a dynamic one is refused later, naming
    // it); a build output next to us counts only when static: `cargo build -p kobako-agent` by
    // hand leaves a dynamic binary in target/debug that must not hide the static one.
    let explicit = explicit.is_some();
    candidates
        .iter()
        .enumerate()
        .find(|(i, p)| p.is_file() && ((explicit && *i == 0) || is_static_file(p)))
        .map(|(_, p)| p.clone())
        .ok_or_else(|| TinyError::NoAgent {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Whether the file at `p` is a static ELF executable (its program headers are in the first
/// 64 KiB, as in every executable a linker writes).
fn is_static_file(p: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(64 << 10);
    std::fs::File::open(p)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .is_ok()
        && is_static_elf(&head)
}

fn is_static_elf(data: &[u8]) -> bool {
    // A static(-pie) executable has no PT_INTERP program header.
    if !data.starts_with(b"\x7fELF") || data.len() < 64 {
        return false;
    }
    let rd16 = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (rd16(54), rd16(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        data.get(o..o + 4)
            .map(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) != 3)
            .unwrap_or(false)
    })
}

/// Cached tiny image for this agent, if built.
pub fn cached(agent: &Path) -> Option<TinyImage> {
    let k = key(agent).ok()?;
    let img = paths(&cache::root().join("images/tiny").join(k));
    (img.initramfs.exists() && img.ext4.exists()).then_some(img)
}

fn key(agent: &Path) -> Result<String, TinyError> {
    let a = std::fs::read(agent).map_err(io(format!("read {}", agent.display())))?;
    let b = std::fs::read(BUSYBOX).unwrap_or_default();
    Ok(sha256_hex(&[RECIPE.as_bytes(), &a, &b])[..16].to_string())
}

fn paths(dir: &Path) -> TinyImage {
    TinyImage {
        dir: dir.to_path_buf(),
        initramfs: dir.join("initramfs.cpio"),
        ext4: dir.join("rootfs.ext4"),
    }
}

/// Build the tiny image for `agent` unless cached.
pub fn build(agent: &Path, progress: &dyn Progress) -> Result<TinyImage, TinyError> {
    deps::ensure(BUILD_PACKAGES, progress)?;
    let agent_bytes = std::fs::read(agent).map_err(io(format!("read {}", agent.display())))?;
    if !is_static_elf(&agent_bytes) {
        return Err(TinyError::AgentNotStatic(agent.to_path_buf()));
    }
    let k = key(agent)?;
    let base = cache::root().join("images/tiny");
    let out = base.join(&k);
    let img = paths(&out);
    if img.initramfs.exists() && img.ext4.exists() {
        progress.step(&format!("tiny image: cached at {}", out.display()));
        return Ok(img);
    }
    let _lock = cache::lock(&base.join(format!("{k}.lock"))).map_err(io("tiny image lock"))?;
    if img.initramfs.exists() && img.ext4.exists() {
        return Ok(img);
    }
    progress.step("tiny image: assembling busybox + kobako-agent");
    let tmp = base.join(format!("{k}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let root = tmp.join("root");
    populate(&root, &agent_bytes)?;

    let mut cpio_file = std::io::BufWriter::new(
        std::fs::File::create(tmp.join("initramfs.cpio")).map_err(io("create initramfs"))?,
    );
    cpio::write_tree(&root, &mut cpio_file).map_err(io("write initramfs"))?;
    drop(cpio_file);

    // ext4 with room to write: 64 MiB, sparse.
    let ext4 = tmp.join("rootfs.ext4");
    let o = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "kobako-root",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(&root)
        .arg(&ext4)
        .arg("64M")
        .output()
        .map_err(io("run mkfs.ext4"))?;
    if !o.status.success() {
        return Err(TinyError::Tool {
            tool: "mkfs.ext4".into(),
            detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    std::fs::remove_dir_all(&root).map_err(io("remove staging tree"))?;
    std::fs::write(
        tmp.join("manifest.json"),
        serde_json::json!({
            "name": "tiny",
            "key": k,
            "recipe": RECIPE,
            "files": ["initramfs.cpio", "rootfs.ext4"],
        })
        .to_string(),
    )
    .map_err(io("write manifest"))?;
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(&tmp, &out).map_err(io("publish tiny image"))?;
    let size = std::fs::metadata(&img.initramfs)
        .map(|m| m.len())
        .unwrap_or(0);
    progress.step(&format!(
        "tiny image: built ({:.1} MB initramfs) -> {}",
        size as f64 / 1e6,
        out.display()
    ));
    Ok(img)
}

fn populate(root: &Path, agent: &[u8]) -> Result<(), TinyError> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root",
        "var/log", "mnt",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(io(format!("mkdir {d}")))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod /tmp"))?;
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(io("copy busybox"))?;
    let agent_path = root.join("sbin/kobako-agent");
    std::fs::write(&agent_path, agent).map_err(io("copy agent"))?;
    std::fs::set_permissions(&agent_path, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod agent"))?;
    symlink("sbin/kobako-agent", root.join("init")).map_err(io("link /init"))?;
    symlink("kobako-agent", root.join("sbin/init")).map_err(io("link /sbin/init"))?;

    // One symlink per busybox applet (except init: the agent is init).
    let o = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .map_err(io("busybox --list-full"))?;
    for applet in String::from_utf8_lossy(&o.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.ends_with("/init") || applet == "linuxrc" {
            continue;
        }
        let link = root.join(applet);
        if link.exists() {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(io("mkdir applet dir"))?;
        }
        symlink(target, &link).map_err(io(format!("link {applet}")))?;
    }

    // /dev/console must exist before devtmpfs is mounted, or init starts without stdio.
    let console = root.join("dev/console");
    let c = std::ffi::CString::new(console.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: valid NUL-terminated path; mknod of a char device (5,1) as root.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(5, 1)) };
    if rc != 0 {
        return Err(TinyError::Io {
            what: "mknod /dev/console (needs root)".into(),
            source: std::io::Error::last_os_error(),
        });
    }

    let files: &[(&str, &str)] = &[
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\ntty:x:5:\n"),
        ("etc/hostname", "kobako\n"),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        (
            "etc/profile",
            "export PS1='\\h:\\w\\$ '\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n",
        ),
        ("etc/os-release", "NAME=\"kobako tiny\"\nID=kobako-tiny\n"),
    ];
    for (p, content) in files {
        std::fs::write(root.join(p), content).map_err(io(format!("write {p}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_detection() {
        // Debian's /bin/true is dynamically linked.
        let dynamic = std::fs::read("/bin/true").unwrap();
        assert!(!is_static_elf(&dynamic));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        if let Ok(bb) = std::fs::read(BUSYBOX) {
            assert!(is_static_elf(&bb), "busybox-static must be static");
            assert!(is_static_file(Path::new(BUSYBOX)), "from its first 64 KiB");
        }
        assert!(!is_static_file(Path::new("/bin/true")));
        assert!(!is_static_file(Path::new("/nonexistent")));
    }
}
