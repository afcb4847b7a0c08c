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
//!
//! This module is the wire client: the connection, its reader task, the per-request streams
//! and their budget, Ready and the stream-0 events, and the one-request-one-answer `call`. The
//! operations built on it live in the submodules: [`exec`] (commands, collected or streamed),
//! [`output`] (capped output buffers), [`requests`] (small requests: stat, mkdir, network,
//! identity, services, shutdown) and [`files`] (file transfers).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kobako_agent::proto::{self, Frame, Kind, Msg, ReadyInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

use crate::{Result, RuntimeError};

pub mod exec;
pub mod files;
pub mod output;
pub mod requests;
#[cfg(test)]
mod testkit;

pub use exec::{ExecEvent, ExecSession};
pub use files::{Progress, PSEUDO_FILE_MAX};
pub use output::{truncation_marker, CappedBuf, ExecOutput};

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
}

#[cfg(test)]
mod tests {
    use super::testkit::{data, lying_agent, msg};
    use super::*;
    use kobako_agent::proto::ExecRequest;

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
}
