//! Lab networks (`networks:`), subnets, MTUs and the uplink.

use super::{list, spec_path, Origin, Resolver, DEFAULT_MTU};
use crate::spec::error::suggest;
use crate::spec::model::*;
use crate::spec::raw::*;
use std::collections::HashSet;
use std::net::IpAddr;

impl Resolver<'_> {
    /// `networks:`, each checked, in file order with where it was written; subnets of one lab
    /// must not overlap.
    pub(super) fn networks(&mut self) -> Vec<(Network, Origin)> {
        let mut out: Vec<(Network, Origin)> = Vec::new();
        for (name, rn) in &self.raw.networks {
            let at = self.lab_at(spec_path("networks").key(name));
            if let Err(why) = check_name(name, 32, false) {
                self.key_err(&at, format!("network name '{name}' {why}"), None);
            }
            let sub = |k: &str| Origin {
                src: 0,
                path: at.path.key(k),
            };
            let subnet = rn
                .subnet
                .as_ref()
                .and_then(|s| self.subnet(s, &sub("subnet"), true));
            let subnet6 = rn
                .subnet6
                .as_ref()
                .and_then(|s| self.subnet(s, &sub("subnet6"), false));
            let vlan = match rn.vlan {
                Some(v) if !(1..=4094).contains(&v) => {
                    self.err(
                        &sub("vlan"),
                        format!("VLAN {v} is out of range"),
                        "802.1Q VLAN ids are 1..4094".to_string(),
                    );
                    None
                }
                v => v.map(|v| v as u16),
            };
            let mtu = self.mtu(rn.mtu, &sub("mtu"));
            let gateway = rn
                .gateway
                .as_ref()
                .and_then(|g| self.network_gateway(g, [subnet, subnet6], &sub("gateway")));
            // Overlaps within the lab.
            for (other, oat) in &out {
                for (mine, theirs, k) in [
                    (subnet, other.subnet, "subnet"),
                    (subnet6, other.subnet6, "subnet6"),
                ] {
                    if let (Some(a), Some(b)) = (mine, theirs) {
                        if a.overlaps(&b) {
                            let line = self.sources[0].root.deepest(&oat.path.key(k)).pos.line;
                            self.err(
                                &sub(k),
                                format!(
                                    "subnet {a} overlaps {b} of network '{}' (line {line})",
                                    other.name
                                ),
                                "networks of one lab need disjoint subnets: pick another range"
                                    .to_string(),
                            );
                        }
                    }
                }
            }
            out.push((
                Network {
                    name: NetName(name.clone()),
                    subnet,
                    subnet6,
                    vlan,
                    mtu,
                    gateway,
                    host_gateway: false,
                },
                at,
            ));
        }
        out
    }

    /// A network's `gateway:` (written at `at`): an IP address in one of its `subnets`.
    fn network_gateway(
        &mut self,
        g: &str,
        subnets: [Option<Cidr>; 2],
        at: &Origin,
    ) -> Option<IpAddr> {
        let [subnet, subnet6] = subnets;
        match g.parse::<IpAddr>() {
            Err(_) => {
                self.err(
                    at,
                    format!("'{g}' is not an IP address"),
                    "write an address like 10.0.0.1".to_string(),
                );
                None
            }
            Ok(ip) => {
                let within = [subnet, subnet6].iter().flatten().any(|s| s.contains(ip));
                if !within {
                    let s = [subnet, subnet6]
                        .iter()
                        .flatten()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ");
                    self.err(
                        at,
                        if s.is_empty() {
                            format!("gateway {ip} on a network without a subnet")
                        } else {
                            format!("gateway {ip} is outside the network's subnet {s}")
                        },
                        "give the network a subnet and the gateway an address in it".to_string(),
                    );
                }
                Some(ip)
            }
        }
    }

    /// A subnet (IPv4 when `v4`) written at `at`: the network address, at most /30 for IPv4.
    pub(super) fn subnet(&mut self, s: &str, at: &Origin, v4: bool) -> Option<Cidr> {
        match s.parse::<Cidr>() {
            Err(e) => {
                self.err(
                    at,
                    e.to_string(),
                    Some(if v4 {
                        "write a subnet like 10.10.0.0/24".into()
                    } else {
                        "write a subnet like fd00:10::/64".into()
                    }),
                );
                None
            }
            Ok(c) if c.addr.is_ipv4() != v4 => {
                self.err(
                    at,
                    format!("{c} is not an IPv{} subnet", if v4 { 4 } else { 6 }),
                    Some(if v4 {
                        "put IPv6 subnets under `subnet6:`".into()
                    } else {
                        "put IPv4 subnets under `subnet:`".into()
                    }),
                );
                None
            }
            Ok(c) if !c.is_network() => {
                self.err(
                    at,
                    format!("{c} has host bits set"),
                    Some(format!("write the network address: {}", c.network())),
                );
                Some(c.network())
            }
            Ok(c) if v4 && c.prefix > 30 => {
                self.err(
                    at,
                    format!("{c} is too small for VMs"),
                    Some("use a prefix of /30 or shorter".into()),
                );
                None
            }
            Ok(c) => Some(c),
        }
    }

    /// An MTU written at `at` (68..65535), 1500 when not given or invalid.
    pub(super) fn mtu(&mut self, m: Option<u32>, at: &Origin) -> u32 {
        match m {
            None => DEFAULT_MTU,
            Some(m) if !(68..=65535).contains(&m) => {
                self.err(
                    at,
                    format!("MTU {m} is out of range"),
                    "use 68..65535 (1500 is usual)".to_string(),
                );
                DEFAULT_MTU
            }
            Some(m) => m,
        }
    }

    /// The networks NATed through the host (`uplink:`), as a list and as a set of names.
    pub(super) fn uplink(&mut self, nets: &[(Network, Origin)]) -> (Vec<NetName>, HashSet<String>) {
        let names: Vec<String> = match &self.raw.uplink {
            None | Some(RawUplink::All(false)) => vec![],
            Some(RawUplink::All(true)) => nets
                .iter()
                .filter(|(n, _)| n.subnet.is_some())
                .map(|(n, _)| n.name.0.clone())
                .collect(),
            Some(RawUplink::Some(u)) => {
                let mut v = Vec::new();
                for (i, n) in u.networks.iter().enumerate() {
                    let at = self.lab_at(spec_path("uplink.networks").index(i));
                    match nets.iter().find(|(x, _)| x.name.0 == *n) {
                        None => self.err(
                            &at,
                            format!(
                                "no network '{n}'{}",
                                suggest(n, nets.iter().map(|(x, _)| x.name.as_str()))
                            ),
                            Some(format!(
                                "networks: {}",
                                list(nets.iter().map(|(x, _)| x.name.as_str()))
                            )),
                        ),
                        Some((x, _)) if x.subnet.is_none() => self.err(
                            &at,
                            format!("network '{n}' has no IPv4 subnet to NAT"),
                            Some(format!("add `subnet:` to networks.{n}")),
                        ),
                        Some(_) => v.push(n.clone()),
                    }
                }
                v
            }
        };
        let set = names.iter().cloned().collect();
        (names.into_iter().map(NetName).collect(), set)
    }
}
