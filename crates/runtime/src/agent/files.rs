//! File transfers with the guest: [`AgentClient::put_file`] and [`AgentClient::get_file`],
//! checked by SHA-256, with progress reports; a download stops at the size the guest announced
//! and refuses a file above the caller's maximum ([`PSEUDO_FILE_MAX`] for files announced
//! empty).

use kobako_agent::proto::{self, Frame, Kind, Msg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{agent_err, AgentClient};
use crate::{Result, RuntimeError};

/// What a regular file the guest announces with size 0 may still send: kernel pseudo-files
/// (`/proc/cpuinfo`, `/sys/...`) report 0 and have content.
pub const PSEUDO_FILE_MAX: u64 = 4 << 20;

/// Progress callback for transfers: bytes done so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

impl AgentClient {
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
    use std::time::Duration;

    use super::super::testkit::{data, file_info, lying_agent, msg};
    use super::*;

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
