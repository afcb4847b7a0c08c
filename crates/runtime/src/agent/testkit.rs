//! Test helpers for the agent client: a fake agent that answers with raw bytes it encodes
//! itself (so it can lie about anything), and frame builders.

use kobako_agent::proto::{self, Frame, Kind, Msg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{read_frame, AgentClient};

/// A fake agent on `agent.sock`: answers every request frame with `answer(request)`'s raw
/// bytes (frames it encodes itself, so it can lie about anything).
pub(super) async fn lying_agent(
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

pub(super) fn data(stream: u32, kind: Kind, n: usize) -> Vec<u8> {
    Frame {
        stream,
        kind,
        payload: vec![b'x'; n],
    }
    .encode()
}

pub(super) fn msg(stream: u32, m: &Msg) -> Vec<u8> {
    Frame::msg(stream, m).encode()
}

pub(super) fn file_info(size: u64) -> Msg {
    Msg::FileInfo(proto::FileInfo {
        exists: true,
        kind: proto::FileKind::File,
        size,
        mode: 0o644,
        uid: 0,
        gid: 0,
    })
}
