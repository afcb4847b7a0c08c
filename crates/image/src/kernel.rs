//! The guest kernel: built once per machine from Debian's `linux-source` with the config fragment
//! in `guest/kernel/microvm.config` (compiled into the binary), cached under a key derived from
//! the fragment, the source tarball and this builder's recipe version.
//!
//! Recipe: extract the source once (shared by all configs), `make allnoconfig
//! KCONFIG_ALLCONFIG=<fragment>` in an out-of-tree build directory, check every `=y` of the fragment
//! survived Kconfig, then `make vmlinux bzImage`. Output: the ELF `vmlinux` (booted through its PVH
//! entry note: the fastest path, no decompression) and `bzImage` (for loaders that need the Linux
//! boot protocol).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{cache, deps, sha256_hex, Progress};

/// The kernel config fragment kept in the repository.
pub const FRAGMENT: &str = include_str!("../../../guest/kernel/microvm.config");

/// Bump when the build recipe changes in a way that changes the output.
const RECIPE: &str = "kobako-kernel-recipe-1";

/// Debian packages the build needs.
pub const BUILD_PACKAGES: &[&str] = &[
    "linux-source",
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Deps(#[from] deps::DepsError),
    #[error("no /usr/src/linux-source-*.tar.xz found after installing linux-source")]
    NoSource,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{step}` failed (exit {code:?}); last lines of {log}:\n{tail}")]
    Make {
        step: String,
        code: Option<i32>,
        log: PathBuf,
        tail: String,
    },
    #[error("{path}: not a kernel (expected an ELF vmlinux with a PVH note, or a bzImage)")]
    NotAKernel { path: PathBuf },
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Io { what, source }
}

/// A built (or given) kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The file to boot (vmlinux for PVH, or a bzImage).
    pub path: PathBuf,
    pub format: KernelFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF with the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).
    ElfPvh,
    /// ELF without a PVH note (QEMU cannot boot it through -kernel).
    Elf,
    /// x86 bzImage ("HdrS" boot protocol header).
    BzImage,
}

/// Cached artifacts of the default kernel.
#[derive(Debug, Clone)]
pub struct KernelArtifacts {
    pub dir: PathBuf,
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
}

fn source_tarball() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("linux-source-") && n.ends_with(".tar.xz")
        })
        .collect();
    found.sort();
    found.pop()
}

/// Cache key of the default kernel given the source tarball.
fn key(tarball: &Path) -> String {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let size = std::fs::metadata(tarball).map(|m| m.len()).unwrap_or(0);
    let h = sha256_hex(&[
        RECIPE.as_bytes(),
        FRAGMENT.as_bytes(),
        name.as_bytes(),
        &size.to_le_bytes(),
    ]);
    h[..16].to_string()
}

/// The default kernel if it is already built (no building, no package installs).
pub fn cached() -> Option<KernelArtifacts> {
    let tarball = source_tarball()?;
    let dir = cache::root().join("kernel").join(key(&tarball));
    let a = artifacts(&dir);
    (a.vmlinux.exists() && a.bzimage.exists()).then_some(a)
}

fn artifacts(dir: &Path) -> KernelArtifacts {
    KernelArtifacts {
        dir: dir.to_path_buf(),
        vmlinux: dir.join("vmlinux"),
        bzimage: dir.join("bzImage"),
    }
}

/// Build the default kernel unless it is cached; returns its artifacts.
pub fn build(progress: &dyn Progress, jobs: usize) -> Result<KernelArtifacts, KernelError> {
    if let Some(a) = cached() {
        progress.step(&format!("kernel: cached at {}", a.dir.display()));
        return Ok(a);
    }
    deps::ensure(BUILD_PACKAGES, progress)?;
    let tarball = source_tarball().ok_or(KernelError::NoSource)?;
    let key = key(&tarball);
    let kdir = cache::root().join("kernel");
    let _lock = cache::lock(&kdir.join(format!("{key}.lock"))).map_err(io("kernel build lock"))?;
    let out = kdir.join(&key);
    let a = artifacts(&out);
    if a.vmlinux.exists() && a.bzimage.exists() {
        // Someone else built it while we waited for the lock.
        return Ok(a);
    }

    // 1. Extract the source once.
    let stem = tarball
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_end_matches(".tar.xz")
        .to_string();
    let src_parent = kdir.join(format!("src-{stem}"));
    let src = src_parent.join(&stem);
    if !src.join("Makefile").exists() {
        progress.step(&format!(
            "kernel: extracting {} (once per machine)",
            tarball.display()
        ));
        let tmp = kdir.join(format!("src-{stem}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io("create source dir"))?;
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tmp)
            .status()
            .map_err(io("run tar"))?;
        if !st.success() {
            return Err(KernelError::Io {
                what: format!("extract {}", tarball.display()),
                source: std::io::Error::other(format!("tar exited with {st}")),
            });
        }
        let _ = std::fs::remove_dir_all(&src_parent);
        std::fs::rename(&tmp, &src_parent).map_err(io("move source into place"))?;
    }

    // 2. Configure out of tree.
    let build = kdir.join(format!("build-{key}"));
    std::fs::create_dir_all(&build).map_err(io("create build dir"))?;
    let frag = build.join("kobako.fragment");
    std::fs::write(&frag, FRAGMENT).map_err(io("write fragment"))?;
    let log = build.join("build.log");
    let mut logf = std::fs::File::create(&log).map_err(io("create build log"))?;
    progress.step("kernel: configuring (allnoconfig + guest/kernel/microvm.config)");
    make(
        &src,
        &build,
        &[
            "allnoconfig".to_string(),
            format!("KCONFIG_ALLCONFIG={}", frag.display()),
        ],
        &mut logf,
        &log,
        progress,
    )?;
    let dotconfig = std::fs::read_to_string(build.join(".config")).map_err(io("read .config"))?;
    let dropped = dropped_options(FRAGMENT, &dotconfig);
    if !dropped.is_empty() {
        progress.step(&format!(
            "kernel: warning: Kconfig dropped {} option(s) of the fragment (unmet dependencies): {}",
            dropped.len(),
            dropped.join(", ")
        ));
    }

    // 3. Build.
    let started = Instant::now();
    progress.step(&format!(
        "kernel: compiling with {jobs} jobs (about 5 minutes on 2 cores; log: {})",
        log.display()
    ));
    make(
        &src,
        &build,
        &[format!("-j{jobs}"), "vmlinux".into(), "bzImage".into()],
        &mut logf,
        &log,
        progress,
    )?;

    // 4. Publish atomically.
    let tmp = kdir.join(format!("{key}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("create artifact dir"))?;
    std::fs::copy(build.join("vmlinux"), tmp.join("vmlinux")).map_err(io("copy vmlinux"))?;
    std::fs::copy(build.join("arch/x86/boot/bzImage"), tmp.join("bzImage"))
        .map_err(io("copy bzImage"))?;
    std::fs::copy(build.join(".config"), tmp.join("config")).map_err(io("copy config"))?;
    let _ = std::fs::copy(&log, tmp.join("build.log"));
    std::fs::rename(&tmp, &out).map_err(io("publish kernel"))?;
    progress.step(&format!(
        "kernel: built in {:.0} s -> {}",
        started.elapsed().as_secs_f64(),
        out.display()
    ));
    Ok(a)
}

/// `CONFIG_X=y` lines of the fragment that are not `=y` in the final config.
pub fn dropped_options(fragment: &str, dotconfig: &str) -> Vec<String> {
    let have: std::collections::HashSet<&str> = dotconfig.lines().map(str::trim).collect();
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_") && l.ends_with("=y"))
        .filter(|l| !have.contains(l))
        .map(|l| l.trim_end_matches("=y").to_string())
        .collect()
}

fn make(
    src: &Path,
    build: &Path,
    args: &[String],
    logf: &mut std::fs::File,
    log: &Path,
    progress: &dyn Progress,
) -> Result<(), KernelError> {
    let mut child = Command::new("make")
        .arg("-C")
        .arg(src)
        .arg(format!("O={}", build.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("run make"))?;
    // Merge stderr into the log from a side thread; count compiled objects on stdout for progress.
    let stderr = child.stderr.take();
    let err_log = logf.try_clone().map_err(io("clone log"))?;
    let err_thread = std::thread::spawn(move || {
        let mut err_log = err_log;
        if let Some(e) = stderr {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                let _ = writeln!(err_log, "{line}");
            }
        }
    });
    let mut compiled = 0u64;
    let mut last = Instant::now();
    let started = Instant::now();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(logf, "{line}");
            if line.trim_start().starts_with("CC ") {
                compiled += 1;
            }
            if last.elapsed().as_secs() >= 15 {
                last = Instant::now();
                progress.step(&format!(
                    "kernel: {compiled} files compiled ({:.0} s)",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    }
    let _ = err_thread.join();
    let st = child.wait().map_err(io("wait for make"))?;
    if !st.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        return Err(KernelError::Make {
            step: format!("make {}", args.join(" ")),
            code: st.code(),
            log: log.to_path_buf(),
            tail,
        });
    }
    Ok(())
}

/// Look at a kernel file and say what it is. Any file that is neither a bootable ELF nor a
/// bzImage is refused here, before a VM is started.
pub fn inspect(path: &Path) -> Result<Kernel, KernelError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|source| KernelError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut head = vec![0u8; 4096];
    let n = f.read(&mut head).map_err(|source| KernelError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    head.truncate(n);
    let not = || KernelError::NotAKernel {
        path: path.to_path_buf(),
    };
    if head.starts_with(b"\x7fELF") {
        let data = std::fs::read(path).map_err(|source| KernelError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let format = if elf_has_pvh_note(&data).ok_or_else(not)? {
            KernelFormat::ElfPvh
        } else {
            KernelFormat::Elf
        };
        return Ok(Kernel {
            path: path.to_path_buf(),
            format,
        });
    }
    // bzImage: "HdrS" at 0x202 and the 0xAA55 boot signature at 0x1fe.
    if head.len() > 0x206 && &head[0x202..0x206] == b"HdrS" && head[0x1fe..0x200] == [0x55, 0xaa] {
        return Ok(Kernel {
            path: path.to_path_buf(),
            format: KernelFormat::BzImage,
        });
    }
    Err(not())
}

/// Does this ELF64 carry a Xen PVH entry note (type 18, XEN_ELFNOTE_PHYS32_ENTRY)? `None` when the
/// ELF headers are malformed or not x86-64.
pub fn elf_has_pvh_note(data: &[u8]) -> Option<bool> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    if data.get(4) != Some(&2) || u16_at(18)? != 62 {
        return None; // not ELFCLASS64 / EM_X86_64
    }
    let phoff = u64_at(32)? as usize;
    let phentsize = u16_at(54)? as usize;
    let phnum = u16_at(56)? as usize;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 4 {
            continue; // PT_NOTE only
        }
        let off = u64_at(ph + 8)? as usize;
        let size = u64_at(ph + 32)? as usize;
        let end = off.checked_add(size)?.min(data.len());
        let mut p = off;
        while p + 12 <= end {
            let namesz = u32_at(p)? as usize;
            let descsz = u32_at(p + 4)? as usize;
            let ty = u32_at(p + 8)?;
            let name = data.get(p + 12..p + 12 + namesz)?;
            if ty == 18 && name.starts_with(b"Xen") {
                return Some(true);
            }
            p += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_options_are_reported() {
        let frag = "CONFIG_A=y\n# comment\nCONFIG_B=y\n# CONFIG_C is not set\n";
        let cfg = "CONFIG_A=y\n# CONFIG_B is not set\n";
        assert_eq!(dropped_options(frag, cfg), vec!["CONFIG_B".to_string()]);
    }

    #[test]
    fn fragment_is_the_repo_file() {
        assert!(FRAGMENT.contains("CONFIG_PVH=y"));
        assert!(FRAGMENT.contains("CONFIG_VIRTIO_CONSOLE=y"));
    }

    #[test]
    fn inspect_refuses_non_kernels() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notakernel");
        std::fs::write(&p, b"hello, I am text").unwrap();
        let e = inspect(&p).unwrap_err();
        assert!(e.to_string().contains("not a kernel"), "{e}");
        let e = inspect(&d.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        // An ELF that is not x86-64 (truncated header) is refused too.
        std::fs::write(&p, b"\x7fELF\x01\x01\x01").unwrap();
        assert!(inspect(&p).is_err());
    }

    #[test]
    fn host_binary_is_elf_without_pvh() {
        // /bin/true is an x86-64 ELF without a PVH note.
        let k = inspect(Path::new("/bin/true")).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
    }
}
