//! Small requests to the agent, one request and one answer each (through `call`): file
//! metadata and directories, network configuration, a restored guest's identity, services and
//! their logs, and shutdown.

use kobako_agent::proto::{self, Frame, Msg};

use super::{agent_err, AgentClient};
use crate::Result;

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

    /// Ask the guest to power off (or reboot). Returns once the request is sent.
    pub async fn shutdown(&self, reboot: bool) -> Result<()> {
        let (id, _rx) = self.open_stream();
        let r = self.send(&Frame::msg(id, &Msg::Shutdown { reboot })).await;
        self.close_stream(id);
        r
    }
}
