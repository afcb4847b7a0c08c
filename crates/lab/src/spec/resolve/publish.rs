//! `publish:`: host ports forwarded to VM ports, and the host gateway they need.

use super::{list, spec_path, LabDraft, Resolver};
use crate::spec::error::suggest;
use crate::spec::model::*;

impl Resolver<'_> {
    pub(super) fn publish(&mut self, b: &mut LabDraft, copy_index: u32) -> Vec<Publish> {
        let stride = self
            .raw
            .copies
            .as_ref()
            .and_then(|c| c.port_stride)
            .unwrap_or(1);
        let mut out: Vec<Publish> = Vec::new();
        for (i, s) in self.raw.publish.iter().enumerate() {
            let at = self.lab_at(spec_path("publish").index(i));
            let fix = "write HOSTPORT:NODE.VM:PORT[/tcp|/udp], e.g. 8080:web.api:80/tcp";
            let (body, proto) = match s.rsplit_once('/') {
                Some((b, "tcp")) => (b, Proto::Tcp),
                Some((b, "udp")) => (b, Proto::Udp),
                Some((_, x)) => {
                    self.err(
                        &at,
                        format!("publish '{s}': unknown protocol '{x}'"),
                        fix.to_string(),
                    );
                    continue;
                }
                None => (s.as_str(), Proto::Tcp),
            };
            let parts: Vec<&str> = body.split(':').collect();
            if parts.len() != 3 {
                self.err(
                    &at,
                    format!("publish '{s}' is not HOSTPORT:NODE.VM:PORT"),
                    fix.to_string(),
                );
                continue;
            }
            let port = |x: &str| x.parse::<u16>().ok().filter(|p| *p != 0);
            let (Some(hp), Some(vp)) = (port(parts[0]), port(parts[2])) else {
                self.err(
                    &at,
                    format!("publish '{s}': ports are 1..65535"),
                    fix.to_string(),
                );
                continue;
            };
            let Some((nname, vname)) = parts[1].split_once('.') else {
                self.err(
                    &at,
                    format!("publish '{s}': '{}' is not NODE.VM", parts[1]),
                    fix.to_string(),
                );
                continue;
            };
            if b.broken.contains(nname) {
                continue;
            }
            let Some(node) = b.nodes.iter().find(|n| n.name.0 == nname) else {
                self.err(
                    &at,
                    format!(
                        "publish '{s}': no node '{nname}'{}",
                        suggest(nname, b.nodes.iter().map(|n| n.name.as_str()))
                    ),
                    Some(format!(
                        "nodes: {}",
                        list(b.nodes.iter().map(|n| n.name.as_str()))
                    )),
                );
                continue;
            };
            let Some(bv) = node.vms.iter().find(|v| v.vm.id.vm.0 == vname) else {
                self.err(
                    &at,
                    format!(
                        "publish '{s}': no VM '{vname}' in node '{nname}'{}",
                        suggest(vname, node.vms.iter().map(|v| v.vm.id.vm.as_str()))
                    ),
                    Some(format!(
                        "VMs: {}",
                        list(node.vms.iter().map(|v| v.vm.id.vm.as_str()))
                    )),
                );
                continue;
            };
            // The target: the VM's first IPv4 address on a lab network the host can reach.
            let mut target = None;
            for i in &bv.vm.interfaces {
                if let Attachment::Network(n) = &i.attach {
                    if let Some(c) = i.addresses.iter().find(|c| c.addr.is_ipv4()) {
                        target = Some((c.addr, n.clone()));
                        break;
                    }
                }
            }
            let Some((ip, net)) = target else {
                self.err(
                    &at,
                    format!("publish '{s}': {} has no IPv4 address on a lab network", bv.vm.id),
                    Some(format!(
                        "give {} an interface on a network with a subnet, e.g. `interfaces: {{eth1: {{network: lan}}}}`",
                        bv.vm.id
                    )),
                );
                continue;
            };
            // The host needs an address on that network to forward to it.
            if let Some((n, _)) = b.networks.iter_mut().find(|(x, _)| x.name == net) {
                if n.gateway.is_none() {
                    n.gateway = n.subnet.and_then(|s| s.host(1)).map(|c| c.addr);
                    n.host_gateway = n.gateway.is_some();
                } else if !n.host_gateway {
                    self.err(
                        &at,
                        format!(
                            "publish '{s}': network '{net}' has a VM as gateway, so the host has no address on it"
                        ),
                        Some(format!("publish a VM on another network, or remove networks.{net}.gateway")),
                    );
                }
            }
            let shifted = u32::from(hp) + copy_index * u32::from(stride);
            let Ok(hp2) = u16::try_from(shifted) else {
                self.err(
                    &at,
                    format!(
                        "publish '{s}': host port {shifted} of copy {} is past 65535",
                        copy_index + 1
                    ),
                    "use a lower host port or a smaller copies.port_stride".to_string(),
                );
                continue;
            };
            if out.iter().any(|x| x.host_port == hp2 && x.proto == proto) {
                self.err(
                    &at,
                    format!(
                        "host port {hp2}/{} published twice",
                        if proto == Proto::Tcp { "tcp" } else { "udp" }
                    ),
                    "use another host port".to_string(),
                );
                continue;
            }
            out.push(Publish {
                host_port: hp2,
                vm: bv.vm.id.clone(),
                port: vp,
                proto,
                target: ip,
            });
        }
        // Routes back from published VMs go via the host gateway: re-derive default routes.
        if !out.is_empty() {
            self.gateways_and_routes(b);
        }
        out
    }
}
