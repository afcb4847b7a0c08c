//! Small requests to the agent, one request and one answer each (through `call`): file
//! metadata and directories, network configuration, a restored guest's identity, services and
//! their logs, and shutdown.

use kobako_agent::proto::{self, Frame, Msg};

use super::{agent_err, AgentClient};
use crate::Result;

/// What an agent too old for readiness probes means, and the fix.
pub const OLD_AGENT_PROBE: &str = "the guest agent is older than this kobako and cannot run readiness checks: \
rebuild the VM's image (`kobako image build NAME`; tiny images are rebuilt automatically) and start the VM again";

impl AgentClient {
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

    /// Runs a readiness check in the guest (see [`proto::Probe`]): whether it passed and what
    /// the agent saw. An agent built before probes existed answers that it does not know the
    /// message: that is an error naming the fix (rebuild the image), never a wait.
    pub async fn probe(&self, probe: proto::Probe) -> Result<(bool, String)> {
        match self.call(Msg::Probe(probe)).await {
            Ok(Msg::ProbeResult { ok, detail }) => Ok((ok, detail)),
            Ok(m) => Err(agent_err(format!("unexpected answer {m:?}"))),
            Err(crate::RuntimeError::Agent(m)) if m.contains("unknown variant `probe`") => {
                Err(agent_err(OLD_AGENT_PROBE))
            }
            Err(e) => Err(e),
        }
    }

    /// Mounts shared directory `tag` read-only at `path` in the guest. An agent built before
    /// shares existed says it does not know the message: an error naming the fix.
    pub async fn mount(&self, tag: &str, path: &str) -> Result<()> {
        let m = proto::Mount {
            tag: tag.into(),
            path: path.into(),
        };
        match self.call(Msg::Mount(m)).await {
            Ok(_) => Ok(()),
            Err(crate::RuntimeError::Agent(m)) if m.contains("unknown variant `mount`") => {
                Err(agent_err(
                    "this image's kobako-agent predates shared directories: rebuild the image \
                     (`kobako image tiny`, or `kobako image build NAME`; recipes rebuild by \
                     themselves at the next `up`)",
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Ask the guest to power off (or reboot). Returns once the request is sent.
    pub async fn shutdown(&self, reboot: bool) -> Result<()> {
        let (id, _rx) = self.open_stream();
        let r = self.send(&Frame::msg(id, &Msg::Shutdown { reboot })).await;
        self.close_stream(id);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{lying_agent, msg};
    use super::*;

    /// An agent of before probes: its `Msg` has no `probe`, so decoding the request fails and
    /// it answers `Error` with serde's words, as the real agent's frame handler does.
    #[tokio::test]
    async fn an_agent_without_probes_gets_an_error_naming_the_fix() {
        #[derive(serde::Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        #[allow(dead_code)]
        enum OldMsg {
            Hello { version: u32 },
            ServiceStatus,
        }
        let (_d, c) = lying_agent(|f| {
            let e = serde_json::from_slice::<OldMsg>(&f.payload).err().unwrap();
            let message = proto::ProtoError::BadMessage(e.to_string()).to_string();
            msg(f.stream, &Msg::Error { message })
        })
        .await;
        let probe = proto::Probe {
            check: proto::ProbeCheck::Tcp(6379),
            timeout_ms: 500,
        };
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), c.probe(probe))
            .await
            .expect("no hang")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rebuild the VM's image"), "{e}");
    }

    #[tokio::test]
    async fn a_probe_result_is_passed_on() {
        let (_d, c) = lying_agent(|f| {
            msg(
                f.stream,
                &Msg::ProbeResult {
                    ok: false,
                    detail: "connection refused".into(),
                },
            )
        })
        .await;
        let probe = proto::Probe {
            check: proto::ProbeCheck::Http("http://localhost/".into()),
            timeout_ms: 500,
        };
        assert_eq!(
            c.probe(probe).await.unwrap(),
            (false, "connection refused".to_string())
        );
    }
}
