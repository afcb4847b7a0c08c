//! Commands that work inside a running VM through its agent: `exec`, `shell`, `cp`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use kobako_agent::proto::{ExecRequest, FileKind, TtySize};
use kobako_runtime::agent::{AgentClient, ExecEvent};
use kobako_runtime::VmDir;
use tokio::io::AsyncWriteExt;

#[derive(Args)]
pub struct ExecArgs {
    /// Keep stdin open and forward it to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a terminal (with -i: an interactive terminal session).
    #[arg(short, long)]
    pub tty: bool,
    /// Run as this user (name or uid).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// VM name.
    pub vm: String,
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// Connect to a running VM's agent.
pub async fn connect(name: &str) -> Result<AgentClient> {
    let name = &crate::vm_names::vm_name(name)?;
    let vm = VmDir::open(name)?;
    if vm.vm_pid().is_none() {
        bail!("VM '{name}' is not running (start it with `kobako vm run`)");
    }
    let client = AgentClient::connect(&vm.file("agent.sock")).await?;
    client
        .wait_ready(Duration::from_secs(30))
        .await
        .with_context(|| format!("VM '{name}'"))?;
    Ok(client)
}

fn term_size() -> Option<TtySize> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it for fd 1 if it is a terminal.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 {
            Some(TtySize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            })
        } else {
            None
        }
    }
}

pub async fn exec(a: ExecArgs) -> Result<i32> {
    let client = connect(&a.vm).await?;
    let mut env = Vec::new();
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .with_context(|| format!("--env {e}: use KEY=VALUE"))?;
        env.push((k.to_string(), v.to_string()));
    }
    let tty = if a.tty {
        Some(term_size().unwrap_or(TtySize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let req = ExecRequest {
        argv: a.argv.clone(),
        env,
        cwd: a.workdir.clone(),
        timeout_ms: a.timeout.map(|s| s * 1000),
        stdin: a.interactive,
        tty,
        user: a.user.clone(),
    };
    run_session(&client, req, a.interactive, a.timeout).await
}

/// Drive one exec session: forward stdin (and terminal resizes), print output, return status.
pub async fn run_session(
    client: &AgentClient,
    req: ExecRequest,
    interactive: bool,
    timeout: Option<u64>,
) -> Result<i32> {
    let tty = req.tty.is_some();
    let mut s = client.exec_stream(req).await?;
    let _raw = if tty && interactive {
        Some(crate::console::RawMode::enable())
    } else {
        None
    };
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    if interactive {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = in_tx.blocking_send(Vec::new());
                        break;
                    }
                    Ok(n) => {
                        if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    } else {
        drop(in_tx);
    }
    let mut winch = if tty {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let mut stdin_open = interactive;
    loop {
        tokio::select! {
            ev = s.next() => match ev? {
                Some(ExecEvent::Stdout(b)) => { out.write_all(&b).await?; out.flush().await?; }
                Some(ExecEvent::Stderr(b)) => { err.write_all(&b).await?; err.flush().await?; }
                Some(ExecEvent::Exited { code, signal, timed_out }) => {
                    drop(_raw);
                    if timed_out {
                        eprintln!("kobako: command killed after {} s (--timeout)", timeout.unwrap_or(0));
                    }
                    return Ok(match (code, signal) {
                        (Some(c), _) => c,
                        (None, Some(sig)) => 128 + sig,
                        _ => 255,
                    });
                }
                None => return Ok(255),
            },
            Some(data) = in_rx.recv(), if stdin_open => {
                if data.is_empty() {
                    stdin_open = false;
                    s.close_stdin().await?;
                } else {
                    s.stdin(&data).await?;
                }
            }
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                if let Some(sz) = term_size() {
                    s.resize(sz.rows, sz.cols).await?;
                }
            }
        }
    }
}

/// `kobako shell VM`: an interactive login shell on a terminal.
pub async fn shell(vm: &str, user: Option<String>) -> Result<i32> {
    let client = connect(vm).await?;
    let sh = if client.stat("/bin/bash").await?.exists {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let req = ExecRequest {
        argv: vec![sh.into(), "-l".into()],
        stdin: true,
        tty: Some(term_size().unwrap_or(TtySize { rows: 24, cols: 80 })),
        user,
        ..Default::default()
    };
    run_session(&client, req, true, None).await
}

/// A `cp` operand: a host path or `VM:PATH`.
#[derive(Debug, Clone, PartialEq)]
pub enum Loc {
    Host(PathBuf),
    Guest { vm: String, path: String },
}

pub fn parse_loc(s: &str) -> Loc {
    // "VM:PATH" when the part before ':' is a plausible VM name (not a path).
    if let Some((vm, path)) = s.split_once(':') {
        if !vm.is_empty() && !vm.contains('/') && kobako_runtime::config::validate_name(vm).is_ok()
        {
            return Loc::Guest {
                vm: vm.into(),
                path: if path.is_empty() {
                    "/root".into()
                } else {
                    path.into()
                },
            };
        }
    }
    Loc::Host(PathBuf::from(s))
}

fn join_guest(dir: &str, name: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), name)
}

struct Meter {
    started: Instant,
    show: bool,
}

impl Meter {
    fn new(total: u64) -> Meter {
        Meter {
            started: Instant::now(),
            show: total >= 8 << 20 && std::io::stderr().is_terminal(),
        }
    }

    fn cb(&self, total: u64) -> impl Fn(u64) + Send + Sync + '_ {
        let last = std::sync::Mutex::new(Instant::now());
        move |done| {
            if !self.show {
                return;
            }
            let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
            if l.elapsed() > Duration::from_millis(200) || done == total {
                *l = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                eprint!(
                    "\r  {:>6.1} / {:.1} MiB  {:>6.1} MiB/s",
                    done as f64 / 1048576.0,
                    total as f64 / 1048576.0,
                    done as f64 / 1048576.0 / secs
                );
                if done == total {
                    eprintln!();
                }
            }
        }
    }
}

/// `kobako cp SRC DST`: files and directories, host <-> VM.
pub async fn cp(src: &str, dst: &str) -> Result<i32> {
    match (parse_loc(src), parse_loc(dst)) {
        (Loc::Host(s), Loc::Guest { vm, path }) => {
            let c = connect(&vm).await?;
            let md = std::fs::metadata(&s).with_context(|| format!("{}", s.display()))?;
            let name = s
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let st = c.stat(&path).await?;
            // "DIR/" always means "into DIR", like cp(1).
            let target_is_dir = (st.exists && st.kind == FileKind::Dir) || path.ends_with('/');
            let target = if target_is_dir {
                join_guest(&path, &name)
            } else {
                path.clone()
            };
            if md.is_dir() {
                upload_dir(&c, &s, &target).await?;
            } else {
                upload_file(&c, &s, &target).await?;
            }
            Ok(0)
        }
        (Loc::Guest { vm, path }, Loc::Host(d)) => {
            let c = connect(&vm).await?;
            let info = c.stat(&path).await?;
            if !info.exists {
                bail!("{vm}:{path}: no such file or directory in the guest");
            }
            let name = Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "root".into());
            let target = if d.is_dir() { d.join(&name) } else { d.clone() };
            match info.kind {
                FileKind::Dir => {
                    let refused = download_dir(&c, &path, &target).await?;
                    if refused > 0 {
                        eprintln!(
                            "kobako cp: {refused} entries of {vm}:{path} were refused (named above); the rest is in {}",
                            target.display()
                        );
                        return Ok(1);
                    }
                }
                FileKind::Other => bail!(
                    "{vm}:{path}: a device node, fifo or socket; copy a regular file or a directory"
                ),
                FileKind::File | FileKind::Symlink => download_file(&c, &path, &target).await?,
            }
            Ok(0)
        }
        (Loc::Host(_), Loc::Host(_)) => {
            bail!("cp: one side must be VM:PATH (e.g. `kobako cp ./f demo:/tmp/`)")
        }
        (Loc::Guest { .. }, Loc::Guest { .. }) => {
            bail!("cp: copying between two VMs is not supported; copy through the host")
        }
    }
}

async fn upload_file(c: &AgentClient, src: &Path, dst: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let f = tokio::fs::File::open(src)
        .await
        .with_context(|| format!("{}", src.display()))?;
    let md = f.metadata().await?;
    let meter = Meter::new(md.len());
    let cb = meter.cb(md.len());
    c.put_file(
        tokio::io::BufReader::new(f),
        md.len(),
        dst,
        md.permissions().mode() & 0o7777,
        &cb,
    )
    .await?;
    Ok(())
}

async fn upload_dir(c: &AgentClient, src: &Path, dst: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(src)?.permissions().mode();
    c.mkdir(dst, mode, false).await?;
    let mut entries: Vec<_> = std::fs::read_dir(src)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let t = join_guest(dst, &e.file_name().to_string_lossy());
        let ft = e.file_type()?;
        if ft.is_dir() {
            Box::pin(upload_dir(c, &p, &t)).await?;
        } else if ft.is_file() {
            upload_file(c, &p, &t).await?;
        }
        // Symlinks and special files are skipped (as `docker cp` does for special files).
    }
    Ok(())
}

/// The most a download (one file or a whole directory) writes on the host.
pub const MAX_DOWNLOAD: u64 = 64 << 30;
/// The most entries a directory download creates.
pub const MAX_ENTRIES: usize = 100_000;

/// One file to `dst` (a host path the user named): through a temporary name created with
/// `O_EXCL|O_NOFOLLOW`, renamed into place when complete. Permission bits are the guest file's
/// without setuid, setgid and sticky.
async fn download_file(c: &AgentClient, src: &str, dst: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dst.with_file_name(format!(".{name}.kobako-part"));
    let _ = std::fs::remove_file(&tmp);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .with_context(|| format!("{}", dst.display()))?;
    let mine = f.try_clone()?;
    let size = c.stat(src).await.map(|i| i.size).unwrap_or(0);
    let meter = Meter::new(size);
    let cb = meter.cb(size);
    let r = c
        .get_file(
            src,
            MAX_DOWNLOAD,
            tokio::io::BufWriter::new(tokio::fs::File::from_std(f)),
            &cb,
        )
        .await;
    match r {
        Ok((_, _, info)) => {
            mine.set_permissions(std::fs::Permissions::from_mode(info.mode & 0o777))?;
            std::fs::rename(&tmp, dst)?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.into())
        }
    }
}

/// A listing path as a relative path of plain components, or why not. Guests list
/// '/'-separated paths relative to the listed directory.
/// The error names the entry and why it could leave the destination.
fn safe_rel(p: &str) -> std::result::Result<PathBuf, String> {
    let bad = |why: &str| Err(format!("{}: {why}", p.escape_debug()));
    if p.is_empty() || p.len() > 4096 {
        return bad("empty or over 4096 bytes");
    }
    if p.contains('\0') {
        return bad("contains NUL");
    }
    if p.starts_with('/') {
        return bad("absolute path");
    }
    let mut out = PathBuf::new();
    for c in p.split('/') {
        match c {
            "" | "." => return bad("empty or '.' component"),
            ".." => return bad("'..' component"),
            c if c.len() > 255 => return bad("component over 255 bytes"),
            c => out.push(c),
        }
    }
    Ok(out)
}

use kobako_image::inroot::openat2;

/// Never leave the destination, never follow a symlink (the guest made them all), never
/// cross into another mount.
const BENEATH: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// A directory download's destination: a directory fd every entry is created beneath.
struct Dest {
    root: std::os::fd::OwnedFd,
}

impl Dest {
    /// The parent directory of `rel` (opened beneath the root, symlinks refused) and the
    /// entry's own name.
    fn parent(&self, rel: &Path) -> std::io::Result<(std::os::fd::OwnedFd, std::ffi::CString)> {
        use std::os::fd::AsFd;
        use std::os::unix::ffi::OsStrExt;
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = openat2(
            self.root.as_fd(),
            parent.unwrap_or(Path::new(".")),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            BENEATH,
        )?;
        let name = rel.file_name().unwrap_or_default().as_bytes();
        let name = std::ffi::CString::new(name)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok((dir, name))
    }

    fn mkdir(&self, rel: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (dir, name) = self.parent(rel)?;
        // Owner rwx so the download can fill it; no setgid/sticky.
        let mode = (mode & 0o777) | 0o700;
        // SAFETY: valid dirfd and NUL-terminated name.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// A new regular file (an existing name, symlink or not, is an error: never written
    /// through).
    fn create(&self, rel: &Path) -> std::io::Result<std::fs::File> {
        use std::os::fd::AsFd;
        let (dir, _) = self.parent(rel)?;
        let fd = openat2(
            dir.as_fd(),
            Path::new(rel.file_name().unwrap_or_default()),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
            BENEATH,
        )?;
        Ok(std::fs::File::from(fd))
    }

    fn remove(&self, rel: &Path) {
        use std::os::fd::AsRawFd;
        if let Ok((dir, name)) = self.parent(rel) {
            // SAFETY: valid dirfd and NUL-terminated name.
            unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        }
    }

    /// The guest's symlink as a symlink (its target is never followed by this download).
    fn symlink(&self, rel: &Path, target: &str) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (dir, name) = self.parent(rel)?;
        let t = std::ffi::CString::new(target)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid dirfd and NUL-terminated strings.
        if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A guest directory into `dst` (created; it must not exist). Every entry of the guest's
/// listing is checked and created beneath `dst` through directory fds: names that could leave
/// it are refused, symlinks are recreated as symlinks and never followed, special files are
/// skipped, setuid/setgid/sticky bits are dropped, and the total is capped at `MAX_DOWNLOAD`
/// bytes and `MAX_ENTRIES` entries. Returns how many entries were refused (each named on
/// stderr).
async fn download_dir(c: &AgentClient, src: &str, dst: &Path) -> Result<usize> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dst).with_context(|| format!("{}", dst.display()))?;
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dst)
        .with_context(|| format!("{}", dst.display()))?;
    let dest = Dest { root: root.into() };
    let entries = c.list_dir(src).await?;
    if entries.len() > MAX_ENTRIES {
        bail!(
            "{src}: the guest lists {} entries, more than the {MAX_ENTRIES} a download creates; copy a smaller directory",
            entries.len()
        );
    }
    let mut budget = MAX_DOWNLOAD;
    let mut refused = 0;
    for e in entries {
        let rel = match safe_rel(&e.path) {
            Ok(r) => r,
            Err(why) => {
                eprintln!("kobako cp: refused a guest entry: {why}");
                refused += 1;
                continue;
            }
        };
        let local = dst.join(&rel);
        let remote = join_guest(src, &e.path);
        let r: Result<()> = match e.kind {
            FileKind::Dir => dest.mkdir(&rel, e.mode).map_err(Into::into),
            FileKind::File => match dest.create(&rel) {
                Err(err) => Err(err.into()),
                Ok(f) => {
                    // The permissions are set through the descriptor written: no path to swap.
                    let mine = f.try_clone();
                    let w = tokio::io::BufWriter::new(tokio::fs::File::from_std(f));
                    match (c.get_file(&remote, budget, w, &|_| {}).await, mine) {
                        (Ok((n, _, info)), Ok(mine)) => {
                            budget = budget.saturating_sub(n);
                            mine.set_permissions(std::fs::Permissions::from_mode(info.mode & 0o777))
                                .map_err(Into::into)
                        }
                        (Ok(_), Err(err)) => {
                            dest.remove(&rel);
                            Err(err.into())
                        }
                        (Err(err), _) => {
                            dest.remove(&rel);
                            Err(err.into())
                        }
                    }
                }
            },
            FileKind::Symlink => match &e.target {
                Some(t) => dest.symlink(&rel, t).map_err(Into::into),
                None => Ok(()),
            },
            FileKind::Other => {
                eprintln!(
                    "kobako cp: skipped {}: a device node, fifo or socket",
                    e.path.escape_debug()
                );
                Ok(())
            }
        };
        if let Err(err) = r {
            let why = match err
                .downcast_ref::<std::io::Error>()
                .and_then(|e| e.raw_os_error())
            {
                Some(libc::ELOOP) | Some(libc::EXDEV) => {
                    "it lies under a symlink or another mount (never followed)".to_string()
                }
                Some(libc::EEXIST) => "the name already exists (listed twice?)".to_string(),
                _ => format!("{err:#}"),
            };
            eprintln!(
                "kobako cp: refused {} ({}): {why}",
                e.path.escape_debug(),
                local.display()
            );
            refused += 1;
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_listing_names_that_could_leave_the_destination_are_refused() {
        assert_eq!(safe_rel("a/b").unwrap(), PathBuf::from("a/b"));
        let long = "x".repeat(256);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\0b",
            &long,
        ] {
            assert!(safe_rel(bad).is_err(), "{bad:?}");
        }
    }

    /// `d/link -> <outside>` then `d/link/passwd`: the file is refused, never written through.
    #[test]
    fn files_under_a_guest_symlink_are_never_written_through() {
        let out = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dst = out.path().join("x");
        std::fs::create_dir(&dst).unwrap();
        let dest = Dest {
            root: std::fs::File::open(&dst).unwrap().into(),
        };
        dest.mkdir(Path::new("d"), 0o7755).unwrap();
        dest.symlink(Path::new("d/link"), outside.path().to_str().unwrap())
            .unwrap();
        let e = dest.create(Path::new("d/link/passwd")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        // The link itself is a name that exists: never opened through.
        let e = dest.create(Path::new("d/link")).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ELOOP)),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(dst.join("d"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            m & 0o7777,
            0o755,
            "setgid/sticky of a guest directory are dropped"
        );
    }

    #[test]
    fn locations() {
        assert_eq!(
            parse_loc("demo:/tmp/x"),
            Loc::Guest {
                vm: "demo".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(parse_loc("./a:b"), Loc::Host("./a:b".into()));
        assert_eq!(parse_loc("/etc/hosts"), Loc::Host("/etc/hosts".into()));
    }
}
