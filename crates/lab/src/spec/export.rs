//! Exports of a resolved lab: Mermaid and Graphviz DOT graphs, and the lab as a lab file
//! again (`kobako save`). The lab file written back is self-contained: every value explicit
//! (addresses, node-network addresses, services with names), templates expanded, so it
//! resolves to the same model without the templates it came from.

use super::model::*;
use super::raw::*;
use super::units::Percent;
use indexmap::IndexMap;
use serde::ser::{self, Serialize};
use std::fmt::Write as _;
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter};

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

    /// The lab as raw types: every value explicit, templates expanded, no copies.
    pub fn to_raw(&self) -> RawLab {
        let mut nodes = IndexMap::new();
        for n in &self.nodes {
            let mut vms = IndexMap::new();
            for v in &n.vms {
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
                vms.insert(
                    v.id.vm.to_string(),
                    RawVm {
                        description: v.description.clone(),
                        image: Some(v.image.clone()),
                        vcpus: Some(v.vcpus),
                        memory: Some(v.memory),
                        kernel: Some(v.kernel.clone()),
                        interfaces,
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
                        files: v
                            .files
                            .iter()
                            .map(|f| {
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
                            })
                            .collect(),
                        env: v
                            .env
                            .iter()
                            .map(|(k, x)| (k.clone(), EnvValue(x.clone())))
                            .collect(),
                    },
                );
            }
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
            nodes.insert(
                n.name.to_string(),
                RawNode {
                    description: n.description.clone(),
                    template: None,
                    vms,
                    node_network,
                    links,
                },
            );
        }
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
            publish: self
                .publish
                .iter()
                .map(|p| {
                    format!(
                        "{}:{}:{}/{}",
                        p.host_port,
                        p.vm,
                        p.port,
                        if p.proto == Proto::Tcp { "tcp" } else { "udp" }
                    )
                })
                .collect(),
            copies: None,
        }
    }

    /// The lab as a lab file (YAML), for `kobako save`.
    pub fn to_yaml(&self) -> String {
        let raw = self.to_raw();
        let y = raw.serialize(YamlSer).expect("lab serializes");
        let mut out = String::new();
        {
            let mut e = YamlEmitter::new(&mut out);
            e.multiline_strings(true);
            e.dump(&y).expect("yaml emits");
        }
        let body = out.strip_prefix("---\n").unwrap_or(&out);
        format!(
            "# Lab '{}' as resolved by kobako (every value explicit).\n{body}\n",
            self.name
        )
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

// ------------------------------------------------------------------ serde → yaml_rust2::Yaml

/// Serializes into a `yaml_rust2::Yaml` tree (mapping order preserved).
struct YamlSer;

#[derive(Debug)]
struct SerError(String);

impl std::fmt::Display for SerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SerError {}
impl ser::Error for SerError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        SerError(msg.to_string())
    }
}

struct SeqSer(Vec<Yaml>);
struct MapSer(Hash, Option<Yaml>);

fn key_of(y: Yaml) -> Yaml {
    y
}

impl ser::Serializer for YamlSer {
    type Ok = Yaml;
    type Error = SerError;
    type SerializeSeq = SeqSer;
    type SerializeTuple = SeqSer;
    type SerializeTupleStruct = SeqSer;
    type SerializeTupleVariant = SeqSer;
    type SerializeMap = MapSer;
    type SerializeStruct = MapSer;
    type SerializeStructVariant = MapSer;

    fn serialize_bool(self, v: bool) -> Result<Yaml, SerError> {
        Ok(Yaml::Boolean(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Yaml, SerError> {
        Ok(Yaml::Integer(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Yaml, SerError> {
        i64::try_from(v)
            .map(Yaml::Integer)
            .map_err(|_| SerError(format!("{v} is too large")))
    }
    fn serialize_f32(self, v: f32) -> Result<Yaml, SerError> {
        Ok(Yaml::Real(v.to_string()))
    }
    fn serialize_f64(self, v: f64) -> Result<Yaml, SerError> {
        Ok(Yaml::Real(v.to_string()))
    }
    fn serialize_char(self, v: char) -> Result<Yaml, SerError> {
        Ok(Yaml::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Yaml, SerError> {
        Ok(Yaml::String(v.to_string()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Yaml, SerError> {
        Err(SerError("bytes are not supported".into()))
    }
    fn serialize_none(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Null)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<Yaml, SerError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Yaml, SerError> {
        Ok(Yaml::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Yaml, SerError> {
        Ok(Yaml::String(variant.to_string()))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Yaml, SerError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Yaml, SerError> {
        let mut h = Hash::new();
        h.insert(Yaml::String(variant.into()), v.serialize(YamlSer)?);
        Ok(Yaml::Hash(h))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<SeqSer, SerError> {
        Ok(SeqSer(Vec::new()))
    }
    fn serialize_tuple(self, _: usize) -> Result<SeqSer, SerError> {
        Ok(SeqSer(Vec::new()))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<SeqSer, SerError> {
        Ok(SeqSer(Vec::new()))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<SeqSer, SerError> {
        Err(SerError("tuple variants are not supported".into()))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapSer, SerError> {
        Ok(MapSer(Hash::new(), None))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<MapSer, SerError> {
        Ok(MapSer(Hash::new(), None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<MapSer, SerError> {
        Err(SerError("struct variants are not supported".into()))
    }
}

impl ser::SerializeSeq for SeqSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        self.0.push(v.serialize(YamlSer)?);
        Ok(())
    }
    fn end(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Array(self.0))
    }
}

impl ser::SerializeTuple for SeqSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Yaml, SerError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Yaml, SerError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for SeqSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Yaml, SerError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for MapSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> Result<(), SerError> {
        self.1 = Some(key_of(k.serialize(YamlSer)?));
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), SerError> {
        let k = self
            .1
            .take()
            .ok_or_else(|| SerError("value without key".into()))?;
        self.0.insert(k, v.serialize(YamlSer)?);
        Ok(())
    }
    fn end(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Hash(self.0))
    }
}

impl ser::SerializeStruct for MapSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        self.0
            .insert(Yaml::String(key.into()), v.serialize(YamlSer)?);
        Ok(())
    }
    fn end(self) -> Result<Yaml, SerError> {
        Ok(Yaml::Hash(self.0))
    }
}

impl ser::SerializeStructVariant for MapSer {
    type Ok = Yaml;
    type Error = SerError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        ser::SerializeStruct::serialize_field(self, key, v)
    }
    fn end(self) -> Result<Yaml, SerError> {
        ser::SerializeStruct::end(self)
    }
}
