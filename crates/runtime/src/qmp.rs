//! A minimal QMP client (QEMU Machine Protocol, docs/interop/qmp-spec.rst): line-delimited JSON
//! over the VM's `qmp.sock`. QEMU serves one QMP client at a time, so callers connect per
//! operation and drop the connection right after.

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{Result, RuntimeError};

pub struct Qmp {
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

fn qerr(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Qmp(e.to_string())
}

impl Qmp {
    /// Connect, read the greeting and enter command mode.
    pub async fn connect(sock: &Path) -> Result<Qmp> {
        let s = UnixStream::connect(sock)
            .await
            .map_err(|e| qerr(format!("connect {}: {e}", sock.display())))?;
        let (rd, wr) = s.into_split();
        let mut q = Qmp {
            rd: BufReader::new(rd),
            wr,
        };
        let greeting = q.read_msg().await?;
        if greeting.get("QMP").is_none() {
            return Err(qerr(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_msg(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self.rd.read_line(&mut line).await.map_err(qerr)?;
        if n == 0 {
            return Err(qerr("QEMU closed the QMP connection"));
        }
        serde_json::from_str(&line).map_err(qerr)
    }

    /// Run a command; returns its "return" value. Asynchronous events in between are skipped.
    pub async fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        let mut req = json!({ "execute": cmd });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        let mut line = req.to_string();
        line.push('\n');
        self.wr.write_all(line.as_bytes()).await.map_err(qerr)?;
        loop {
            let m = self.read_msg().await?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(qerr(format!(
                    "{cmd}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("error")
                )));
            }
            // {"event": ...}: not ours.
        }
    }
}
