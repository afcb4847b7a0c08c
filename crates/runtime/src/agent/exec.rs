//! Commands in the guest: [`AgentClient::exec`] runs one to completion and collects its
//! output (capped), [`AgentClient::exec_stream`] starts one as an [`ExecSession`] with streamed
//! stdin, output, resize and signals.

use kobako_agent::proto::{self, ExecRequest, Frame, Kind, Msg};

use super::output::{CappedBuf, ExecOutput};
use super::{agent_err, AgentClient, StreamRx};
use crate::{Result, RuntimeError};

impl AgentClient {
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

#[cfg(test)]
mod tests {
    use super::super::output::truncation_marker;
    use super::super::testkit::{data, lying_agent, msg};
    use super::*;

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
}
