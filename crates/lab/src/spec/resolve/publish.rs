//! `publish:`: host ports forwarded to VM ports, and the host gateway they need.

use super::{list, spec_path, LabDraft, Origin, Resolver};
use crate::spec::error::suggest;
use crate::spec::model::*;
use std::net::IpAddr;

/// The usual form of a `publish:` entry, for fixes.
const PUBLISH_FORM: &str = "write HOSTPORT:NODE.VM:PORT[/tcp|/udp], e.g. 8080:web.api:80/tcp";

/// A `publish:` entry as written: `HOSTPORT:NODE.VM:PORT/PROTO`.
struct PublishEntry<'s> {
    host_port: u16,
    node: &'s str,
    vm: &'s str,
    port: u16,
    proto: Proto,
}

impl Resolver<'_> {
    /// Resolves `publish:` for copy `copy_index` (host ports shift by `copies.port_stride`
    /// per copy). A published VM's network gets the host as gateway, and routes are derived
    /// again.
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
            let Some(e) = self.publish_entry(s, &at) else {
                continue;
            };
            if b.broken.contains(e.node) {
                continue;
            }
            let Some((vm, ip, net)) = self.publish_target(b, s, &at, e.node, e.vm) else {
                continue;
            };
            self.host_gateway_for(b, s, &at, &net);
            let shifted = u32::from(e.host_port) + copy_index * u32::from(stride);
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
            if out.iter().any(|x| x.host_port == hp2 && x.proto == e.proto) {
                self.err(
                    &at,
                    format!(
                        "host port {hp2}/{} published twice",
                        if e.proto == Proto::Tcp { "tcp" } else { "udp" }
                    ),
                    "use another host port".to_string(),
                );
                continue;
            }
            out.push(Publish {
                host_port: hp2,
                vm,
                port: e.port,
                proto: e.proto,
                target: ip,
            });
        }
        // Routes back from published VMs go via the host gateway: re-derive default routes.
        if !out.is_empty() {
            self.gateways_and_routes(b);
        }
        out
    }

    /// Parses entry `s` (written at `at`).
    fn publish_entry<'s>(&mut self, s: &'s str, at: &Origin) -> Option<PublishEntry<'s>> {
        let fix = PUBLISH_FORM;
        let (body, proto) = match s.rsplit_once('/') {
            Some((b, "tcp")) => (b, Proto::Tcp),
            Some((b, "udp")) => (b, Proto::Udp),
            Some((_, x)) => {
                self.err(
                    at,
                    format!("publish '{s}': unknown protocol '{x}'"),
                    fix.to_string(),
                );
                return None;
            }
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = body.split(':').collect();
        if parts.len() != 3 {
            self.err(
                at,
                format!("publish '{s}' is not HOSTPORT:NODE.VM:PORT"),
                fix.to_string(),
            );
            return None;
        }
        let port = |x: &str| x.parse::<u16>().ok().filter(|p| *p != 0);
        let (Some(hp), Some(vp)) = (port(parts[0]), port(parts[2])) else {
            self.err(
                at,
                format!("publish '{s}': ports are 1..65535"),
                fix.to_string(),
            );
            return None;
        };
        let Some((nname, vname)) = parts[1].split_once('.') else {
            self.err(
                at,
                format!("publish '{s}': '{}' is not NODE.VM", parts[1]),
                fix.to_string(),
            );
            return None;
        };
        Some(PublishEntry {
            host_port: hp,
            node: nname,
            vm: vname,
            port: vp,
            proto,
        })
    }

    /// The published VM and where the host forwards to: its first IPv4 address on a lab
    /// network the host can reach, and that network.
    fn publish_target(
        &mut self,
        b: &LabDraft,
        s: &str,
        at: &Origin,
        nname: &str,
        vname: &str,
    ) -> Option<(VmRef, IpAddr, NetName)> {
        let Some(node) = b.nodes.iter().find(|n| n.name.0 == nname) else {
            self.err(
                at,
                format!(
                    "publish '{s}': no node '{nname}'{}",
                    suggest(nname, b.nodes.iter().map(|n| n.name.as_str()))
                ),
                Some(format!(
                    "nodes: {}",
                    list(b.nodes.iter().map(|n| n.name.as_str()))
                )),
            );
            return None;
        };
        let Some(bv) = node.vms.iter().find(|v| v.vm.id.vm.0 == vname) else {
            self.err(
                at,
                format!(
                    "publish '{s}': no VM '{vname}' in node '{nname}'{}",
                    suggest(vname, node.vms.iter().map(|v| v.vm.id.vm.as_str()))
                ),
                Some(format!(
                    "VMs: {}",
                    list(node.vms.iter().map(|v| v.vm.id.vm.as_str()))
                )),
            );
            return None;
        };
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
                at,
                format!("publish '{s}': {} has no IPv4 address on a lab network", bv.vm.id),
                Some(format!(
                    "give {} an interface on a network with a subnet, e.g. `interfaces: {{eth1: {{network: lan}}}}`",
                    bv.vm.id
                )),
            );
            return None;
        };
        Some((bv.vm.id.clone(), ip, net))
    }

    /// The host needs an address on network `net` to forward to it: `.1` as gateway when the
    /// network has none; an error when a VM is its gateway.
    fn host_gateway_for(&mut self, b: &mut LabDraft, s: &str, at: &Origin, net: &NetName) {
        if let Some((n, _)) = b.networks.iter_mut().find(|(x, _)| x.name == *net) {
            if n.gateway.is_none() {
                n.gateway = n.subnet.and_then(|s| s.host(1)).map(|c| c.addr);
                n.host_gateway = n.gateway.is_some();
            } else if !n.host_gateway {
                self.err(
                    at,
                    format!(
                        "publish '{s}': network '{net}' has a VM as gateway, so the host has no address on it"
                    ),
                    Some(format!("publish a VM on another network, or remove networks.{net}.gateway")),
                );
            }
        }
    }
}
