//! Point-to-point links: endpoints, names, impairments, and the interfaces they attach.

use super::draft::{EndpointKey, InterfaceDecl};
use super::{list, LabDraft, Origin, Resolver, DEFAULT_MTU};
use crate::spec::error::suggest;
use crate::spec::model::*;
use crate::spec::raw::*;

impl Resolver<'_> {
    /// Parses endpoint `s` (`NODE.VM:IFACE`, `NODE:IFACE` for a node of one VM, or `VM:IFACE`
    /// inside node `node`) into a VM's interface; None when it names nothing (reported, unless
    /// its node's template failed).
    fn endpoint(
        &mut self,
        b: &LabDraft,
        s: &str,
        at: &Origin,
        node: Option<&str>,
    ) -> Option<EndpointKey> {
        let form = if node.is_some() {
            "VM:IFACE"
        } else {
            "NODE.VM:IFACE (NODE:IFACE for a node of one VM)"
        };
        let (left, iface) = match s.split_once(':') {
            Some(x) => x,
            None => {
                self.err(
                    at,
                    format!("link endpoint '{s}' has no interface"),
                    Some(format!("write it as {form}, e.g. '{s}:eth1'")),
                );
                return None;
            }
        };
        let (nname, vname) = match (node, left.split_once('.')) {
            (Some(n), None) => (n, left),
            (None, Some((n, v))) => (n, v),
            // `NODE:IFACE` (containerlab's habit): the node's only VM.
            (None, None) if b.nodes.iter().any(|n| n.name.0 == left) => {
                if b.broken.contains(left) {
                    return None;
                }
                let n = b.nodes.iter().find(|n| n.name.0 == left)?;
                match n.vms.as_slice() {
                    [only] => (left, only.vm.id.vm.as_str()),
                    vms => {
                        self.err(
                            at,
                            format!(
                                "link endpoint '{s}': node '{left}' has {} VMs, so the \
                                 endpoint must say which",
                                vms.len()
                            ),
                            Some(format!(
                                "write it as NODE.VM:IFACE, e.g. '{left}.{}:{iface}' (VMs: {})",
                                vms.first().map_or("", |v| v.vm.id.vm.as_str()),
                                list(vms.iter().map(|v| v.vm.id.vm.as_str()))
                            )),
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.err(
                    at,
                    format!("link endpoint '{s}' is not {form}"),
                    Some(format!("write it as {form}")),
                );
                return None;
            }
        };
        if b.broken.contains(nname) {
            return None;
        }
        let Some(ni) = b.nodes.iter().position(|n| n.name.0 == nname) else {
            self.err(
                at,
                format!(
                    "link endpoint '{s}': no node '{nname}'{}",
                    suggest(nname, b.nodes.iter().map(|n| n.name.as_str()))
                ),
                Some(format!(
                    "nodes: {}",
                    list(b.nodes.iter().map(|n| n.name.as_str()))
                )),
            );
            return None;
        };
        let Some(vi) = b.nodes[ni].vms.iter().position(|v| v.vm.id.vm.0 == vname) else {
            self.err(
                at,
                format!(
                    "link endpoint '{s}': no VM '{vname}' in node '{nname}'{}",
                    suggest(vname, b.nodes[ni].vms.iter().map(|v| v.vm.id.vm.as_str()))
                ),
                Some(format!(
                    "VMs of '{nname}': {}",
                    list(b.nodes[ni].vms.iter().map(|v| v.vm.id.vm.as_str()))
                )),
            );
            return None;
        };
        if let Err(why) = check_ifname(iface) {
            self.err(
                at,
                format!("link endpoint '{s}': interface name '{iface}' {why}"),
                "use a short name like eth1".to_string(),
            );
            return None;
        }
        Some((ni, vi, iface.to_string()))
    }

    /// Resolves link `l` (written at `at`; inside node `node` for a node's `links:`): two free
    /// interfaces, a unique name, impairments; the interfaces are attached (or created).
    pub(super) fn link(&mut self, b: &mut LabDraft, l: &RawLink, at: &Origin, node: Option<&str>) {
        let sub = |k: &str| Origin {
            src: at.src,
            path: at.path.key(k),
        };
        if l.endpoints.len() != 2 {
            self.err(
                &sub("endpoints"),
                format!("a link has 2 endpoints, this one has {}", l.endpoints.len()),
                "write `endpoints: [\"node.vm:eth1\", \"node.vm:eth1\"]`; use a network for more"
                    .to_string(),
            );
            return;
        }
        let mut ends = Vec::new();
        for (i, e) in l.endpoints.iter().enumerate() {
            let eat = Origin {
                src: at.src,
                path: at.path.key("endpoints").index(i),
            };
            if let Some(x) = self.endpoint(b, e, &eat, node) {
                ends.push((x, eat));
            }
        }
        let impair = self.impair(l.impair.as_ref(), &sub("impair"));
        let mtu = self.mtu(l.mtu, &sub("mtu"));
        if ends.len() != 2 {
            return;
        }
        if ends[0].0 == ends[1].0 {
            self.err(
                &ends[1].1,
                format!("link endpoints are the same interface '{}'", l.endpoints[1]),
                "connect two different interfaces".to_string(),
            );
            return;
        }
        if !self.endpoints_free(b, &ends) {
            return;
        }
        for ((ni, vi, iface), eat) in &ends {
            b.used_endpoints
                .insert((*ni, *vi, iface.clone()), eat.clone());
        }
        let ep = |b: &LabDraft, (ni, vi, iface): &EndpointKey| Endpoint {
            vm: b.nodes[*ni].vms[*vi].vm.id.clone(),
            iface: IfaceName(iface.clone()),
        };
        let a = ep(b, &ends[0].0);
        let z = ep(b, &ends[1].0);
        let (name, explicit) = self.link_name(b, l, &sub("name"), &a, &z);
        let lname = LinkName(name);
        for (key, _) in &ends {
            attach_link(b, key, &lname, mtu, at);
        }
        b.links.push((
            Link {
                name: lname,
                name_explicit: explicit,
                endpoints: [a, z],
                impair,
                state: l.state.unwrap_or_default(),
                mtu,
                node: node.map(|n| NodeName(n.to_string())),
            },
            at.clone(),
        ));
    }

    /// Whether each endpoint's interface is free: not in another link, not on a network, not
    /// the node network's. Every taken one is reported.
    fn endpoints_free(&mut self, b: &LabDraft, ends: &[(EndpointKey, Origin)]) -> bool {
        let mut ok = true;
        for ((ni, vi, iface), eat) in ends {
            let key = (*ni, *vi, iface.clone());
            if let Some(prev) = b.used_endpoints.get(&key) {
                let line = self.sources[prev.src].root.deepest(&prev.path).pos.line;
                let file = self.sources[prev.src].file.clone();
                self.err(
                    eat,
                    format!(
                        "link endpoint '{}.{}:{iface}' is already used by another link ({file} line {line})",
                        b.nodes[*ni].name, b.nodes[*ni].vms[*vi].vm.id.vm
                    ),
                    "an interface joins one link: use another interface name (eth2, eth3 ...)".to_string(),
                );
                ok = false;
                continue;
            }
            let vm = &b.nodes[*ni].vms[*vi].vm;
            if let Some(i) = vm.interfaces.iter().find(|i| i.name.0 == *iface) {
                match &i.attach {
                    Attachment::Network(n) => {
                        self.err(
                            eat,
                            format!(
                                "link endpoint '{}:{iface}': the interface is on network '{n}'",
                                vm.id
                            ),
                            "an interface is on a network or in a link: use another interface name"
                                .to_string(),
                        );
                        ok = false;
                    }
                    Attachment::NodeNetwork => {
                        self.err(
                            eat,
                            format!(
                                "link endpoint '{}:{iface}': the interface is the node network's",
                                vm.id
                            ),
                            "use another interface name (eth1, eth2 ...)".to_string(),
                        );
                        ok = false;
                    }
                    Attachment::Link(_) => {}
                }
            }
        }
        ok
    }

    /// The link's name and whether the file gave it (`name:` at `at`); by default `A-Z` of
    /// its VMs, or with interfaces when that is taken. A name used twice is reported.
    fn link_name(
        &mut self,
        b: &LabDraft,
        l: &RawLink,
        at: &Origin,
        a: &Endpoint,
        z: &Endpoint,
    ) -> (String, bool) {
        let (name, explicit) = match &l.name {
            Some(n) => {
                let valid = !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
                if !valid {
                    self.err(
                        at,
                        format!("link name '{n}' is not valid"),
                        "use letters, digits, '-', '_', '.' and ':' (at most 64)".to_string(),
                    );
                }
                (n.clone(), true)
            }
            None => {
                let short = format!("{}-{}", a.vm, z.vm);
                if b.links.iter().any(|(x, _)| x.name.0 == short) {
                    (format!("{a}-{z}"), false)
                } else {
                    (short, false)
                }
            }
        };
        if let Some((_, prev)) = b.links.iter().find(|(x, _)| x.name.0 == name) {
            let line = self.sources[prev.src].root.deepest(&prev.path).pos.line;
            self.err(
                at,
                format!("link name '{name}' used twice (first at line {line})"),
                "give each link its own `name:`".to_string(),
            );
        }
        (name, explicit)
    }

    /// A link's `impair:` (netem settings); jitter and reorder need a delay.
    fn impair(&mut self, r: Option<&RawImpair>, at: &Origin) -> Impairment {
        let Some(r) = r else {
            return Impairment::default();
        };
        let sub = |k: &str| Origin {
            src: at.src,
            path: at.path.key(k),
        };
        let chance = |p: &Option<RawPct>| {
            p.map(|p| {
                let (percent, correlation) = p.parts();
                Chance {
                    percent,
                    correlation,
                }
            })
        };
        if r.jitter.is_some() && r.delay.is_none() {
            self.err(
                &sub("jitter"),
                "jitter without delay".into(),
                "add `delay:` (jitter varies the delay)".to_string(),
            );
        }
        if let (Some(j), Some(d)) = (r.jitter, r.delay) {
            if j > d {
                self.err(
                    &sub("jitter"),
                    format!("jitter {j} is larger than the delay {d}"),
                    "keep jitter at most the delay".to_string(),
                );
            }
        }
        if r.reorder.is_some() && r.delay.is_none() {
            self.err(
                &sub("reorder"),
                "reorder without delay".into(),
                "add `delay:` (netem reorders by sending some packets without the delay)"
                    .to_string(),
            );
        }
        Impairment {
            delay: r.delay,
            jitter: r.jitter,
            loss: chance(&r.loss),
            rate: r.rate,
            corrupt: chance(&r.corrupt),
            duplicate: chance(&r.duplicate),
            reorder: chance(&r.reorder),
        }
    }
}

/// Attaches interface `key` to link `lname`: a declared interface keeps its MTU unless that
/// is the default (then it takes the link's); an undeclared one is created.
fn attach_link(b: &mut LabDraft, key: &EndpointKey, lname: &LinkName, mtu: u32, at: &Origin) {
    let (ni, vi, iface) = key;
    let lab = b.lab.0.clone();
    let bvm = &mut b.nodes[*ni].vms[*vi];
    let id = bvm.vm.id.clone();
    match bvm.vm.interfaces.iter_mut().find(|i| i.name.0 == *iface) {
        Some(i) => {
            i.attach = Attachment::Link(lname.clone());
            if i.mtu == DEFAULT_MTU {
                i.mtu = mtu;
            }
        }
        None => {
            bvm.vm.interfaces.push(Interface {
                name: IfaceName(iface.clone()),
                attach: Attachment::Link(lname.clone()),
                addresses: Vec::new(),
                mac: MacAddr::derived(&lab, &id.node.0, &id.vm.0, iface),
                mac_explicit: false,
                mtu,
                vlan: None,
                gateway: None,
                no_gateway: false,
            });
            bvm.ifaces.push(InterfaceDecl {
                at: at.clone(),
                explicit_addresses: true,
                raw_addresses: None,
            });
        }
    }
}
