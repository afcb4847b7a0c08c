//! The topology as a picture: [`Lab::to_mermaid`] (a Mermaid flowchart) and [`Lab::to_dot`]
//! (Graphviz DOT), with VMs grouped by node, networks, links and their impairments.

use crate::spec::model::*;
use crate::spec::raw::LinkState;
use crate::spec::units::Percent;
use std::fmt::Write as _;

/// A Mermaid id: names hold only `[a-z0-9-]`, so `-` → `_` and `.` → `__` cannot collide.
fn mid(s: &str) -> String {
    s.replace('.', "__")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn vid(r: &VmRef) -> String {
    format!("vm_{}", mid(&r.to_string()))
}

fn vm_label(v: &Vm) -> String {
    format!(
        "{}<br/>{} · {} vCPU · {}",
        v.id.vm, v.image, v.vcpus, v.memory
    )
}

fn impair_text(i: &Impairment) -> String {
    let mut parts = Vec::new();
    if let Some(d) = i.delay {
        parts.push(format!("delay {d}"));
    }
    if let Some(j) = i.jitter {
        parts.push(format!("jitter {j}"));
    }
    let pct = |n: &str, c: &Option<Chance>, parts: &mut Vec<String>| {
        if let Some(c) = c {
            if c.correlation == Percent(0) {
                parts.push(format!("{n} {}", c.percent));
            } else {
                parts.push(format!("{n} {} ({} corr.)", c.percent, c.correlation));
            }
        }
    };
    pct("loss", &i.loss, &mut parts);
    if let Some(r) = i.rate {
        parts.push(format!("rate {r}"));
    }
    pct("corrupt", &i.corrupt, &mut parts);
    pct("duplicate", &i.duplicate, &mut parts);
    pct("reorder", &i.reorder, &mut parts);
    parts.join(", ")
}

fn addrs(i: &Interface) -> String {
    i.addresses
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Lab {
    /// The topology as a Mermaid flowchart: nodes as subgraphs of their VMs, networks as
    /// circles, links as edges labelled with interfaces and impairments.
    pub fn to_mermaid(&self) -> String {
        let mut s = String::from("flowchart LR\n");
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "  subgraph node_{}[\"node {}\"]",
                mid(n.name.as_str()),
                n.name
            );
            for v in &n.vms {
                let _ = writeln!(s, "    {}[\"{}\"]", vid(&v.id), vm_label(v));
            }
            if let Some(nn) = &n.network {
                let _ = writeln!(
                    s,
                    "    nodenet_{}((\"{}<br/>{}\"))",
                    mid(n.name.as_str()),
                    nn.interface,
                    nn.subnet
                );
                for v in &n.vms {
                    let _ = writeln!(s, "    {} --- nodenet_{}", vid(&v.id), mid(n.name.as_str()));
                }
            }
            s.push_str("  end\n");
        }
        for net in &self.networks {
            let mut label = net.name.to_string();
            if let Some(sn) = net.subnet {
                let _ = write!(label, "<br/>{sn}");
            }
            if let Some(v) = net.vlan {
                let _ = write!(label, "<br/>VLAN {v}");
            }
            let _ = writeln!(s, "  net_{}((\"{label}\"))", mid(net.name.as_str()));
        }
        for v in self.vms() {
            for i in &v.interfaces {
                if let Attachment::Network(n) = &i.attach {
                    let _ = writeln!(
                        s,
                        "  {} ---|\"{} {}\"| net_{}",
                        vid(&v.id),
                        i.name,
                        addrs(i),
                        mid(n.as_str())
                    );
                }
            }
        }
        for l in &self.links {
            let [a, b] = &l.endpoints;
            let mut label = format!("{}: {} ↔ {}", l.name, a.iface, b.iface);
            let imp = impair_text(&l.impair);
            if !imp.is_empty() {
                let _ = write!(label, "<br/>{imp}");
            }
            let edge = if l.state == LinkState::Down {
                "-.-"
            } else {
                "---"
            };
            let _ = writeln!(s, "  {} {edge}|\"{label}\"| {}", vid(&a.vm), vid(&b.vm));
        }
        if !self.uplink.is_empty() {
            s.push_str("  uplink{{\"host uplink (NAT)\"}}\n");
            for n in &self.uplink {
                let _ = writeln!(s, "  net_{} --- uplink", mid(n.as_str()));
            }
        }
        s
    }

    /// The topology in Graphviz DOT: a cluster per node, an ellipse per network.
    pub fn to_dot(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\\\""));
        let mut s = format!(
            "graph {} {{\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n",
            q(self.name.as_str())
        );
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "  subgraph {} {{\n    label={};",
                q(&format!("cluster_{}", n.name)),
                q(&format!("node {}", n.name))
            );
            for v in &n.vms {
                let _ = writeln!(
                    s,
                    "    {} [shape=box, label={}];",
                    q(&v.id.to_string()),
                    q(&format!(
                        "{}\\n{} · {} vCPU · {}",
                        v.id.vm, v.image, v.vcpus, v.memory
                    ))
                );
            }
            if let Some(nn) = &n.network {
                let id = format!("{}/node-network", n.name);
                let _ = writeln!(
                    s,
                    "    {} [shape=point, xlabel={}];",
                    q(&id),
                    q(&nn.subnet.to_string())
                );
                for v in &n.vms {
                    let _ = writeln!(s, "    {} -- {};", q(&v.id.to_string()), q(&id));
                }
            }
            s.push_str("  }\n");
        }
        for net in &self.networks {
            let mut label = net.name.to_string();
            if let Some(sn) = net.subnet {
                let _ = write!(label, "\\n{sn}");
            }
            if let Some(v) = net.vlan {
                let _ = write!(label, "\\nVLAN {v}");
            }
            let _ = writeln!(
                s,
                "  {} [shape=ellipse, label={}];",
                q(&format!("net:{}", net.name)),
                q(&label)
            );
        }
        for v in self.vms() {
            for i in &v.interfaces {
                if let Attachment::Network(n) = &i.attach {
                    let _ = writeln!(
                        s,
                        "  {} -- {} [label={}];",
                        q(&v.id.to_string()),
                        q(&format!("net:{n}")),
                        q(&format!("{} {}", i.name, addrs(i)))
                    );
                }
            }
        }
        for l in &self.links {
            let [a, b] = &l.endpoints;
            let mut label = format!("{}\\n{} ↔ {}", l.name, a.iface, b.iface);
            let imp = impair_text(&l.impair);
            if !imp.is_empty() {
                let _ = write!(label, "\\n{imp}");
            }
            let style = if l.state == LinkState::Down {
                ", style=dashed"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  {} -- {} [label={}{style}];",
                q(&a.vm.to_string()),
                q(&b.vm.to_string()),
                q(&label)
            );
        }
        s.push_str("}\n");
        s
    }
}
