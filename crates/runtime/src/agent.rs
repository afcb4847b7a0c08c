//! Async client of a VM's agent, through the supervisor's `agent.sock`.
//!
//! One connection carries any number of concurrent requests: each gets its own stream id; a
//! reader task routes incoming frames to the request that owns the stream. Stream-0 events
//! (Ready, ShuttingDown) are published on a watch (ready) and a broadcast channel (all events).
//!
//! The guest is untrusted: every buffer it fills here has a cap. A frame header announcing more
//! than [`proto::MAX_PAYLOAD`] closes the channel before anything is allocated; each request
//! has at most [`STREAM_BUDGET`] bytes queued (the reader waits for a slow consumer instead of
//! buffering a whole file); output collected in memory stops at [`AgentClient::max_output`]
//! bytes (the rest is counted, dropped and replaced by a marker); a download stops at the size
//! the guest announced and refuses a file larger than the caller's maximum.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kobako_agent::proto::{self, ExecRequest, Frame, Kind, Msg, ReadyInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

use crate::{Result, RuntimeError};

type Streams = Arc<Mutex<HashMap<u32, (mpsc::UnboundedSender<Frame>, Arc<Semaphore>)>>>;

/// Bytes a request may have queued and not yet taken before the reader waits for it (so a
/// slow consumer holds back the guest instead of buffering a whole file). Large enough that a
/// request writing its stdin before it reads never waits on its own output in practice.
pub const STREAM_BUDGET: usize = 32 << 20;

/// What a frame costs against [`STREAM_BUDGET`] at least (its bookkeeping): a flood of tiny
/// frames is bounded too.
const FRAME_COST: usize = 512;

fn cost(f: &Frame) -> usize {
    f.payload.len().max(FRAME_COST)
}

/// The receiving end of one request's frames; taking a frame returns its cost to the budget.
/// Dropping it closes the budget, so a reader waiting for room moves on.
struct StreamRx {
    rx: mpsc::UnboundedReceiver<Frame>,
    budget: Arc<Semaphore>,
}

impl StreamRx {
    async fn recv(&mut self) -> Option<Frame> {
        let f = self.rx.recv().await?;
        self.budget.add_permits(cost(&f));
        Some(f)
    }

    fn try_recv(&mut self) -> std::result::Result<Frame, mpsc::error::TryRecvError> {
        let f = self.rx.try_recv()?;
        self.budget.add_permits(cost(&f));
        Ok(f)
    }
}

impl Drop for StreamRx {
    fn drop(&mut self) {
        self.budget.close();
    }
}

/// What a regular file the guest announces with size 0 may still send: kernel pseudo-files
/// (`/proc/cpuinfo`, `/sys/...`) report 0 and have content.
pub const PSEUDO_FILE_MAX: u64 = 4 << 20;

/// Default cap of the output an `exec` collects in memory, per stream (stdout, stderr).
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

/// A connection to one VM's agent.
pub struct AgentClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    streams: Streams,
    next: AtomicU32,
    ready: watch::Receiver<Option<ReadyInfo>>,
    events: broadcast::Sender<Msg>,
    closed: watch::Receiver<bool>,
    max_output: usize,
}

/// The result of a finished `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Output was cut at the cap (the streams end with [`truncation_marker`]).
    pub truncated: bool,
}

/// The line that replaces output beyond a cap.
pub fn truncation_marker(kept: usize) -> String {
    format!("\n[kobako: output truncated after {kept} bytes]\n")
}

/// Output collected in memory up to a cap: bytes past it are counted and dropped, and the
/// buffer ends with [`truncation_marker`] once finished.
#[derive(Debug, Clone)]
pub struct CappedBuf {
    data: Vec<u8>,
    max: usize,
    dropped: u64,
}

impl CappedBuf {
    pub fn new(max: usize) -> CappedBuf {
        CappedBuf {
            data: Vec::new(),
            max,
            dropped: 0,
        }
    }

    pub fn push(&mut self, b: &[u8]) {
        let room = self.max.saturating_sub(self.data.len());
        let take = room.min(b.len());
        self.data.extend_from_slice(&b[..take]);
        self.dropped += (b.len() - take) as u64;
    }

    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }

    /// The bytes kept, with the marker appended when something was dropped.
    pub fn finish(mut self) -> Vec<u8> {
        if self.dropped > 0 {
            let m = truncation_marker(self.data.len());
            self.data.extend_from_slice(m.as_bytes());
        }
        self.data
    }
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
            RuntimeError::AgentGone(format!(
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
                    if let Some((tx, budget)) = tx {
                        // Waits while the request has STREAM_BUDGET bytes queued; fails at
                        // once when the request is gone (its budget closed).
                        if let Ok(p) = budget.acquire_many(cost(&f) as u32).await {
                            p.forget();
                            let _ = tx.send(f);
                        }
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
            max_output: DEFAULT_MAX_OUTPUT,
        })
    }

    /// Cap the output `exec` collects in memory (per stream), instead of [`DEFAULT_MAX_OUTPUT`].
    pub fn with_max_output(mut self, bytes: usize) -> AgentClient {
        self.max_output = bytes;
        self
    }

    /// The cap of the output `exec` collects in memory, per stream.
    pub fn max_output(&self) -> usize {
        self.max_output
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
                    RuntimeError::AgentGone(format!("the agent channel closed during the {what}"))
                }
                (true, None) => RuntimeError::AgentGone(format!("the agent channel closed ({e})")),
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
            Ok(None) => Err(RuntimeError::AgentGone(
                "the agent channel closed before the agent was ready".into(),
            )),
            Err(_) => Err(RuntimeError::Agent(format!(
                "no Ready from the agent within {} s",
                timeout.as_secs()
            ))),
        }
    }

    fn open_stream(&self) -> (u32, StreamRx) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(STREAM_BUDGET));
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (tx, budget.clone()));
        (id, StreamRx { rx, budget })
    }

    fn close_stream(&self, id: u32) {
        let gone = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some((_, budget)) = gone {
            budget.close();
        }
    }

    /// Run a command to completion and collect its output (each stream up to
    /// [`AgentClient::max_output`] bytes, then the truncation marker; the exit is still
    /// reported).
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutput> {
        let (id, mut rx) = self.open_stream();
        let r = async {
            self.send(&Frame::msg(id, &Msg::Exec(req))).await?;
            let mut stdout = CappedBuf::new(self.max_output);
            let mut stderr = CappedBuf::new(self.max_output);
            while let Some(f) = rx.recv().await {
                match f.kind {
                    Kind::Stdout => stdout.push(&f.payload),
                    Kind::Stderr => stderr.push(&f.payload),
                    Kind::Stdin => {}
                    Kind::Msg => match f.to_msg().map_err(agent_err)? {
                        Msg::Started { .. } => {}
                        Msg::Exited {
                            code,
                            signal,
                            timed_out,
                        } => {
                            return Ok(ExecOutput {
                                truncated: stdout.truncated() || stderr.truncated(),
                                stdout: stdout.finish(),
                                stderr: stderr.finish(),
                                code,
                                signal,
                                timed_out,
                            });
                        }
                        Msg::Error { message } => return Err(RuntimeError::Agent(message)),
                        _ => {}
                    },
                }
            }
            Err(RuntimeError::AgentGone(
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
    rx: StreamRx,
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
                return Err(RuntimeError::AgentGone(
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
            Err(RuntimeError::AgentGone(
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
            Err(RuntimeError::AgentGone(
                "the agent channel closed during the upload".into(),
            ))
        }
        .await;
        self.close_stream(id);
        r
    }

    /// Read `path` from the guest into `dst`; returns (size, SHA-256), both checked against the
    /// agent's own count. The guest must describe the file before its data; a file announced
    /// larger than `max` is refused before any byte is written, and data beyond the announced
    /// size ends the transfer with an error (the guest cannot make `dst` grow past it).
    pub async fn get_file(
        &self,
        path: &str,
        max: u64,
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
            let mut info: Option<proto::FileInfo> = None;
            while let Some(f) = rx.recv().await {
                match f.kind {
                    Kind::Stdout => {
                        let Some(i) = &info else {
                            return Err(agent_err(format!(
                                "{path}: the guest sent file data before describing the file"
                            )));
                        };
                        let n = f.payload.len() as u64;
                        let limit = if i.size == 0 && i.kind == proto::FileKind::File {
                            PSEUDO_FILE_MAX.min(max)
                        } else {
                            i.size
                        };
                        if got + n > limit {
                            return Err(agent_err(format!(
                                "{path}: the guest sent more than the {limit} bytes it announced; transfer stopped"
                            )));
                        }
                        h.update(&f.payload);
                        got += n;
                        dst.write_all(&f.payload).await.map_err(agent_err)?;
                        progress(got);
                    }
                    Kind::Msg => match f.to_msg().map_err(agent_err)? {
                        Msg::FileInfo(i) => {
                            if info.is_some() {
                                return Err(agent_err(format!(
                                    "{path}: the guest described the file twice"
                                )));
                            }
                            if i.size > max {
                                return Err(agent_err(format!(
                                    "{path}: the file has {} bytes, more than the {max} bytes this transfer allows",
                                    i.size
                                )));
                            }
                            info = Some(i);
                        }
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
            Err(RuntimeError::AgentGone(
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

    /// A fake agent on `agent.sock`: answers every request frame with `answer(request)`'s raw
    /// bytes (frames it encodes itself, so it can lie about anything).
    async fn lying_agent(
        answer: impl Fn(&Frame) -> Vec<u8> + Send + 'static,
    ) -> (tempfile::TempDir, AgentClient) {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            while let Ok(f) = read_frame(&mut s).await {
                if s.write_all(&answer(&f)).await.is_err() {
                    break;
                }
            }
            // Keep the connection open until the client goes.
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await;
        });
        let c = AgentClient::connect(&sock).await.unwrap();
        (d, c)
    }

    fn data(stream: u32, kind: Kind, n: usize) -> Vec<u8> {
        Frame {
            stream,
            kind,
            payload: vec![b'x'; n],
        }
        .encode()
    }

    fn msg(stream: u32, m: &Msg) -> Vec<u8> {
        Frame::msg(stream, m).encode()
    }

    fn file_info(size: u64) -> Msg {
        Msg::FileInfo(proto::FileInfo {
            exists: true,
            kind: proto::FileKind::File,
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
        })
    }

    #[tokio::test]
    async fn agent_announcing_a_4_gib_frame_gets_the_channel_closed() {
        let (_d, c) = lying_agent(|f| {
            let mut h = Vec::new();
            h.extend_from_slice(&u32::MAX.to_le_bytes());
            h.extend_from_slice(&f.stream.to_le_bytes());
            h.push(Kind::Stdout as u8);
            h
        })
        .await;
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            c.exec(ExecRequest {
                argv: vec!["x".into()],
                ..Default::default()
            }),
        )
        .await
        .expect("a 4 GiB header must end the request, not wait for 4 GiB")
        .unwrap_err()
        .to_string();
        assert!(e.contains("channel closed"), "{e}");
        tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn agent_flooding_exec_output_is_cut_at_the_cap_and_the_exit_code_kept() {
        let (_d, c) = lying_agent(|f| {
            let mut out = Vec::new();
            for _ in 0..3 {
                out.extend(data(f.stream, Kind::Stdout, proto::MAX_PAYLOAD));
            }
            out.extend(data(f.stream, Kind::Stderr, 10));
            out.extend(msg(
                f.stream,
                &Msg::Exited {
                    code: Some(7),
                    signal: None,
                    timed_out: false,
                },
            ));
            out
        })
        .await;
        let c = c.with_max_output(1 << 20);
        let o = c
            .exec(ExecRequest {
                argv: vec!["yes".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(o.status(), 7);
        assert!(o.truncated);
        let marker = truncation_marker(1 << 20);
        assert_eq!(o.stdout.len(), (1 << 20) + marker.len());
        assert!(o.stdout.ends_with(marker.as_bytes()));
        assert!(marker.contains("[kobako: output truncated after 1048576 bytes]"));
        assert_eq!(o.stderr, b"xxxxxxxxxx");
    }

    /// A guest sending 96 MiB to a request that does not read: the reader stops taking
    /// frames at the request's budget (the guest is held back, memory stays bounded), and the
    /// request still gets everything once it reads.
    #[tokio::test]
    async fn agent_flooding_a_request_that_does_not_read_is_held_back() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s2 = sent.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let f = read_frame(&mut s).await.unwrap();
            for _ in 0..96 {
                let b = data(f.stream, Kind::Stdout, proto::MAX_PAYLOAD);
                if s.write_all(&b).await.is_err() {
                    return;
                }
                s2.fetch_add(proto::MAX_PAYLOAD as u64, Ordering::Relaxed);
            }
            let e = msg(
                f.stream,
                &Msg::Exited {
                    code: Some(0),
                    signal: None,
                    timed_out: false,
                },
            );
            let _ = s.write_all(&e).await;
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await;
        });
        let c = AgentClient::connect(&sock).await.unwrap();
        let mut sess = c
            .exec_stream(ExecRequest {
                argv: vec!["cat".into(), "/dev/zero".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = sent.load(Ordering::Relaxed);
        eprintln!("taken from a guest nobody reads: {} MiB of 96", held >> 20);
        // The budget plus what the socket buffers hold.
        assert!(
            held <= (STREAM_BUDGET + (8 << 20)) as u64,
            "{held} bytes taken from a guest nobody reads"
        );
        let mut got = 0usize;
        while let Some(ev) = sess.next().await.unwrap() {
            if let ExecEvent::Stdout(b) = ev {
                got += b.len();
            }
        }
        assert_eq!(got, 96 * proto::MAX_PAYLOAD);
    }

    #[tokio::test]
    async fn agent_sending_more_than_it_announced_is_stopped_at_the_announced_size() {
        let (_d, c) = lying_agent(|f| {
            let mut out = msg(f.stream, &file_info(10));
            out.extend(data(f.stream, Kind::Stdout, 10));
            out.extend(data(f.stream, Kind::Stdout, proto::MAX_PAYLOAD));
            out
        })
        .await;
        let mut got = Vec::new();
        let e = c
            .get_file("/f", u64::MAX, &mut got, &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 10 bytes it announced"), "{e}");
        assert_eq!(got.len(), 10);
    }

    #[tokio::test]
    async fn agent_announcing_a_file_above_the_maximum_is_refused_before_writing() {
        let (_d, c) = lying_agent(|f| {
            let mut out = msg(f.stream, &file_info(1 << 40));
            out.extend(data(f.stream, Kind::Stdout, 100));
            out
        })
        .await;
        let mut got = Vec::new();
        let e = c
            .get_file("/f", 1 << 20, &mut got, &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 1048576 bytes"), "{e}");
        assert!(got.is_empty());
    }

    /// `/proc/cpuinfo` says 0 bytes and has some; `/dev/zero` (not a regular file) says 0 and
    /// has no end.
    #[tokio::test]
    async fn files_announced_empty_send_at_most_the_pseudo_file_cap() {
        let (_d, c) = lying_agent(|f| {
            let mut out = msg(f.stream, &file_info(0));
            out.extend(data(f.stream, Kind::Stdout, 1000));
            out.extend(data(f.stream, Kind::Stdout, 0));
            let sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(vec![b'x'; 1000]))
            };
            out.extend(msg(
                f.stream,
                &Msg::Done {
                    sha256: Some(sha),
                    size: Some(1000),
                },
            ));
            out
        })
        .await;
        let mut got = Vec::new();
        c.get_file("/proc/cpuinfo", u64::MAX, &mut got, &|_| {})
            .await
            .unwrap();
        assert_eq!(got.len(), 1000);
        let (_d, c) = lying_agent(|f| {
            let mut out = msg(
                f.stream,
                &Msg::FileInfo(proto::FileInfo {
                    exists: true,
                    kind: proto::FileKind::Other,
                    size: 0,
                    mode: 0o666,
                    uid: 0,
                    gid: 0,
                }),
            );
            for _ in 0..8 {
                out.extend(data(f.stream, Kind::Stdout, proto::MAX_PAYLOAD));
            }
            out
        })
        .await;
        let mut got = Vec::new();
        let e = c
            .get_file("/dev/zero", u64::MAX, &mut got, &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 0 bytes"), "{e}");
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn agent_sending_data_before_describing_the_file_is_refused() {
        let (_d, c) = lying_agent(|f| data(f.stream, Kind::Stdout, 100)).await;
        let mut got = Vec::new();
        let e = c
            .get_file("/f", u64::MAX, &mut got, &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("before describing the file"), "{e}");
        assert!(got.is_empty());
    }

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
            .get_file("/etc/hostname", u64::MAX, tokio::io::sink(), &|_| {})
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
