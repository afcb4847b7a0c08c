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
    let name = &crate::lab_cmd::vm_name(name)?;
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
            if info.kind == FileKind::Dir {
                download_dir(&c, &path, &target).await?;
            } else {
                download_file(&c, &path, &target, info.mode).await?;
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

async fn download_file(c: &AgentClient, src: &str, dst: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dst.with_file_name(format!(".{name}.kobako-part"));
    let f = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("{}", dst.display()))?;
    let size = c.stat(src).await.map(|i| i.size).unwrap_or(0);
    let meter = Meter::new(size);
    let cb = meter.cb(size);
    let r = c.get_file(src, tokio::io::BufWriter::new(f), &cb).await;
    match r {
        Ok(_) => {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&tmp, dst)?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.into())
        }
    }
}

async fn download_dir(c: &AgentClient, src: &str, dst: &Path) -> Result<()> {
    std::fs::create_dir(dst).with_context(|| format!("{}", dst.display()))?;
    for e in c.list_dir(src).await? {
        let local = dst.join(&e.path);
        let remote = join_guest(src, &e.path);
        match e.kind {
            FileKind::Dir => std::fs::create_dir_all(&local)?,
            FileKind::File => download_file(c, &remote, &local, e.mode).await?,
            FileKind::Symlink => {
                if let Some(t) = &e.target {
                    let _ = std::os::unix::fs::symlink(t, &local);
                }
            }
            FileKind::Other => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
