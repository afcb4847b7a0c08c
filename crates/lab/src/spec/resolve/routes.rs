//! Gateways (who holds each network's gateway) and every VM's routes, explicit and default.

use super::draft::VmDraft;
use super::{LabDraft, Origin, Resolver};
use crate::spec::model::*;
use std::collections::HashMap;
use std::net::IpAddr;

impl Resolver<'_> {
    /// Settles each network's gateway (host or VM), then every VM's routes: its explicit
    /// ones, and a default route through the first gateway it does not own.
    pub(super) fn gateways_and_routes(&mut self, b: &mut LabDraft) {
        self.network_gateways(b);
        for node in b.nodes.iter_mut() {
            for bv in node.vms.iter_mut() {
                bv.vm.routes = self.complete_routes(&b.networks, bv);
            }
        }
    }

    /// An uplinked network without a gateway gets `.1`; a gateway no VM owns is the host's.
    fn network_gateways(&mut self, b: &mut LabDraft) {
        // Who owns each address.
        let mut vm_owned: HashMap<IpAddr, String> = HashMap::new();
        for n in &b.nodes {
            for v in &n.vms {
                for i in &v.vm.interfaces {
                    for a in &i.addresses {
                        vm_owned.insert(a.addr, format!("{}:{}", v.vm.id, i.name));
                    }
                }
            }
        }
        for (n, at) in b.networks.iter_mut() {
            let up = b.uplinked.contains(&n.name.0);
            if up && n.gateway.is_none() {
                n.gateway = n.subnet.and_then(|s| s.host(1)).map(|c| c.addr);
            }
            if let Some(g) = n.gateway {
                match vm_owned.get(&g) {
                    Some(who) if up => {
                        let e = self.sources[at.src].error(
                            &at.path.key("gateway"),
                            format!(
                                "network '{}' is in the uplink, but its gateway {g} is {who}",
                                n.name
                            ),
                            Some("the host side holds an uplinked network's gateway: give the VM another address or set another gateway".into()),
                        );
                        self.errors.push(e);
                    }
                    Some(_) => n.host_gateway = false,
                    None => n.host_gateway = true,
                }
            }
        }
    }

    /// One VM's routes: the explicit ones (their next hop on one of its subnets), then per
    /// interface a default route via its gateway (its own, or its network's) unless the VM
    /// owns that address or already has a default route of that IP version.
    fn complete_routes(&mut self, networks: &[(Network, Origin)], bv: &VmDraft) -> Vec<Route> {
        let mut routes: Vec<Route> = Vec::new();
        let mine: Vec<Cidr> = bv
            .vm
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.clone())
            .collect();
        let owns = |ip: IpAddr| mine.iter().any(|c| c.addr == ip);
        // Explicit routes: the next hop must be on one of the VM's subnets.
        for (r, rat) in &bv.routes {
            if !mine.iter().any(|c| c.network().contains(r.via)) {
                let e = self.sources[rat.src].error(
                    &rat.path.key("via"),
                    format!("next hop {} is not on any subnet of {}", r.via, bv.vm.id),
                    Some("use an address on one of the VM's networks or links".into()),
                );
                self.errors.push(e);
            }
            routes.push(*r);
        }
        let has_default = |routes: &Vec<Route>, v4: bool| {
            routes
                .iter()
                .any(|r| r.to.prefix == 0 && r.to.addr.is_ipv4() == v4)
        };
        for (i, info) in bv.vm.interfaces.iter().zip(&bv.ifaces) {
            if i.no_gateway {
                continue;
            }
            let g = match (i.gateway, &i.attach) {
                (Some(g), _) => {
                    if !i.addresses.iter().any(|c| c.network().contains(g)) {
                        let e = self.sources[info.at.src].error(
                            &info.at.path.key("gateway"),
                            format!("gateway {g} is not on {}'s subnets", i.name),
                            Some("use an address in the interface's subnet".into()),
                        );
                        self.errors.push(e);
                    }
                    Some(g)
                }
                (None, Attachment::Network(n)) => networks
                    .iter()
                    .find(|(x, _)| x.name == *n)
                    .and_then(|(x, _)| x.gateway),
                _ => None,
            };
            if let Some(g) = g {
                if owns(g) || has_default(&routes, g.is_ipv4()) {
                    continue;
                }
                if !i.addresses.iter().any(|c| c.network().contains(g)) {
                    continue;
                }
                routes.push(Route {
                    to: Cidr {
                        addr: if g.is_ipv4() {
                            IpAddr::V4(0.into())
                        } else {
                            IpAddr::V6(0.into())
                        },
                        prefix: 0,
                    },
                    via: g,
                    from_gateway: true,
                });
            }
        }
        routes
    }
}
