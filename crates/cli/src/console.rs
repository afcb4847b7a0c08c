//! Attaching the terminal to a VM's serial console socket.
//!
//! Escape sequence (when stdin is a terminal): `Ctrl-]` then `d` detaches (the VM keeps running),
//! `Ctrl-]` then `q` stops the VM, `Ctrl-]` twice sends one `Ctrl-]`. When stdin is not a terminal
//! its bytes are forwarded as they are (scripts can type into the console) and its end is ignored.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const ESCAPE: u8 = 0x1d; // Ctrl-]

/// Why the console session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEnd {
    /// The console socket closed (the VM ended).
    Closed,
    /// The user asked to detach.
    Detach,
    /// The user asked to stop the VM.
    Stop,
}

/// Puts stdin's terminal in raw mode (when it is one) and restores it on drop.
pub struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    pub fn enable() -> RawMode {
        if !std::io::stdin().is_terminal() {
            return RawMode { saved: None };
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0, which is a terminal.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode { saved: Some(saved) }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restoring the attributes read from the same terminal.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

pub fn hint() -> &'static str {
    "console attached: Ctrl-] d detaches, Ctrl-] q stops the VM"
}

/// Run a console session until the VM ends or the user detaches/stops. `ended` resolving also
/// ends the session (used when the VM is known to have stopped).
pub async fn attach(
    socket: &Path,
    ended: impl std::future::Future<Output = ()>,
) -> Result<ConsoleEnd> {
    let s = kobako_runtime::sock::connect_tokio(socket).with_context(|| {
        format!(
            "cannot attach to the console at {} (is another console attached?)",
            socket.display()
        )
    })?;
    let (mut rd, mut wr) = s.into_split();
    let interactive = std::io::stdin().is_terminal();
    let _raw = RawMode::enable();

    // stdin -> console, with escape handling. Blocking reads on a dedicated thread: tokio's stdin
    // cannot be cancelled, and a parked read must not keep the runtime alive.
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let writer = async move {
        let mut escaped = false;
        while let Some(chunk) = in_rx.recv().await {
            let mut out = Vec::with_capacity(chunk.len());
            for b in chunk {
                if !interactive {
                    out.push(b);
                } else if escaped {
                    escaped = false;
                    match b {
                        b'd' | b'D' => return ConsoleEnd::Detach,
                        b'q' | b'Q' => return ConsoleEnd::Stop,
                        ESCAPE => out.push(ESCAPE),
                        _ => {}
                    }
                } else if b == ESCAPE {
                    escaped = true;
                } else {
                    out.push(b);
                }
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
        }
        // stdin ended (or the socket refused input): keep the session, the VM may still print.
        std::future::pending::<ConsoleEnd>().await
    };
    let reader = async move {
        let mut out = tokio::io::stdout();
        let mut buf = vec![0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let _ = out.flush().await;
                }
            }
        }
    };
    tokio::select! {
        _ = reader => Ok(ConsoleEnd::Closed),
        _ = ended => Ok(ConsoleEnd::Closed),
        end = writer => Ok(end),
    }
}
