//! Nodes: the node network, its addresses and host names, and the node's VMs.

use super::draft::NodeDraft;
use super::merge::MergedNode;
use super::{list, LabDraft, Origin, Resolver, DEFAULT_MTU, DEFAULT_NODE_SUBNET, NODE_NET_FIRST};
use crate::spec::error::suggest;
use crate::spec::model::*;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

impl Resolver<'_> {
    /// Resolves node `nname` (written at `at`) from its merged definition: its node network,
    /// the addresses and names on it, then its VMs.
    pub(super) fn node(&mut self, b: &mut LabDraft, nname: &str, at: &Origin, def: &MergedNode) {
        let node = NodeName(nname.to_string());
        let network = if def.vms.len() >= 2 {
            self.node_network(b, nname, at, def)
        } else {
            None
        };
        let node_addr = self.node_addresses(nname, at, def, network.as_ref());
        let hosts = node_hosts(nname, def, &node_addr);

        let mut vms = Vec::new();
        for (vname, m) in &def.vms {
            let vat = m.at.clone().unwrap_or(at.clone());
            if let Err(why) = check_name(vname, 32, false) {
                self.key_err(
                    &vat,
                    format!("VM name '{vname}' {why}"),
                    "VM names are hostnames: lowercase letters, digits and '-'".to_string(),
                );
            }
            let id = VmRef {
                node: node.clone(),
                vm: VmName(vname.clone()),
            };
            let vm = self.vm(
                b,
                id,
                m,
                &vat,
                network.as_ref(),
                node_addr.get(vname),
                &hosts,
            );
            vms.push(vm);
        }
        b.nodes.push(NodeDraft {
            name: node,
            description: def.description.clone(),
            template: def.template.clone(),
            network,
            vms,
            at: at.clone(),
        });
    }

    /// The node network of a node with 2+ VMs (None when its subnet is invalid); it must not
    /// overlap a lab network.
    fn node_network(
        &mut self,
        b: &LabDraft,
        nname: &str,
        at: &Origin,
        def: &MergedNode,
    ) -> Option<NodeNetwork> {
        let subnet = match &def.subnet {
            Some(s) => self.subnet(&s.value, &s.at, true),
            None => DEFAULT_NODE_SUBNET.parse().ok(),
        };
        let ifname = match &def.interface {
            Some(i) => {
                if let Err(why) = check_ifname(&i.value) {
                    self.err(&i.at, format!("interface name '{}' {why}", i.value), None);
                }
                i.value.clone()
            }
            None => "eth0".to_string(),
        };
        let mtu = match &def.mtu {
            Some(m) => self.mtu(Some(m.value), &m.at),
            None => DEFAULT_MTU,
        };
        if let Some(s) = subnet {
            for (net, nat) in &b.networks {
                if let Some(ns) = net.subnet {
                    if ns.overlaps(&s) {
                        let here = def.subnet.as_ref().map_or(at.clone(), |x| x.at.clone());
                        let line = self.sources[0].root.deepest(&nat.path).pos.line;
                        self.err(
                            &here,
                            format!(
                                "node network {s} of node '{nname}' overlaps {ns} of network '{}' (line {line})",
                                net.name
                            ),
                            Some(format!(
                                "set nodes.{nname}.node_network.subnet to a free range"
                            )),
                        );
                    }
                }
            }
        }
        subnet.map(|s| NodeNetwork {
            subnet: s,
            interface: IfaceName(ifname),
            mtu,
        })
    }

    /// Each VM's address on the node network: `node_network.addresses` first, then the
    /// others from `.10` in node order. Without a node network, such addresses are an error.
    fn node_addresses(
        &mut self,
        nname: &str,
        at: &Origin,
        def: &MergedNode,
        network: Option<&NodeNetwork>,
    ) -> HashMap<String, Cidr> {
        let mut node_addr: HashMap<String, Cidr> = HashMap::new();
        if let Some(nn) = network {
            let mut used: HashSet<IpAddr> = HashSet::new();
            for (vm, a) in &def.addresses {
                if !def.vms.contains_key(vm) {
                    self.key_err(
                        &a.at,
                        format!(
                            "no VM '{vm}' in node '{nname}'{}",
                            suggest(vm, def.vms.keys().map(String::as_str))
                        ),
                        Some(format!("VMs: {}", list(def.vms.keys().map(String::as_str)))),
                    );
                    continue;
                }
                if let Some(c) = self.address(&a.value, Some(nn.subnet), &a.at) {
                    if !used.insert(c.addr) {
                        self.err(&a.at, format!("address {} given twice", c.addr), None);
                    }
                    node_addr.insert(vm.clone(), c);
                }
            }
            let mut n = NODE_NET_FIRST;
            for vm in def.vms.keys() {
                if node_addr.contains_key(vm) {
                    continue;
                }
                loop {
                    match nn.subnet.host(n) {
                        None => {
                            self.err(
                                at,
                                format!("node network {} of node '{nname}' is full", nn.subnet),
                                Some(format!(
                                    "set nodes.{nname}.node_network.subnet to a larger range"
                                )),
                            );
                            break;
                        }
                        Some(c) => {
                            n += 1;
                            if used.insert(c.addr) {
                                node_addr.insert(vm.clone(), c);
                                break;
                            }
                        }
                    }
                }
            }
        } else if !def.addresses.is_empty() {
            let a = def.addresses.values().next().map(|a| a.at.clone());
            if let Some(a) = a {
                self.err(
                    &a,
                    "node network addresses on a node with one VM (it has no node network)".into(),
                    "remove node_network.addresses".to_string(),
                );
            }
        }
        node_addr
    }
}

/// The names of a node's VMs on its node network (`api` and `api.web`), in node order.
fn node_hosts(
    nname: &str,
    def: &MergedNode,
    node_addr: &HashMap<String, Cidr>,
) -> Vec<(String, IpAddr)> {
    let mut hosts: Vec<(String, IpAddr)> = Vec::new();
    for vm in def.vms.keys() {
        if let Some(c) = node_addr.get(vm) {
            hosts.push((vm.clone(), c.addr));
            hosts.push((format!("{vm}.{nname}"), c.addr));
        }
    }
    hosts
}

/// Adds `vm.node` names of the other nodes' VMs (their first IPv4 address on a lab network)
/// to every VM's hosts, after its own node's names.
pub(super) fn lab_hosts(b: &mut LabDraft) {
    let mut lab_names: Vec<(NodeName, String, IpAddr)> = Vec::new();
    for n in &b.nodes {
        for v in &n.vms {
            let addr = v.vm.interfaces.iter().find_map(|i| match i.attach {
                Attachment::Network(_) => i.addresses.iter().find(|c| c.addr.is_ipv4()),
                _ => None,
            });
            if let Some(a) = addr {
                lab_names.push((n.name.clone(), format!("{}.{}", v.vm.id.vm, n.name), a.addr));
            }
        }
    }
    for n in b.nodes.iter_mut() {
        for v in n.vms.iter_mut() {
            for (node, name, addr) in &lab_names {
                if *node != n.name {
                    v.vm.hosts.push((name.clone(), *addr));
                }
            }
        }
    }
}
