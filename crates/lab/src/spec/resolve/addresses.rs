//! Interface addresses: parsing one address against its subnet, explicit addresses first,
//! then automatic ones, and unique MACs.

use super::{LabDraft, Origin, Resolver};
use crate::spec::model::*;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// Network name → its IPv4 and IPv6 subnets.
type NetSubnets = HashMap<String, (Option<Cidr>, Option<Cidr>)>;

impl Resolver<'_> {
    /// Parses an interface address; without a prefix, the subnet's prefix is used.
    pub(super) fn address(&mut self, s: &str, subnet: Option<Cidr>, at: &Origin) -> Option<Cidr> {
        let c = if s.contains('/') {
            match s.parse::<Cidr>() {
                Ok(c) => c,
                Err(e) => {
                    self.err(
                        at,
                        e.to_string(),
                        "write an address like 10.0.0.2/24".to_string(),
                    );
                    return None;
                }
            }
        } else {
            match (s.parse::<IpAddr>(), subnet) {
                (Ok(ip), Some(sn)) => Cidr {
                    addr: ip,
                    prefix: sn.prefix,
                },
                (Ok(_), None) => {
                    self.err(
                        at,
                        format!("address {s} has no prefix length"),
                        Some(format!("write it like {s}/24")),
                    );
                    return None;
                }
                (Err(_), _) => {
                    self.err(
                        at,
                        format!("'{s}' is not an IP address"),
                        "write an address like 10.0.0.2/24".to_string(),
                    );
                    return None;
                }
            }
        };
        if let Some(sn) = subnet {
            if !sn.contains(c.addr) {
                self.err(
                    at,
                    format!("address {} is outside the subnet {sn}", c.addr),
                    sn.host(2)
                        .map(|h| format!("use an address in {sn}, e.g. {h}")),
                );
                return None;
            }
            if c.prefix != sn.prefix {
                self.err(
                    at,
                    format!(
                        "address {c} has prefix /{}, the subnet {sn} has /{}",
                        c.prefix, sn.prefix
                    ),
                    Some(format!("write {}/{}", c.addr, sn.prefix)),
                );
                return None;
            }
            if c.is_network() && !(c.addr.is_ipv4() && c.prefix >= 31) {
                self.err(
                    at,
                    format!("{} is the network address of {sn}", c.addr),
                    sn.host(2).map(|h| format!("use a host address, e.g. {h}")),
                );
                return None;
            }
            if c.addr.is_ipv4() && c.prefix < 31 && sn.host(1).is_some() {
                let size = 1u32 << (32 - c.prefix);
                if let IpAddr::V4(a) = c.addr {
                    if u32::from(a) & (size - 1) == size - 1 {
                        self.err(
                            at,
                            format!("{} is the broadcast address of {sn}", c.addr),
                            sn.host(2).map(|h| format!("use a host address, e.g. {h}")),
                        );
                        return None;
                    }
                }
            }
        }
        Some(c)
    }

    /// Gives every interface its addresses and checks MACs: explicit addresses first (they
    /// reserve), then automatic ones, in file order.
    pub(super) fn addresses(&mut self, b: &mut LabDraft) {
        self.unconnected_interfaces(b);
        let net_subnets: NetSubnets = b
            .networks
            .iter()
            .map(|(n, _)| (n.name.0.clone(), (n.subnet, n.subnet6)))
            .collect();
        let owner = self.explicit_addresses(b, &net_subnets);
        // Gateways held by the host are reserved too; .1 is always kept for a gateway.
        let mut reserved: HashSet<IpAddr> = owner.keys().copied().collect();
        for (n, _) in &b.networks {
            if let Some(g) = n.gateway {
                reserved.insert(g);
            }
            for s in [n.subnet, n.subnet6].into_iter().flatten() {
                if let Some(h) = s.host(1) {
                    reserved.insert(h.addr);
                }
            }
        }
        self.automatic_addresses(b, &net_subnets, reserved);
        self.unique_macs(b);
    }

    /// Interfaces declared without a network that no link uses.
    fn unconnected_interfaces(&mut self, b: &LabDraft) {
        for n in &b.nodes {
            for v in &n.vms {
                for (i, info) in v.vm.interfaces.iter().zip(&v.ifaces) {
                    if matches!(&i.attach, Attachment::Link(l) if l.0.is_empty()) {
                        let e = self.sources[info.at.src].key_error(
                            &info.at.path,
                            format!(
                                "interface '{}' of {} is connected to nothing",
                                i.name, v.vm.id
                            ),
                            Some(format!(
                                "add `network: NAME`, or use '{}:{}' in a link",
                                v.vm.id, i.name
                            )),
                        );
                        self.errors.push(e);
                    }
                }
            }
        }
    }

    /// The `addresses:` the file gives, checked against the interface's network; returns who
    /// owns each address (`node.vm:iface`) and where it was written.
    fn explicit_addresses(
        &mut self,
        b: &mut LabDraft,
        net_subnets: &NetSubnets,
    ) -> HashMap<IpAddr, (String, Origin)> {
        let mut owner: HashMap<IpAddr, (String, Origin)> = HashMap::new();
        for ni in 0..b.nodes.len() {
            for vi in 0..b.nodes[ni].vms.len() {
                for ii in 0..b.nodes[ni].vms[vi].vm.interfaces.len() {
                    let (attach, raw, at, id, iname) = {
                        let bv = &b.nodes[ni].vms[vi];
                        let i = &bv.vm.interfaces[ii];
                        let info = &bv.ifaces[ii];
                        (
                            i.attach.clone(),
                            info.raw_addresses.clone(),
                            info.at.clone(),
                            bv.vm.id.clone(),
                            i.name.0.clone(),
                        )
                    };
                    if attach == Attachment::NodeNetwork {
                        continue;
                    }
                    let Some(raw) = raw else { continue };
                    let (s4, s6) = match &attach {
                        Attachment::Network(n) => {
                            net_subnets.get(&n.0).copied().unwrap_or((None, None))
                        }
                        _ => (None, None),
                    };
                    let mut out = Vec::new();
                    for (k, a) in raw.iter().enumerate() {
                        let aat = Origin {
                            src: at.src,
                            path: at.path.key("addresses").index(k),
                        };
                        let is6 = a.contains(':');
                        let sn = if is6 { s6 } else { s4 };
                        if let (Attachment::Network(n), None) = (&attach, sn) {
                            if (is6 && s4.is_some()) || (!is6 && s6.is_some()) {
                                self.err(
                                    &aat,
                                    format!(
                                        "address {a}: network '{n}' has no IPv{} subnet",
                                        if is6 { 6 } else { 4 }
                                    ),
                                    Some(format!(
                                        "add `{}:` to networks.{n}",
                                        if is6 { "subnet6" } else { "subnet" }
                                    )),
                                );
                                continue;
                            }
                        }
                        let Some(c) = self.address(a, sn, &aat) else {
                            continue;
                        };
                        let me = format!("{id}:{iname}");
                        if let Some((who, wat)) = owner.get(&c.addr) {
                            let line = self.sources[wat.src].root.deepest(&wat.path).pos.line;
                            self.err(
                                &aat,
                                format!("address {} is also {who}'s (line {line})", c.addr),
                                "give each interface its own address".to_string(),
                            );
                            continue;
                        }
                        owner.insert(c.addr, (me, aat));
                        out.push(c);
                    }
                    b.nodes[ni].vms[vi].vm.interfaces[ii].addresses = out;
                }
            }
        }
        owner
    }

    /// The next free address of its network's subnets (from `.2`) for every network interface
    /// without `addresses:`; `reserved` are taken already.
    fn automatic_addresses(
        &mut self,
        b: &mut LabDraft,
        net_subnets: &NetSubnets,
        mut reserved: HashSet<IpAddr>,
    ) {
        let mut next: HashMap<(String, bool), u128> = HashMap::new();
        for ni in 0..b.nodes.len() {
            for vi in 0..b.nodes[ni].vms.len() {
                for ii in 0..b.nodes[ni].vms[vi].vm.interfaces.len() {
                    let bv = &b.nodes[ni].vms[vi];
                    if bv.ifaces[ii].explicit_addresses {
                        continue;
                    }
                    let Attachment::Network(n) = bv.vm.interfaces[ii].attach.clone() else {
                        continue;
                    };
                    let (s4, s6) = net_subnets.get(&n.0).copied().unwrap_or((None, None));
                    let at = bv.ifaces[ii].at.clone();
                    let mut out = Vec::new();
                    for (sn, v6) in [(s4, false), (s6, true)] {
                        let Some(sn) = sn else { continue };
                        let k = next.entry((n.0.clone(), v6)).or_insert(2);
                        loop {
                            match sn.host(*k) {
                                None => {
                                    self.err(
                                        &at,
                                        format!("network '{n}' ({sn}) has no free address left"),
                                        Some(format!("use a larger subnet for networks.{n}")),
                                    );
                                    break;
                                }
                                Some(c) => {
                                    *k += 1;
                                    if reserved.insert(c.addr) {
                                        out.push(c);
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    b.nodes[ni].vms[vi].vm.interfaces[ii].addresses = out;
                }
            }
        }
    }

    /// Explicit MACs must be unique in the lab.
    fn unique_macs(&mut self, b: &LabDraft) {
        let mut macs: HashMap<MacAddr, String> = HashMap::new();
        for n in &b.nodes {
            for v in &n.vms {
                for (i, info) in v.vm.interfaces.iter().zip(&v.ifaces) {
                    let me = format!("{}:{}", v.vm.id, i.name);
                    if let Some(prev) = macs.insert(i.mac, me.clone()) {
                        let e = self.sources[info.at.src].error(
                            &info.at.path.key("mac"),
                            format!("MAC {} is also {prev}'s", i.mac),
                            Some("give each interface its own MAC, or leave `mac:` out".into()),
                        );
                        self.errors.push(e);
                    }
                }
            }
        }
    }
}
