//! The lab as a lab file again: [`Lab::to_raw`] turns the resolved model back into raw types
//! with every value explicit and templates expanded, [`Lab::to_yaml`] writes them out for
//! `kobako save`.

use super::yaml_writer::YamlSer;
use crate::spec::model::*;
use crate::spec::raw::*;
use crate::spec::units::{Micros, Percent};
use indexmap::IndexMap;
use serde::Serialize;
use yaml_rust2::YamlEmitter;

impl Lab {
    /// The lab as raw types: every value explicit, templates expanded, no copies.
    pub fn to_raw(&self) -> RawLab {
        let nodes = self
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), self.raw_node(n)))
            .collect();
        let networks = self
            .networks
            .iter()
            .map(|n| {
                (
                    n.name.to_string(),
                    RawNetwork {
                        subnet: n.subnet.map(|s| s.to_string()),
                        subnet6: n.subnet6.map(|s| s.to_string()),
                        vlan: n.vlan.map(u32::from),
                        mtu: (n.mtu != 1500).then_some(n.mtu),
                        gateway: n.gateway.map(|g| g.to_string()),
                    },
                )
            })
            .collect();
        RawLab {
            name: self.name.to_string(),
            description: self.description.clone(),
            defaults: None,
            templates: IndexMap::new(),
            nodes,
            networks,
            links: self
                .links
                .iter()
                .filter(|l| l.node.is_none())
                .map(|l| raw_link(l, false))
                .collect(),
            uplink: (!self.uplink.is_empty()).then(|| {
                RawUplink::Some(RawUplinkFull {
                    networks: self.uplink.iter().map(|n| n.to_string()).collect(),
                })
            }),
            publish: self.publish.iter().map(raw_publish).collect(),
            copies: None,
        }
    }

    /// A node: its VMs, its node network with every VM's address, and its own links.
    fn raw_node(&self, n: &Node) -> RawNode {
        let vms = n
            .vms
            .iter()
            .map(|v| (v.id.vm.to_string(), self.raw_vm(v)))
            .collect();
        let node_network = n.network.as_ref().map(|nn| RawNodeNetwork {
            subnet: Some(nn.subnet.to_string()),
            interface: Some(nn.interface.to_string()),
            mtu: Some(nn.mtu),
            addresses: n
                .vms
                .iter()
                .filter_map(|v| {
                    v.interfaces
                        .iter()
                        .find(|i| i.attach == Attachment::NodeNetwork)
                        .and_then(|i| i.addresses.first())
                        .map(|a| (v.id.vm.to_string(), a.addr.to_string()))
                })
                .collect(),
        });
        let links = self
            .links
            .iter()
            .filter(|l| l.node.as_ref() == Some(&n.name))
            .map(|l| raw_link(l, true))
            .collect();
        RawNode {
            description: n.description.clone(),
            template: None,
            vms,
            node_network,
            links,
        }
    }

    /// A VM with its interfaces, routes (not those from a gateway), services, files and env.
    fn raw_vm(&self, v: &Vm) -> RawVm {
        RawVm {
            description: v.description.clone(),
            image: Some(v.image.clone()),
            vcpus: Some(v.vcpus),
            memory: Some(v.memory),
            kernel: Some(v.kernel.clone()),
            interfaces: self.raw_interfaces(v),
            routes: v
                .routes
                .iter()
                .filter(|r| !r.from_gateway)
                .map(|r| RawRoute {
                    to: if r.to.prefix == 0 && r.to.addr.is_ipv4() {
                        "default".into()
                    } else {
                        r.to.to_string()
                    },
                    via: r.via.to_string(),
                })
                .collect(),
            run: (!v.services.is_empty()).then(|| {
                v.services
                    .iter()
                    .map(|s| {
                        RawService::Full(RawServiceFull {
                            name: Some(s.name.clone()),
                            command: s.command.clone(),
                            restart: Some(s.restart),
                        })
                    })
                    .collect()
            }),
            files: v.files.iter().map(raw_file).collect(),
            shares: v
                .shares
                .iter()
                .map(|s| (s.dst.clone(), RawShare::Src(s.src.display().to_string())))
                .collect(),
            env: v
                .env
                .iter()
                .map(|(k, x)| (k.clone(), EnvValue(x.clone())))
                .collect(),
            security: Some(RawSecurity {
                apparmor: Some(v.apparmor),
            }),
            ready: (!v.ready.is_empty()).then(|| v.ready.iter().map(raw_ready).collect()),
            ready_timeout: (v.ready_timeout_ms != DEFAULT_READY_TIMEOUT_MS)
                .then_some(Micros(v.ready_timeout_ms * 1000)),
        }
    }

    /// A VM's interfaces in order, except the node network's (the node declares it). A bare
    /// link end is `{}`.
    fn raw_interfaces(&self, v: &Vm) -> IndexMap<String, RawInterface> {
        let mut interfaces = IndexMap::new();
        for i in &v.interfaces {
            let network = match &i.attach {
                Attachment::NodeNetwork => continue,
                Attachment::Network(n) => Some(n.to_string()),
                Attachment::Link(_) => None,
            };
            let bare_link_end = matches!(i.attach, Attachment::Link(_))
                && i.addresses.is_empty()
                && !i.mac_explicit
                && i.gateway.is_none()
                && !i.no_gateway;
            let default_mtu = match &i.attach {
                Attachment::Network(n) => self.network(n.as_str()).map_or(1500, |x| x.mtu),
                Attachment::Link(l) => self.link(l.as_str()).map_or(1500, |x| x.mtu),
                Attachment::NodeNetwork => 1500,
            };
            if bare_link_end && i.mtu == default_mtu {
                // The link declares it; `{}` keeps the interface order.
                interfaces.insert(i.name.to_string(), RawInterface::default());
                continue;
            }
            interfaces.insert(
                i.name.to_string(),
                RawInterface {
                    network,
                    addresses: Some(i.addresses.iter().map(|a| a.to_string()).collect()),
                    mac: i.mac_explicit.then(|| i.mac.to_string()),
                    mtu: (i.mtu != default_mtu).then_some(i.mtu),
                    gateway: i.gateway.map(|g| g.to_string()),
                    no_gateway: i.no_gateway,
                },
            );
        }
        interfaces
    }

    /// The lab as a lab file (YAML), for `kobako save`.
    pub fn to_yaml(&self) -> String {
        self.to_raw().to_yaml(&format!(
            "# Lab '{}' as resolved by kobako (every value explicit).",
            self.name
        ))
    }
}

impl RawLab {
    /// The lab file as YAML text (mapping order kept), after `header` (comment lines).
    pub fn to_yaml(&self, header: &str) -> String {
        let y = self.serialize(YamlSer).expect("lab serializes");
        let mut out = String::new();
        {
            let mut e = YamlEmitter::new(&mut out);
            e.multiline_strings(true);
            e.dump(&y).expect("yaml emits");
        }
        let body = out.strip_prefix("---\n").unwrap_or(&out);
        format!("{header}\n{body}\n")
    }
}

fn raw_link(l: &Link, in_node: bool) -> RawLink {
    let ep = |e: &Endpoint| {
        if in_node {
            format!("{}:{}", e.vm.vm, e.iface)
        } else {
            e.to_string()
        }
    };
    let c = |c: &Option<Chance>| {
        c.map(|c| {
            if c.correlation == Percent(0) {
                RawPct::Plain(c.percent)
            } else {
                RawPct::Correlated(RawPctFull {
                    percent: c.percent,
                    correlation: c.correlation,
                })
            }
        })
    };
    let i = &l.impair;
    RawLink {
        name: l.name_explicit.then(|| l.name.to_string()),
        endpoints: l.endpoints.iter().map(ep).collect(),
        impair: (!i.is_none()).then(|| RawImpair {
            delay: i.delay,
            jitter: i.jitter,
            loss: c(&i.loss),
            rate: i.rate,
            corrupt: c(&i.corrupt),
            duplicate: c(&i.duplicate),
            reorder: c(&i.reorder),
        }),
        state: (l.state != LinkState::Up).then_some(l.state),
        mtu: (l.mtu != 1500).then_some(l.mtu),
    }
}

/// A file copied into a VM: its destination and where its content comes from.
fn raw_file(f: &FileCopy) -> (String, RawFile) {
    let (src, content) = match &f.source {
        FileSource::Host(p) => (Some(p.display().to_string()), None),
        FileSource::Inline(c) => (None, Some(c.clone())),
    };
    (
        f.dst.clone(),
        RawFile::Full(RawFileFull {
            src,
            content,
            mode: Some(format!("{:04o}", f.mode)),
        }),
    )
}

/// A published port as `HOST:VM:PORT/PROTO`.
fn raw_publish(p: &Publish) -> String {
    format!(
        "{}:{}:{}/{}",
        p.host_port,
        p.vm,
        p.port,
        if p.proto == Proto::Tcp { "tcp" } else { "udp" }
    )
}

/// A readiness check as written in a lab file.
fn raw_ready(c: &ReadyCheck) -> RawReadyCheck {
    match c {
        ReadyCheck::Tcp(p) => RawReadyCheck {
            tcp: Some(u32::from(*p)),
            ..Default::default()
        },
        ReadyCheck::Http(u) => RawReadyCheck {
            http: Some(u.clone()),
            ..Default::default()
        },
        ReadyCheck::Exec(c) => RawReadyCheck {
            exec: Some(c.clone()),
            ..Default::default()
        },
    }
}
