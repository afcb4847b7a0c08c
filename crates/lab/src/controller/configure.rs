//! Configuring a booted lab VM through its agent: addresses, routes, hosts, shared directories,
//! files and services, in that order (services may read everything before them).

use kobako_agent::proto::{self, IfaceConfig, NetConfig, RouteConfig, ServiceSpec};
use kobako_runtime::agent::AgentClient;

use crate::spec::{FileSource, Vm};

/// What the agent applies in a VM.
fn guest_config(vm: &Vm) -> (NetConfig, Vec<ServiceSpec>) {
    let mut cfg = NetConfig {
        hostname: Some(kobako_runtime::config::hostname_of(&format!(
            "{}-{}",
            vm.id.node.as_str(),
            vm.id.vm.as_str()
        ))),
        ..Default::default()
    };
    let mut default_set = false;
    for i in &vm.interfaces {
        cfg.interfaces.push(IfaceConfig {
            name: String::new(),
            mac: Some(i.mac.to_string()),
            rename: Some(i.name.as_str().to_string()),
            addresses: i.addresses.iter().map(|c| c.to_string()).collect(),
            mtu: Some(i.mtu),
            up: true,
        });
        if let (Some(gw), false, false) = (i.gateway, i.no_gateway, default_set) {
            // The interface's own address is never its gateway (the router itself).
            if !i.addresses.iter().any(|a| a.addr == gw) {
                cfg.routes.push(RouteConfig {
                    dst: "default".into(),
                    via: Some(gw.to_string()),
                    dev: Some(i.name.as_str().to_string()),
                    metric: None,
                });
                default_set = true;
            }
        }
    }
    for r in &vm.routes {
        cfg.routes.push(RouteConfig {
            dst: r.to.to_string(),
            via: Some(r.via.to_string()),
            dev: None,
            metric: None,
        });
    }
    cfg.hosts = vm.hosts.iter().map(|(n, ip)| format!("{ip} {n}")).collect();
    let services = vm
        .services
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            command: s.command.clone(),
            restart: match s.restart {
                crate::spec::Restart::Always => proto::Restart::Always,
                crate::spec::Restart::OnFailure => proto::Restart::OnFailure,
                crate::spec::Restart::Never => proto::Restart::Never,
            },
            env: vm.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: None,
        })
        .collect();
    (cfg, services)
}

/// Why a booted VM's agent could not be given its configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigureError {
    /// Addresses, routes, hosts or services refused by the agent (its words), or the agent gone.
    #[error(transparent)]
    Agent(#[from] kobako_runtime::RuntimeError),
    /// A `files:` entry's host file.
    #[error("file {}: {err}", path.display())]
    ReadHostFile {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    /// A `files:` entry the agent did not write.
    #[error("file {dst}: {err}")]
    PutFile {
        dst: String,
        err: kobako_runtime::RuntimeError,
    },
}

/// Addresses, routes, hosts, then shared directories, files, and services (which may read
/// them all).
pub(crate) async fn configure(
    client: &AgentClient,
    vm: &Vm,
) -> std::result::Result<(), ConfigureError> {
    let (net, services) = guest_config(vm);
    client.net_config(net).await?;
    for s in &vm.shares {
        client.mount(&s.tag, &s.dst).await?;
    }
    for f in &vm.files {
        let data = match &f.source {
            FileSource::Inline(s) => s.clone().into_bytes(),
            FileSource::Host(p) => {
                std::fs::read(p).map_err(|err| ConfigureError::ReadHostFile {
                    path: p.clone(),
                    err,
                })?
            }
        };
        if let Some(parent) = std::path::Path::new(&f.dst).parent() {
            let _ = client.mkdir(&parent.to_string_lossy(), 0o755, true).await;
        }
        client
            .put_file(&data[..], data.len() as u64, &f.dst, f.mode, &|_| {})
            .await
            .map_err(|err| ConfigureError::PutFile {
                dst: f.dst.clone(),
                err,
            })?;
    }
    // Services are declared even when empty: a VM whose `run:` list shrank stops the others.
    client.set_services(services).await?;
    Ok(())
}
