//! Template chains: a node's template (recursively), then the node itself, merged into one
//! definition per node whose every value remembers where it was written.

use super::{spec_path, Located, Origin, Resolver};
use crate::spec::error::{suggest, Path};
use crate::spec::model::check_name;
use crate::spec::parse;
use crate::spec::raw::*;
use crate::spec::templates;
use crate::spec::units::{MemMib, Micros};
use indexmap::IndexMap;
use std::collections::HashSet;

/// A VM's fields after merging its template chain and node: the last layer that sets a field
/// wins, and each value keeps where that layer wrote it.
#[derive(Debug, Clone, Default)]
pub(super) struct MergedVm {
    /// The last layer that declared the VM.
    pub(super) at: Option<Origin>,
    pub(super) description: Option<Located<String>>,
    pub(super) image: Option<Located<String>>,
    pub(super) vcpus: Option<Located<u32>>,
    pub(super) memory: Option<Located<MemMib>>,
    pub(super) kernel: Option<Located<String>>,
    pub(super) interfaces: IndexMap<String, Located<RawInterface>>,
    pub(super) routes: Vec<Located<RawRoute>>,
    pub(super) run: Option<Located<Vec<RawService>>>,
    pub(super) files: IndexMap<String, Located<RawFile>>,
    pub(super) shares: IndexMap<String, Located<RawShare>>,
    pub(super) env: IndexMap<String, Located<String>>,
    pub(super) security: Option<Located<RawSecurity>>,
    pub(super) ready: Option<Located<Vec<RawReadyCheck>>>,
    pub(super) ready_timeout: Option<Located<Micros>>,
}

/// A node after merging its template chain (templates first, the node's own fields last).
#[derive(Debug, Clone, Default)]
pub(super) struct MergedNode {
    pub(super) description: Option<String>,
    /// The node's own template (the first of the chain).
    pub(super) template: Option<String>,
    pub(super) vms: IndexMap<String, MergedVm>,
    pub(super) subnet: Option<Located<String>>,
    pub(super) interface: Option<Located<String>>,
    pub(super) mtu: Option<Located<u32>>,
    pub(super) addresses: IndexMap<String, Located<String>>,
    pub(super) links: Vec<Located<RawLink>>,
}

impl Resolver<'_> {
    /// Every node of the lab with its template chain merged, in file order, and the nodes
    /// whose template could not be used (already reported). Checks node and template names.
    pub(super) fn merge_nodes(&mut self) -> (Vec<(String, Origin, MergedNode)>, HashSet<String>) {
        let raw = self.raw;
        let mut merged: Vec<(String, Origin, MergedNode)> = Vec::new();
        let mut broken: HashSet<String> = HashSet::new();
        if raw.nodes.is_empty() {
            let at = self.lab_at(Path::root());
            self.err(
                &at,
                "the lab has no nodes".into(),
                "add `nodes:` with at least one node".to_string(),
            );
        }
        for (tname, _) in &raw.templates {
            let at = self.lab_at(spec_path("templates").key(tname));
            if let Err(why) = check_name(tname, 32, false) {
                self.key_err(&at, format!("template name '{tname}' {why}"), None);
            }
        }
        for (nname, rn) in &raw.nodes {
            let at = self.lab_at(spec_path("nodes").key(nname));
            if let Err(why) = check_name(nname, 32, false) {
                self.key_err(
                    &at,
                    format!("node name '{nname}' {why}"),
                    "node names are hostnames: lowercase letters, digits and '-'".to_string(),
                );
            }
            let mut def = MergedNode::default();
            let template_ok = self.merge_node(&mut def, rn, &at, &mut Vec::new());
            if !template_ok {
                broken.insert(nname.clone());
            }
            if def.vms.is_empty() && template_ok {
                self.err(
                    &at,
                    format!("node '{nname}' has no VMs"),
                    "add `vms:` or a `template:`".to_string(),
                );
            }
            merged.push((nname.clone(), at, def));
        }
        (merged, broken)
    }

    /// Template `name`: the lab file's own first, then a shipped one (parsed once, added to
    /// the sources). Gives its source index, the template and its path there.
    fn template(&mut self, name: &str) -> Option<(usize, RawNode, Path)> {
        if let Some(t) = self.raw.templates.get(name) {
            return Some((0, t.clone(), spec_path("templates").key(name)));
        }
        if let Some((src, t)) = self.builtin.get(name) {
            return Some((*src, t.clone(), Path::root()));
        }
        let text = templates::builtin(name)?;
        let file = format!("<builtin>/{name}.yaml");
        let (v, errors) = parse::parse::<RawNode>(&file, text);
        self.errors.extend(errors);
        let (t, src) = v?;
        self.sources.push(src);
        let idx = self.sources.len() - 1;
        self.builtin.insert(name.to_string(), (idx, t.clone()));
        Some((idx, t, Path::root()))
    }

    /// Merges `rn` (at `at`) over `def`: its template first, then its own fields.
    /// False when a template could not be used (already reported).
    fn merge_node(
        &mut self,
        def: &mut MergedNode,
        rn: &RawNode,
        at: &Origin,
        chain: &mut Vec<String>,
    ) -> bool {
        let mut ok = true;
        if let Some(t) = &rn.template {
            let tat = Origin {
                src: at.src,
                path: at.path.key("template"),
            };
            if chain.contains(t) {
                self.err(
                    &tat,
                    format!("template '{t}' uses itself ({} → {t})", chain.join(" → ")),
                    "remove the `template:` that closes the loop".to_string(),
                );
                ok = false;
            } else {
                match self.template(t) {
                    None => {
                        let mut names: Vec<String> = self.raw.templates.keys().cloned().collect();
                        names.extend(templates::BUILTIN.iter().map(|(n, _)| n.to_string()));
                        self.err(
                            &tat,
                            format!(
                                "unknown template '{t}'{}",
                                suggest(t, names.iter().map(String::as_str))
                            ),
                            Some(format!("templates: {}", names.join(", "))),
                        );
                        ok = false;
                    }
                    Some((src, traw, tpath)) => {
                        chain.push(t.clone());
                        let tat = Origin { src, path: tpath };
                        ok &= self.merge_node(def, &traw, &tat, chain);
                        chain.pop();
                        def.template = Some(t.clone());
                    }
                }
            }
        }
        let o = |k: &str| Origin {
            src: at.src,
            path: at.path.key(k),
        };
        if rn.description.is_some() {
            def.description = rn.description.clone();
        }
        if let Some(nn) = &rn.node_network {
            merge_node_network(def, nn, &o("node_network"));
        }
        for (i, l) in rn.links.iter().enumerate() {
            def.links.push(Located {
                value: l.clone(),
                at: Origin {
                    src: at.src,
                    path: at.path.key("links").index(i),
                },
            });
        }
        for (vname, rv) in &rn.vms {
            let vat = Origin {
                src: at.src,
                path: at.path.key("vms").key(vname),
            };
            let m = def.vms.entry(vname.clone()).or_default();
            merge_vm(m, rv, &vat);
        }
        ok
    }
}

/// Merges VM `rv` (written at `at`) over `m`: scalars and `run`/`routes`/`ready` replace, interfaces
/// merge field by field, `files` and `env` by key.
fn merge_vm(m: &mut MergedVm, rv: &RawVm, at: &Origin) {
    let o = |k: &str| Origin {
        src: at.src,
        path: at.path.key(k),
    };
    m.at = Some(at.clone());
    macro_rules! set {
        ($f:ident) => {
            if let Some(v) = &rv.$f {
                m.$f = Some(Located {
                    value: v.clone(),
                    at: o(stringify!($f)),
                });
            }
        };
    }
    set!(description);
    set!(image);
    set!(vcpus);
    set!(memory);
    set!(kernel);
    set!(run);
    set!(security);
    set!(ready);
    set!(ready_timeout);
    for (k, i) in &rv.interfaces {
        let iat = Origin {
            src: at.src,
            path: at.path.key("interfaces").key(k),
        };
        match m.interfaces.get_mut(k) {
            Some(prev) => {
                let mut v = prev.value.clone();
                let n = i.clone();
                if n.network.is_some() {
                    v.network = n.network;
                }
                if n.addresses.is_some() {
                    v.addresses = n.addresses;
                }
                if n.mac.is_some() {
                    v.mac = n.mac;
                }
                if n.mtu.is_some() {
                    v.mtu = n.mtu;
                }
                if n.gateway.is_some() {
                    v.gateway = n.gateway;
                }
                v.no_gateway |= n.no_gateway;
                *prev = Located { value: v, at: iat };
            }
            None => {
                m.interfaces.insert(
                    k.clone(),
                    Located {
                        value: i.clone(),
                        at: iat,
                    },
                );
            }
        }
    }
    if !rv.routes.is_empty() {
        m.routes = rv
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Located {
                value: r.clone(),
                at: Origin {
                    src: at.src,
                    path: at.path.key("routes").index(i),
                },
            })
            .collect();
    }
    for (k, f) in &rv.files {
        m.files.insert(
            k.clone(),
            Located {
                value: f.clone(),
                at: Origin {
                    src: at.src,
                    path: at.path.key("files").key(k),
                },
            },
        );
    }
    for (k, f) in &rv.shares {
        m.shares.insert(
            k.clone(),
            Located {
                value: f.clone(),
                at: Origin {
                    src: at.src,
                    path: at.path.key("shares").key(k),
                },
            },
        );
    }
    for (k, e) in &rv.env {
        m.env.insert(
            k.clone(),
            Located {
                value: e.0.clone(),
                at: Origin {
                    src: at.src,
                    path: at.path.key("env").key(k),
                },
            },
        );
    }
}

/// Merges `node_network:` (written at `nat`) over the node's.
fn merge_node_network(def: &mut MergedNode, nn: &RawNodeNetwork, nat: &Origin) {
    let sub = |k: &str| Origin {
        src: nat.src,
        path: nat.path.key(k),
    };
    if let Some(s) = &nn.subnet {
        def.subnet = Some(Located {
            value: s.clone(),
            at: sub("subnet"),
        });
    }
    if let Some(s) = &nn.interface {
        def.interface = Some(Located {
            value: s.clone(),
            at: sub("interface"),
        });
    }
    if let Some(m) = nn.mtu {
        def.mtu = Some(Located {
            value: m,
            at: sub("mtu"),
        });
    }
    for (vm, a) in &nn.addresses {
        def.addresses.insert(
            vm.clone(),
            Located {
                value: a.clone(),
                at: Origin {
                    src: nat.src,
                    path: nat.path.key("addresses").key(vm),
                },
            },
        );
    }
}
