//! Async client of a VM's agent, through the supervisor's `agent.sock`.
//!
//! One connection carries any number of concurrent requests: each gets its own stream id; a
//! reader task routes incoming frames to the request that owns the stream. Stream-0 events
//! (Ready, ShuttingDown) are published on a watch (ready) and a broadcast channel (all events).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kobako_agent::proto::{self, ExecRequest, Frame, Kind, Msg, ReadyInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch};

use crate::{Result, RuntimeError};

type Streams = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>>;

/// A connection to one VM's agent.
pub struct AgentClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    streams: Streams,
    next: AtomicU32,
    ready: watch::Receiver<Option<ReadyInfo>>,
    events: broadcast::Sender<Msg>,
    closed: watch::Receiver<bool>,
}

/// The result of a finished `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

impl ExecOutput {
    /// The exit status a shell would report: the code, or 128 + signal.
    pub fn status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn agent_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Agent(e.to_string())
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Result<Frame, proto::ProtoError> {
    let mut h = [0u8; proto::HEADER_LEN];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(proto::ProtoError::Closed)
        }
        Err(e) => return Err(proto::ProtoError::Io(e)),
    }
    let (len, stream, kind) = proto::parse_header(&h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(proto::ProtoError::Io)?;
    Ok(Frame {
        stream,
        kind,
        payload,
    })
}

impl AgentClient {
    /// Connect to `agent.sock` of a VM.
    pub async fn connect(sock: &Path) -> Result<AgentClient> {
        let s = UnixStream::connect(sock).await.map_err(|e| {
            RuntimeError::Agent(format!(
                "cannot reach the agent at {} ({e}); is the VM running?",
                sock.display()
            ))
        })?;
        let (mut rd, wr) = s.into_split();
        let streams: Streams = Arc::new(Mutex::new(HashMap::new()));
        let (ready_tx, ready_rx) = watch::channel(None);
        let (events_tx, _) = broadcast::channel(16);
        let (closed_tx, closed_rx) = watch::channel(false);
        {
            let streams = streams.clone();
            let events_tx = events_tx.clone();
            tokio::spawn(async move {
                while let Ok(f) = read_frame(&mut rd).await {
                    if f.stream == 0 {
                        if let Ok(m) = f.to_msg() {
                            if let Msg::Ready(info) = &m {
                                let _ = ready_tx.send(Some(info.clone()));
                            }
                            let _ = events_tx.send(m);
                        }
                        continue;
                    }
                    let tx = streams
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&f.stream)
                        .cloned();
                    if let Some(tx) = tx {
                        let _ = tx.send(f);
                    }
                }
                // Channel closed: wake every pending request (dropping senders ends their loops).
                streams.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let _ = closed_tx.send(true);
            });
        }
        Ok(AgentClient {
            writer: tokio::sync::Mutex::new(wr),
            streams,
            next: AtomicU32::new(1),
            ready: ready_rx,
            events: events_tx,
            closed: closed_rx,
        })
    }

    async fn send(&self, f: &Frame) -> Result<()> {
        self.write(f, None).await
    }

    /// `send` for a transfer: a closed channel is named with the transfer it cut.
    async fn send_in(&self, f: &Frame, what: &str) -> Result<()> {
        self.write(f, Some(what)).await
    }

    async fn write(&self, f: &Frame, during: Option<&str>) -> Result<()> {
        let mut w = self.writer.lock().await;
        w.write_all(&f.encode()).await.map_err(|e| {
            use std::io::ErrorKind::*;
            // The other end is gone: the VM stopped (or was killed) or its supervisor ended.
            let closed = matches!(
                e.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected
            );
            match (closed, during) {
                (true, Some(what)) => {
                    RuntimeError::Agent(format!("the agent channel closed during the {what}"))
                }
                (true, None) => RuntimeError::Agent(format!("the agent channel closed ({e})")),
                (false, _) => agent_err(e),
            }
        })
    }

    /// Events on stream 0 from now on (Ready, ShuttingDown).
    pub fn events(&self) -> broadcast::Receiver<Msg> {
        self.events.subscribe()
    }

    /// Resolves when the channel to the VM closed (the VM ended or the supervisor went away).
    pub async fn closed(&self) {
        let mut c = self.closed.clone();
        let _ = c.wait_for(|c| *c).await;
    }

    /// Wait until the agent has reported Ready (sends Hello so an already-ready agent answers).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ReadyInfo> {
        self.send(&Frame::msg(
            0,
            &Msg::Hello {
                version: proto::VERSION,
            },
        ))
        .await?;
        let mut rx = self.ready.clone();
        let mut closed = self.closed.clone();
        let wait = async {
            tokio::select! {
                r = rx.wait_for(|r| r.is_some()) => r.map(|r| r.clone()).ok().flatten(),
                _ = closed.wait_for(|c| *c) => None,
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(info)) => {
                if info.version != proto::VERSION {
                    return Err(RuntimeError::Agent(format!(
                        "agent speaks protocol v{}, this kobako speaks v{}: rebuild the image",
                        info.version,
                        proto::VERSION
                    )));
                }
                Ok(info)
            }
            Ok(None) => Err(RuntimeError::Agent(
                "the agent channel closed before the agent was ready".into(),
            )),
            Err(_) => Err(RuntimeError::Agent(format!(
                "no Ready from the agent within {} s",
                timeout.as_secs()
            ))),
        }
    }

    fn open_stream(&self) -> (u32, mpsc::UnboundedReceiver<Frame>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        (id, rx)
    }

    fn close_stream(&self, id: u32) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Run a command to completion and collect its output.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutput> {
        let (id, mut rx) = self.open_stream();
        let r = async {
            self.send(&Frame::msg(id, &Msg::Exec(req))).await?;
            let mut out = ExecOutput::default();
            while let Some(f) = rx.recv().await {
                match f.kind {
                    Kind::Stdout => out.stdout.extend_from_slice(&f.payload),
                    Kind::Stderr => out.stderr.extend_from_slice(&f.payload),
                    Kind::Stdin => {}
                    Kind::Msg => match f.to_msg().map_err(agent_err)? {
                        Msg::Started { .. } => {}
                        Msg::Exited {
                            code,
                            signal,
                            timed_out,
                        } => {
                            out.code = code;
                            out.signal = signal;
                            out.timed_out = timed_out;
                            return Ok(out);
                        }
                        Msg::Error { message } => return Err(RuntimeError::Agent(message)),
                        _ => {}
                    },
                }
            }
            Err(RuntimeError::Agent(
                "the agent channel closed while the command ran (VM stopped?)".into(),
            ))
        }
        .await;
        self.close_stream(id);
        r
    }

    /// Ask the guest to power off (or reboot). Returns once the request is sent.
    pub async fn shutdown(&self, reboot: bool) -> Result<()> {
        let (id, _rx) = self.open_stream();
        let r = self.send(&Frame::msg(id, &Msg::Shutdown { reboot })).await;
        self.close_stream(id);
        r
    }
}

/// What a running exec produces.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
}

/// A running command with streamed input and output.
pub struct ExecSession<'a> {
    client: &'a AgentClient,
    id: u32,
    rx: mpsc::UnboundedReceiver<Frame>,
    finished: bool,
}

impl ExecSession<'_> {
    /// The next output chunk or the exit. `None` once the exit was returned.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let Some(f) = self.rx.recv().await else {
                self.finished = true;
                return Err(RuntimeError::Agent(
                    "the agent channel closed while the command ran (VM stopped?)".into(),
                ));
            };
            match f.kind {
                Kind::Stdout if !f.payload.is_empty() => {
                    return Ok(Some(ExecEvent::Stdout(f.payload)))
                }
                Kind::Stderr if !f.payload.is_empty() => {
                    return Ok(Some(ExecEvent::Stderr(f.payload)))
                }
                Kind::Msg => match f.to_msg().map_err(agent_err)? {
                    Msg::Exited {
                        code,
                        signal,
                        timed_out,
                    } => {
                        self.finished = true;
                        return Ok(Some(ExecEvent::Exited {
                            code,
                            signal,
                            timed_out,
                        }));
                    }
                    Msg::Error { message } => {
                        self.finished = true;
                        return Err(RuntimeError::Agent(message));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    pub async fn stdin(&self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(proto::MAX_PAYLOAD) {
            self.client
                .send(&Frame {
                    stream: self.id,
                    kind: Kind::Stdin,
                    payload: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> Result<()> {
        self.client
            .send(&Frame {
                stream: self.id,
                kind: Kind::Stdin,
                payload: Vec::new(),
            })
            .await
    }

    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.client
            .send(&Frame::msg(self.id, &Msg::Resize { rows, cols }))
            .await
    }

    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.client
            .send(&Frame::msg(self.id, &Msg::Signal { signal }))
            .await
    }
}

impl Drop for ExecSession<'_> {
    fn drop(&mut self) {
        self.client.close_stream(self.id);
    }
}

/// Progress callback for transfers: bytes done so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

impl AgentClient {
    /// Start a command and stream its input/output.
    pub async fn exec_stream(&self, req: ExecRequest) -> Result<ExecSession<'_>> {
        let (id, rx) = self.open_stream();
        let s = ExecSession {
            client: self,
            id,
            rx,
            finished: false,
        };
        self.send(&Frame::msg(id, &Msg::Exec(req))).await?;
        Ok(s)
    }

    /// One request, one answer (for small requests).
    async fn call(&self, msg: Msg) -> Result<Msg> {
        let (id, mut rx) = self.open_stream();
        let r = async {
            self.send(&Frame::msg(id, &msg)).await?;
            while let Some(f) = rx.recv().await {
                if f.kind == Kind::Msg {
                    return match f.to_msg().map_err(agent_err)? {
                        Msg::Error { message } => Err(RuntimeError::Agent(message)),
                        m => Ok(m),
                    };
                }
            }
            Err(RuntimeError::Agent(
                "the agent channel closed before the answer".into(),
            ))
        }
        .await;
        self.close_stream(id);
        r
    }

    pub async fn stat(&self, path: &str) -> Result<proto::FileInfo> {
        match self.call(Msg::Stat { path: path.into() }).await? {
            Msg::FileInfo(i) => Ok(i),
            m => Err(agent_err(format!("unexpected answer {m:?}"))),
        }
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<proto::DirEntry>> {
        match self.call(Msg::ListDir { path: path.into() }).await? {
            Msg::Entries { entries } => Ok(entries),
            m => Err(agent_err(format!("unexpected answer {m:?}"))),
        }
    }

    pub async fn mkdir(&self, path: &str, mode: u32, parents: bool) -> Result<()> {
        self.call(Msg::Mkdir {
            path: path.into(),
            mode,
            parents,
        })
        .await
        .map(|_| ())
    }

    pub async fn net_config(&self, cfg: proto::NetConfig) -> Result<()> {
        self.call(Msg::NetConfig(cfg)).await.map(|_| ())
    }

    /// Gives a restored guest its own identity (RNG, clock, MACs, hostname, machine-id).
    pub async fn identity(&self, id: proto::Identity) -> Result<()> {
        self.call(Msg::Identity(id)).await.map(|_| ())
    }

    pub async fn set_services(&self, services: Vec<proto::ServiceSpec>) -> Result<()> {
        self.call(Msg::SetServices { services }).await.map(|_| ())
    }

    pub async fn service_status(&self) -> Result<Vec<proto::ServiceState>> {
        match self.call(Msg::ServiceStatus).await? {
            Msg::Services { services } => Ok(services),
            m => Err(agent_err(format!("unexpected answer {m:?}"))),
        }
    }

    pub async fn service_logs(&self, name: &str, tail_bytes: u64) -> Result<String> {
        match self
            .call(Msg::ServiceLogs {
                name: name.into(),
                tail_bytes,
            })
            .await?
        {
            Msg::Logs { data } => Ok(data),
            m => Err(agent_err(format!("unexpected answer {m:?}"))),
        }
    }

    /// Write `src` (of `size` bytes) to `path` in the guest; verified by SHA-256 on arrival.
    /// Returns the checksum.
    pub async fn put_file(
        &self,
        mut src: impl tokio::io::AsyncRead + Unpin,
        size: u64,
        path: &str,
        mode: u32,
        progress: Progress<'_>,
    ) -> Result<String> {
        use sha2::Digest;
        let (id, mut rx) = self.open_stream();
        let r = async {
            self.send_in(
                &Frame::msg(
                    id,
                    &Msg::PutFile(proto::PutFile {
                        path: path.into(),
                        mode,
                        uid: None,
                        gid: None,
                        size,
                    }),
                ),
                "upload",
            )
            .await?;
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut sent = 0u64;
            loop {
                // An early error from the agent (missing directory, full disk) stops the upload.
                if let Ok(f) = rx.try_recv() {
                    if let Ok(Msg::Error { message }) = f.to_msg() {
                        return Err(RuntimeError::Agent(message));
                    }
                }
                let n = src.read(&mut buf).await.map_err(agent_err)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                self.send_in(
                    &Frame {
                        stream: id,
                        kind: Kind::Stdin,
                        payload: buf[..n].to_vec(),
                    },
                    "upload",
                )
                .await?;
                sent += n as u64;
                progress(sent);
            }
            let sha = hex::encode(h.finalize());
            self.send_in(
                &Frame::msg(
                    id,
                    &Msg::PutEnd {
                        sha256: sha.clone(),
                    },
                ),
                "upload",
            )
            .await?;
            while let Some(f) = rx.recv().await {
                match f.to_msg() {
                    Ok(Msg::Done { .. }) => return Ok(sha),
                    Ok(Msg::Error { message }) => return Err(RuntimeError::Agent(message)),
                    _ => {}
                }
            }
            Err(RuntimeError::Agent(
                "the agent channel closed during the upload".into(),
            ))
        }
        .await;
        self.close_stream(id);
        r
    }

    /// Read `path` from the guest into `dst`; returns (size, SHA-256), both checked against the
    /// agent's own count.
    pub async fn get_file(
        &self,
        path: &str,
        mut dst: impl tokio::io::AsyncWrite + Unpin,
        progress: Progress<'_>,
    ) -> Result<(u64, String, proto::FileInfo)> {
        use sha2::Digest;
        let (id, mut rx) = self.open_stream();
        let r = async {
            self.send_in(&Frame::msg(id, &Msg::GetFile { path: path.into() }), "download")
                .await?;
            let mut h = sha2::Sha256::new();
            let mut got = 0u64;
            let mut info = None;
            while let Some(f) = rx.recv().await {
                match f.kind {
                    Kind::Stdout => {
                        h.update(&f.payload);
                        got += f.payload.len() as u64;
                        dst.write_all(&f.payload).await.map_err(agent_err)?;
                        progress(got);
                    }
                    Kind::Msg => match f.to_msg().map_err(agent_err)? {
                        Msg::FileInfo(i) => info = Some(i),
                        Msg::Done { sha256, size } => {
                            dst.flush().await.map_err(agent_err)?;
                            let mine = hex::encode(h.finalize());
                            if sha256.as_deref() != Some(mine.as_str()) || size != Some(got) {
                                return Err(RuntimeError::Agent(format!(
                                    "{path}: transfer corrupted (guest sent {size:?} bytes / {sha256:?}, received {got} / {mine})"
                                )));
                            }
                            let info = info.ok_or_else(|| agent_err("no file info"))?;
                            return Ok((got, mine, info));
                        }
                        Msg::Error { message } => return Err(RuntimeError::Agent(message)),
                        _ => {}
                    },
                    _ => {}
                }
            }
            Err(RuntimeError::Agent(
                "the agent channel closed during the download".into(),
            ))
        }
        .await;
        self.close_stream(id);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM killed between two requests: the next transfer says the channel closed during it
    /// (not a bare "Broken pipe").
    #[tokio::test]
    async fn transfers_on_a_closed_channel_say_so() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let accept = tokio::spawn(async move { drop(l.accept().await.unwrap()) });
        let c = AgentClient::connect(&sock).await.unwrap();
        accept.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .unwrap();
        let e = c
            .get_file("/etc/hostname", tokio::io::sink(), &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the agent channel closed during the download"),
            "{e}"
        );
        let e = c
            .put_file(&b"data"[..], 4, "/tmp/x", 0o644, &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the agent channel closed during the upload"),
            "{e}"
        );
    }
}
