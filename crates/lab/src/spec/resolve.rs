//! Resolution: raw lab file → validated [`Lab`]s, once, in this order: defaults → template
//! (recursively) → node → VM. Every mistake is collected with its position and fix; nothing
//! stops at the first one.

use super::error::{suggest, Path, SpecError, SpecErrors};
use super::model::*;
use super::parse::{self, Source};
use super::raw::*;
use super::templates;
use super::units::MemMib;
use indexmap::IndexMap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path as FsPath, PathBuf};

/// Default image of a VM when nothing says otherwise.
pub const DEFAULT_IMAGE: &str = "tiny";
/// Default vCPUs.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory.
pub const DEFAULT_MEMORY: MemMib = MemMib(128);
/// Default node-network subnet.
pub const DEFAULT_NODE_SUBNET: &str = "172.31.0.0/24";
/// Default MTU.
pub const DEFAULT_MTU: u32 = 1500;
/// First host number given to VMs on a node network.
const NODE_NET_FIRST: u128 = 10;

/// Where a value was written: source index and path.
#[derive(Debug, Clone)]
struct Origin {
    src: usize,
    path: Path,
}

#[derive(Debug, Clone)]
struct O<T> {
    v: T,
    at: Origin,
}

#[derive(Debug, Clone, Default)]
struct MVm {
    at: Option<Origin>,
    description: Option<O<String>>,
    image: Option<O<String>>,
    vcpus: Option<O<u32>>,
    memory: Option<O<MemMib>>,
    kernel: Option<O<String>>,
    interfaces: IndexMap<String, O<RawInterface>>,
    routes: Vec<O<RawRoute>>,
    run: Option<O<Vec<RawService>>>,
    files: IndexMap<String, O<RawFile>>,
    env: IndexMap<String, O<String>>,
}

#[derive(Debug, Clone, Default)]
struct MNodeDef {
    description: Option<String>,
    template: Option<String>,
    vms: IndexMap<String, MVm>,
    subnet: Option<O<String>>,
    interface: Option<O<String>>,
    mtu: Option<O<u32>>,
    addresses: IndexMap<String, O<String>>,
    links: Vec<O<RawLink>>,
}

/// The parsed lab file, before resolution.
#[derive(Debug, Clone)]
pub struct LabFile {
    /// The raw document (after error recovery).
    pub raw: RawLab,
    /// The positioned source.
    pub source: Source,
    /// Directory of the file, for relative `files:` sources.
    pub base_dir: Option<PathBuf>,
}

/// Parses a lab file's text (named `file` in errors). Structural errors are all reported.
pub fn parse_lab(file: &str, text: &str) -> Result<LabFile, SpecErrors> {
    let (v, errors) = parse::parse::<RawLab>(file, text);
    match v {
        Some((raw, source)) if errors.is_empty() => Ok(LabFile {
            raw,
            source,
            base_dir: None,
        }),
        _ => Err(SpecErrors::sorted(errors)),
    }
}

/// Parses and resolves a lab file's text. A file with `copies:` gives one lab per copy.
pub fn load_str(file: &str, text: &str, host: &HostLimits) -> Result<Vec<Lab>, SpecErrors> {
    load_with_base(file, text, None, host)
}

/// Reads, parses and resolves a lab file; relative `files:` sources are taken from its
/// directory.
pub fn load_file(path: &FsPath, host: &HostLimits) -> Result<Vec<Lab>, SpecErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecErrors(vec![SpecError {
            file: file.clone(),
            pos: Default::default(),
            path: Path::root(),
            message: format!("cannot read the lab file: {e}"),
            fix: Some("check the path".into()),
            limit: None,
        }])
    })?;
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                FsPath::new(".")
            } else {
                p
            }
        })
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    load_with_base(&file, &text, base, host)
}

/// Like [`load_str`] for a file expected to hold one lab (no `copies:`).
pub fn load_one(file: &str, text: &str, host: &HostLimits) -> Result<Lab, SpecErrors> {
    let mut labs = load_str(file, text, host)?;
    if labs.len() != 1 {
        return Err(SpecErrors(vec![SpecError {
            file: file.into(),
            pos: Default::default(),
            path: Path::parse("copies"),
            message: format!("this file makes {} labs, one was expected", labs.len()),
            fix: Some("use load_str for files with copies".into()),
            limit: None,
        }]));
    }
    Ok(labs.remove(0))
}

fn load_with_base(
    file: &str,
    text: &str,
    base_dir: Option<PathBuf>,
    host: &HostLimits,
) -> Result<Vec<Lab>, SpecErrors> {
    let (v, mut errors) = parse::parse::<RawLab>(file, text);
    let Some((raw, source)) = v else {
        return Err(SpecErrors::sorted(errors));
    };
    let lf = LabFile {
        raw,
        source,
        base_dir,
    };
    match resolve(&lf, host) {
        Ok(labs) if errors.is_empty() => Ok(labs),
        Ok(_) => Err(SpecErrors::sorted(errors)),
        Err(e) => {
            // An entry with a structural error was dropped; what its parent then lacks
            // (an interface "connected to nothing" after `netwrok:`) is a consequence,
            // not another mistake.
            let damaged: Vec<(String, Path)> = errors
                .iter()
                .filter(|e| !e.path.is_root())
                .map(|e| (e.file.clone(), e.path.parent()))
                .collect();
            errors.extend(
                e.0.into_iter()
                    .filter(|x| !damaged.iter().any(|(f, p)| *f == x.file && *p == x.path)),
            );
            Err(SpecErrors::sorted(errors))
        }
    }
}

/// Resolves a parsed lab file into its labs (one, or one per copy).
pub fn resolve(lf: &LabFile, host: &HostLimits) -> Result<Vec<Lab>, SpecErrors> {
    let mut r = Resolver {
        sources: vec![lf.source.clone()],
        errors: Vec::new(),
        host: *host,
        raw: &lf.raw,
        base_dir: lf.base_dir.clone(),
        builtin: HashMap::new(),
    };
    let copies = r.copies();
    let mut labs = Vec::new();
    let mut reported = false;
    for c in &copies {
        let before = r.errors.len();
        let lab = r.lab(c.as_ref());
        // Copies only differ in names: report the first copy's errors only.
        if reported {
            r.errors.truncate(before);
        }
        reported = true;
        labs.extend(lab);
    }
    r.check_copies_ports(&labs);
    if labs.len() > 1 {
        let total: u64 = labs.iter().map(|l| l.total_memory().0).sum();
        if total > host.memory.0 && labs.iter().all(|l| l.total_memory() <= host.memory) {
            let at = r.lab_at(p("copies"));
            r.err(
                &at,
                format!(
                    "the {} copies need {} of memory together, the host has {}",
                    labs.len(),
                    MemMib(total),
                    host.memory
                ),
                "make fewer copies or give the VMs less memory".to_string(),
            );
        }
    }
    if r.errors.is_empty() {
        Ok(labs)
    } else {
        Err(SpecErrors::sorted(r.errors))
    }
}

struct Resolver<'a> {
    sources: Vec<Source>,
    errors: Vec<SpecError>,
    host: HostLimits,
    raw: &'a RawLab,
    base_dir: Option<PathBuf>,
    /// Builtin template name → source index.
    builtin: HashMap<String, (usize, RawNode)>,
}

fn p(s: &str) -> Path {
    Path::parse(s)
}

impl Resolver<'_> {
    fn err(&mut self, at: &Origin, message: String, fix: impl Into<Option<String>>) {
        let e = self.sources[at.src].error(&at.path, message, fix.into());
        self.errors.push(e);
    }

    fn key_err(&mut self, at: &Origin, message: String, fix: impl Into<Option<String>>) {
        let e = self.sources[at.src].key_error(&at.path, message, fix.into());
        self.errors.push(e);
    }

    fn lab_at(&self, path: Path) -> Origin {
        Origin { src: 0, path }
    }

    fn copies(&mut self) -> Vec<Option<(String, u32)>> {
        let Some(c) = &self.raw.copies else {
            return vec![None];
        };
        let at = self.lab_at(p("copies"));
        match (&c.count, &c.names) {
            (Some(_), Some(_)) => {
                self.err(
                    &at,
                    "both `count` and `names` given".into(),
                    "keep one of them".to_string(),
                );
                vec![None]
            }
            (None, None) => {
                self.err(
                    &at,
                    "copies need `count` or `names`".into(),
                    "add `count: 3` or `names: [alice, bob]`".to_string(),
                );
                vec![None]
            }
            (Some(n), None) => {
                if *n == 0 || *n > 200 {
                    let at = self.lab_at(p("copies.count"));
                    self.err(
                        &at,
                        format!("{n} copies: between 1 and 200 are allowed"),
                        "change the count".to_string(),
                    );
                    return vec![None];
                }
                (1..=*n).map(|i| Some((i.to_string(), i - 1))).collect()
            }
            (None, Some(names)) => {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    let at = self.lab_at(p("copies.names").index(i));
                    if let Err(why) = check_name(n, 24, true) {
                        self.err(&at, format!("copy name '{n}' {why}"), None);
                    } else if !seen.insert(n.clone()) {
                        self.err(
                            &at,
                            format!("copy name '{n}' given twice"),
                            "names must be unique".to_string(),
                        );
                    }
                    out.push(Some((n.clone(), i as u32)));
                }
                if out.is_empty() {
                    self.err(
                        &at,
                        "no copy names".into(),
                        "list at least one name".to_string(),
                    );
                    return vec![None];
                }
                out
            }
        }
    }

    fn lab(&mut self, copy: Option<&(String, u32)>) -> Option<Lab> {
        let raw = self.raw;
        let name_at = self.lab_at(p("name"));
        let base_name = raw.name.clone();
        if let Err(why) = check_name(&base_name, 40, true) {
            self.err(
                &name_at,
                format!("lab name '{base_name}' {why}"),
                "use lowercase letters, digits and '-', e.g. `name: my-lab`".to_string(),
            );
        }
        let (name, copy_info) = match copy {
            None => (base_name.clone(), None),
            Some((c, i)) => {
                let n = format!("{base_name}-{c}");
                if n.len() > 40 {
                    let at = self.lab_at(p("copies"));
                    self.err(
                        &at,
                        format!("copy lab name '{n}' is longer than 40 bytes"),
                        "use a shorter lab name or shorter copy names".to_string(),
                    );
                }
                (
                    n,
                    Some(CopyInfo {
                        of: LabName(base_name.clone()),
                        name: c.clone(),
                        index: *i,
                    }),
                )
            }
        };
        let lab_name = LabName(name);
        let id = LabId::of(&lab_name);

        let networks = self.networks();
        let (uplink, uplinked) = self.uplink(&networks);

        // Nodes: merge template chains.
        let mut merged: Vec<(String, Origin, MNodeDef)> = Vec::new();
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
            let at = self.lab_at(p("templates").key(tname));
            if let Err(why) = check_name(tname, 32, false) {
                self.key_err(&at, format!("template name '{tname}' {why}"), None);
            }
        }
        for (nname, rn) in &raw.nodes {
            let at = self.lab_at(p("nodes").key(nname));
            if let Err(why) = check_name(nname, 32, false) {
                self.key_err(
                    &at,
                    format!("node name '{nname}' {why}"),
                    "node names are hostnames: lowercase letters, digits and '-'".to_string(),
                );
            }
            let mut def = MNodeDef::default();
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

        let mut b = Build {
            lab: lab_name.clone(),
            networks,
            uplinked,
            broken,
            ..Default::default()
        };
        // Node networks, VMs and explicit interfaces.
        for (nname, at, def) in &merged {
            self.node(&mut b, nname, at, def);
        }
        // Links (lab level, then node level).
        for (i, l) in raw.links.iter().enumerate() {
            let at = self.lab_at(p("links").index(i));
            self.link(&mut b, l, &at, None);
        }
        for (nname, _, def) in &merged {
            for l in &def.links {
                self.link(&mut b, &l.v, &l.at, Some(nname));
            }
        }
        self.addresses(&mut b);
        self.gateways_and_routes(&mut b);
        let publish = self.publish(&mut b, copy.map_or(0, |c| c.1));
        lab_hosts(&mut b);
        self.host_totals(&b);

        let nodes = b
            .nodes
            .into_iter()
            .map(|n| Node {
                name: n.name,
                description: n.description,
                template: n.template,
                network: n.network,
                vms: n.vms.into_iter().map(|v| v.vm).collect(),
            })
            .collect();
        Some(Lab {
            name: lab_name,
            id,
            description: raw.description.clone(),
            copy: copy_info,
            nodes,
            networks: b.networks.into_iter().map(|(n, _)| n).collect(),
            links: b.links.into_iter().map(|(l, _)| l).collect(),
            uplink,
            publish,
            base_dir: self.base_dir.clone(),
        })
    }

    // ---------------------------------------------------------------- networks

    fn networks(&mut self) -> Vec<(Network, Origin)> {
        let mut out: Vec<(Network, Origin)> = Vec::new();
        for (name, rn) in &self.raw.networks {
            let at = self.lab_at(p("networks").key(name));
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
            let gateway = rn.gateway.as_ref().and_then(|g| {
                let at = sub("gateway");
                match g.parse::<IpAddr>() {
                    Err(_) => {
                        self.err(
                            &at,
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
                                &at,
                                if s.is_empty() {
                                    format!("gateway {ip} on a network without a subnet")
                                } else {
                                    format!("gateway {ip} is outside the network's subnet {s}")
                                },
                                "give the network a subnet and the gateway an address in it"
                                    .to_string(),
                            );
                        }
                        Some(ip)
                    }
                }
            });
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

    fn subnet(&mut self, s: &str, at: &Origin, v4: bool) -> Option<Cidr> {
        match s.parse::<Cidr>() {
            Err(e) => {
                self.err(
                    at,
                    e,
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

    fn mtu(&mut self, m: Option<u32>, at: &Origin) -> u32 {
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

    fn uplink(&mut self, nets: &[(Network, Origin)]) -> (Vec<NetName>, HashSet<String>) {
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
                    let at = self.lab_at(p("uplink.networks").index(i));
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

    // ---------------------------------------------------------------- templates

    fn template(&mut self, name: &str) -> Option<(usize, RawNode, Path)> {
        if let Some(t) = self.raw.templates.get(name) {
            return Some((0, t.clone(), p("templates").key(name)));
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
        def: &mut MNodeDef,
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
            let nat = o("node_network");
            let sub = |k: &str| Origin {
                src: nat.src,
                path: nat.path.key(k),
            };
            if let Some(s) = &nn.subnet {
                def.subnet = Some(O {
                    v: s.clone(),
                    at: sub("subnet"),
                });
            }
            if let Some(s) = &nn.interface {
                def.interface = Some(O {
                    v: s.clone(),
                    at: sub("interface"),
                });
            }
            if let Some(m) = nn.mtu {
                def.mtu = Some(O {
                    v: m,
                    at: sub("mtu"),
                });
            }
            for (vm, a) in &nn.addresses {
                def.addresses.insert(
                    vm.clone(),
                    O {
                        v: a.clone(),
                        at: Origin {
                            src: nat.src,
                            path: nat.path.key("addresses").key(vm),
                        },
                    },
                );
            }
        }
        for (i, l) in rn.links.iter().enumerate() {
            def.links.push(O {
                v: l.clone(),
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

    // ---------------------------------------------------------------- nodes and VMs

    fn node(&mut self, b: &mut Build, nname: &str, at: &Origin, def: &MNodeDef) {
        let node = NodeName(nname.to_string());
        // The node network.
        let network = if def.vms.len() >= 2 {
            let subnet = match &def.subnet {
                Some(s) => self.subnet(&s.v, &s.at, true),
                None => DEFAULT_NODE_SUBNET.parse().ok(),
            };
            let ifname = match &def.interface {
                Some(i) => {
                    if let Err(why) = check_ifname(&i.v) {
                        self.err(&i.at, format!("interface name '{}' {why}", i.v), None);
                    }
                    i.v.clone()
                }
                None => "eth0".to_string(),
            };
            let mtu = match &def.mtu {
                Some(m) => self.mtu(Some(m.v), &m.at),
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
        } else {
            None
        };

        // Node-network addresses.
        let mut node_addr: HashMap<String, Cidr> = HashMap::new();
        if let Some(nn) = &network {
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
                if let Some(c) = self.address(&a.v, Some(nn.subnet), &a.at) {
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
        let mut hosts: Vec<(String, IpAddr)> = Vec::new();
        for vm in def.vms.keys() {
            if let Some(c) = node_addr.get(vm) {
                hosts.push((vm.clone(), c.addr));
                hosts.push((format!("{vm}.{nname}"), c.addr));
            }
        }

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
        b.nodes.push(BNode {
            name: node,
            description: def.description.clone(),
            template: def.template.clone(),
            network,
            vms,
            at: at.clone(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn vm(
        &mut self,
        b: &mut Build,
        id: VmRef,
        m: &MVm,
        at: &Origin,
        nn: Option<&NodeNetwork>,
        node_addr: Option<&Cidr>,
        hosts: &[(String, IpAddr)],
    ) -> BVm {
        let d = self.raw.defaults.clone().unwrap_or_default();
        let image = m
            .image
            .as_ref()
            .map(|o| o.v.clone())
            .or(d.image.clone())
            .unwrap_or_else(|| DEFAULT_IMAGE.into());
        let vcpus = match &m.vcpus {
            Some(o) => self.vcpus(o.v, &o.at),
            None => match d.vcpus {
                Some(v) => self.vcpus(v, &self.lab_at(p("defaults.vcpus"))),
                None => DEFAULT_VCPUS,
            },
        };
        let memory = match &m.memory {
            Some(o) => self.memory(o.v, &o.at),
            None => match d.memory {
                Some(v) => self.memory(v, &self.lab_at(p("defaults.memory"))),
                None => DEFAULT_MEMORY,
            },
        };
        let kernel = m
            .kernel
            .as_ref()
            .map(|o| o.v.clone())
            .or(d.kernel.clone())
            .unwrap_or_else(|| "default".into());
        let image_at = m
            .image
            .as_ref()
            .map_or_else(|| self.lab_at(p("defaults.image")), |o| o.at.clone());
        if let Err(why) = check_image(&image) {
            self.err(
                &image_at,
                format!("image '{image}' {why}"),
                "name an image of the store (`kobako image ls`: tiny, debian-web ...) or give a path with '/'"
                    .to_string(),
            );
        }
        let kernel_at = m
            .kernel
            .as_ref()
            .map_or_else(|| self.lab_at(p("defaults.kernel")), |o| o.at.clone());
        if kernel != "default" && !kernel.contains('/') {
            self.err(
                &kernel_at,
                format!("kernel '{kernel}' is neither `default` nor a path"),
                "write `default`, or a path to a vmlinux/bzImage like ./vmlinux".to_string(),
            );
        }

        let mut interfaces = Vec::new();
        let mut iface_at = Vec::new();
        if let Some(nn) = nn {
            interfaces.push(Interface {
                name: nn.interface.clone(),
                attach: Attachment::NodeNetwork,
                addresses: node_addr.into_iter().copied().collect(),
                mac: MacAddr::derived(&b.lab.0, &id.node.0, &id.vm.0, &nn.interface.0),
                mac_explicit: false,
                mtu: nn.mtu,
                vlan: None,
                gateway: None,
                no_gateway: true,
            });
            iface_at.push(IfaceInfo {
                at: at.clone(),
                explicit_addresses: true,
                raw_addresses: None,
            });
        }
        for (iname, ri) in &m.interfaces {
            let iat = &ri.at;
            if let Err(why) = check_ifname(iname) {
                self.key_err(
                    iat,
                    format!("interface name '{iname}' {why}"),
                    "use a short name like eth1".to_string(),
                );
            }
            if nn.is_some_and(|n| n.interface.0 == *iname) {
                self.key_err(
                    iat,
                    format!("interface '{iname}' is the node network's interface"),
                    "use another name (eth1, eth2 ...), or rename node_network.interface"
                        .to_string(),
                );
                continue;
            }
            let r = &ri.v;
            let sub = |k: &str| Origin {
                src: iat.src,
                path: iat.path.key(k),
            };
            let (attach, vlan, net_mtu) = match &r.network {
                Some(n) => match b.networks.iter().find(|(x, _)| x.name.0 == *n) {
                    Some((x, _)) => (Some(Attachment::Network(x.name.clone())), x.vlan, x.mtu),
                    None => {
                        let names: Vec<&str> =
                            b.networks.iter().map(|(x, _)| x.name.as_str()).collect();
                        self.err(
                            &sub("network"),
                            format!("no network '{n}'{}", suggest(n, names.iter().copied())),
                            Some(if names.is_empty() {
                                "declare it under `networks:`".to_string()
                            } else {
                                format!("networks: {}", names.join(", "))
                            }),
                        );
                        (None, None, DEFAULT_MTU)
                    }
                },
                None => (None, None, DEFAULT_MTU),
            };
            let mac = match &r.mac {
                Some(s) => match s.parse::<MacAddr>() {
                    Ok(mac) if !mac.is_unicast() => {
                        self.err(
                            &sub("mac"),
                            format!("{mac} is a multicast address"),
                            "clear bit 0 of the first octet (e.g. 02:...)".to_string(),
                        );
                        Some(mac)
                    }
                    Ok(mac) => Some(mac),
                    Err(e) => {
                        self.err(&sub("mac"), e, None);
                        None
                    }
                },
                None => None,
            };
            let gateway = r.gateway.as_ref().and_then(|g| match g.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.err(
                        &sub("gateway"),
                        format!("'{g}' is not an IP address"),
                        "write an address like 10.0.0.1".to_string(),
                    );
                    None
                }
            });
            let mtu = match r.mtu {
                Some(x) => self.mtu(Some(x), &sub("mtu")),
                None => net_mtu,
            };
            interfaces.push(Interface {
                name: IfaceName(iname.clone()),
                // A link attachment is filled in when links are resolved.
                attach: attach.unwrap_or(Attachment::Link(LinkName(String::new()))),
                addresses: Vec::new(),
                mac: mac.unwrap_or_else(|| MacAddr::derived(&b.lab.0, &id.node.0, &id.vm.0, iname)),
                mac_explicit: mac.is_some(),
                mtu,
                vlan,
                gateway,
                no_gateway: r.no_gateway,
            });
            iface_at.push(IfaceInfo {
                at: iat.clone(),
                explicit_addresses: r.addresses.is_some(),
                raw_addresses: r.addresses.clone(),
            });
        }

        // Services.
        let mut services = Vec::new();
        if let Some(run) = &m.run {
            let mut names = HashSet::new();
            for (i, s) in run.v.iter().enumerate() {
                let sat = Origin {
                    src: run.at.src,
                    path: run.at.path.index(i),
                };
                let (name, command, restart) = match s {
                    RawService::Command(c) => (None, c.clone(), Restart::Always),
                    RawService::Full(f) => (
                        f.name.clone(),
                        f.command.clone(),
                        f.restart.unwrap_or_default(),
                    ),
                };
                if command.trim().is_empty() {
                    self.err(
                        &sat,
                        "empty command".into(),
                        "write the command to run".to_string(),
                    );
                }
                let name = match name {
                    Some(n) => {
                        if let Err(why) = check_name(&n, 32, true) {
                            self.err(&sat, format!("service name '{n}' {why}"), None);
                        }
                        if !names.insert(n.clone()) {
                            self.err(
                                &sat,
                                format!("service name '{n}' used twice in {id}"),
                                "give each service its own name".to_string(),
                            );
                        }
                        n
                    }
                    None => {
                        let base =
                            service_name(&command).unwrap_or_else(|| format!("svc{}", i + 1));
                        let mut n = base.clone();
                        let mut k = 2;
                        while !names.insert(n.clone()) {
                            n = format!("{base}-{k}");
                            k += 1;
                        }
                        n
                    }
                };
                services.push(Service {
                    name,
                    command,
                    restart,
                });
            }
        }

        // Files.
        let mut files = Vec::new();
        for (dst, f) in &m.files {
            let fat = &f.at;
            if !dst.starts_with('/') {
                self.key_err(
                    fat,
                    format!("guest path '{dst}' is not absolute"),
                    Some(format!(
                        "write it from the root, e.g. /{}",
                        dst.trim_start_matches("./")
                    )),
                );
            }
            let (src, content, mode) = match &f.v {
                RawFile::Src(s) => (Some(s.clone()), None, None),
                RawFile::Full(x) => (x.src.clone(), x.content.clone(), x.mode.clone()),
            };
            let source = match (src, content) {
                (Some(_), Some(_)) => {
                    self.err(
                        fat,
                        "both `src` and `content` given".into(),
                        "keep one".to_string(),
                    );
                    continue;
                }
                (None, None) => {
                    self.err(
                        fat,
                        "a file needs `src` (host path) or `content`".into(),
                        "add one of them".to_string(),
                    );
                    continue;
                }
                (Some(s), None) => {
                    if fat.src != 0 {
                        self.err(
                            fat,
                            "a template shipped with kobako cannot copy host files".into(),
                            "use `content:`".to_string(),
                        );
                    }
                    let pth = PathBuf::from(&s);
                    let full = match (&self.base_dir, pth.is_absolute()) {
                        (Some(base), false) => base.join(pth),
                        _ => pth,
                    };
                    // Read from disk files only: a lab given as text may come from elsewhere.
                    if self.base_dir.is_some() && !full.is_file() {
                        self.err(
                            fat,
                            format!("host file {} does not exist", full.display()),
                            "fix the path (relative paths start at the lab file's directory)"
                                .to_string(),
                        );
                    }
                    FileSource::Host(full)
                }
                (None, Some(c)) => FileSource::Inline(c),
            };
            let mode = match mode {
                None => 0o644,
                Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
                    Ok(v) if v <= 0o7777 => v,
                    _ => {
                        self.err(
                            &Origin {
                                src: fat.src,
                                path: fat.path.key("mode"),
                            },
                            format!("'{m}' is not an octal file mode"),
                            "write it like \"0644\" or \"0755\"".to_string(),
                        );
                        0o644
                    }
                },
            };
            files.push(FileCopy {
                source,
                dst: dst.clone(),
                mode,
            });
        }

        let mut env = BTreeMap::new();
        for (k, v) in &m.env {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                self.key_err(
                    &v.at,
                    format!("'{k}' is not an environment variable name"),
                    "use letters, digits and '_', not starting with a digit".to_string(),
                );
            }
            env.insert(k.clone(), v.v.clone());
        }

        let mut routes = Vec::new();
        for r in &m.routes {
            let sub = |k: &str| Origin {
                src: r.at.src,
                path: r.at.path.key(k),
            };
            let to = if r.v.to == "default" {
                Some(Cidr {
                    addr: IpAddr::V4(0.into()),
                    prefix: 0,
                })
            } else {
                match r.v.to.parse::<Cidr>() {
                    Ok(c) => Some(c.network()),
                    Err(e) => {
                        self.err(
                            &sub("to"),
                            e,
                            "write `default` or a subnet like 10.2.0.0/24".to_string(),
                        );
                        None
                    }
                }
            };
            let via = match r.v.via.parse::<IpAddr>() {
                Ok(v) => Some(v),
                Err(_) => {
                    self.err(
                        &sub("via"),
                        format!("'{}' is not an IP address", r.v.via),
                        "write the next hop's address, like 10.0.0.1".to_string(),
                    );
                    None
                }
            };
            if let (Some(to), Some(via)) = (to, via) {
                routes.push((
                    Route {
                        to,
                        via,
                        from_gateway: false,
                    },
                    r.at.clone(),
                ));
            }
        }

        BVm {
            vm: Vm {
                id,
                description: m.description.as_ref().map(|o| o.v.clone()),
                image,
                vcpus,
                memory,
                kernel,
                interfaces,
                routes: Vec::new(),
                services,
                files,
                env,
                hosts: hosts.to_vec(),
            },
            at: at.clone(),
            ifaces: iface_at,
            routes,
        }
    }

    fn vcpus(&mut self, v: u32, at: &Origin) -> u32 {
        if v == 0 {
            self.err(
                at,
                "0 vCPUs".into(),
                "a VM needs at least 1 vCPU".to_string(),
            );
            return 1;
        }
        if v > self.host.cpus {
            self.err(
                at,
                format!("{v} vCPUs, but the host has {}", self.host.cpus),
                Some(format!("use at most {} vCPUs", self.host.cpus)),
            );
        }
        v
    }

    fn memory(&mut self, v: MemMib, at: &Origin) -> MemMib {
        if v < MIN_MEMORY {
            self.err(
                at,
                format!("{v} of memory is too little to boot"),
                Some(format!("use at least {MIN_MEMORY}")),
            );
        } else if v > self.host.memory {
            self.err(
                at,
                format!("{v} of memory, but the host has {}", self.host.memory),
                Some(format!("use at most {}", self.host.memory)),
            );
        }
        v
    }

    /// Parses an interface address; without a prefix, the subnet's prefix is used.
    fn address(&mut self, s: &str, subnet: Option<Cidr>, at: &Origin) -> Option<Cidr> {
        let c = if s.contains('/') {
            match s.parse::<Cidr>() {
                Ok(c) => c,
                Err(e) => {
                    self.err(at, e, "write an address like 10.0.0.2/24".to_string());
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

    // ---------------------------------------------------------------- links

    fn endpoint(
        &mut self,
        b: &Build,
        s: &str,
        at: &Origin,
        node: Option<&str>,
    ) -> Option<(usize, usize, String)> {
        let form = if node.is_some() {
            "VM:IFACE"
        } else {
            "NODE.VM:IFACE"
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

    fn link(&mut self, b: &mut Build, l: &RawLink, at: &Origin, node: Option<&str>) {
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
        // Each endpoint: its interface must be free (not on a network or another link).
        let mut ok = true;
        for ((ni, vi, iface), eat) in &ends {
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
        if !ok {
            return;
        }
        for ((ni, vi, iface), eat) in &ends {
            b.used_endpoints
                .insert((*ni, *vi, iface.clone()), eat.clone());
        }
        let ep = |b: &Build, (ni, vi, iface): &(usize, usize, String)| Endpoint {
            vm: b.nodes[*ni].vms[*vi].vm.id.clone(),
            iface: IfaceName(iface.clone()),
        };
        let a = ep(b, &ends[0].0);
        let z = ep(b, &ends[1].0);
        let (name, explicit) = match &l.name {
            Some(n) => {
                let valid = !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
                if !valid {
                    self.err(
                        &sub("name"),
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
                &sub("name"),
                format!("link name '{name}' used twice (first at line {line})"),
                "give each link its own `name:`".to_string(),
            );
        }
        let lname = LinkName(name);
        // Attach (or create) the interfaces.
        for (ni, vi, iface) in ends.iter().map(|(x, _)| x) {
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
                    bvm.ifaces.push(IfaceInfo {
                        at: at.clone(),
                        explicit_addresses: true,
                        raw_addresses: None,
                    });
                }
            }
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

    // ---------------------------------------------------------------- addresses

    fn addresses(&mut self, b: &mut Build) {
        // Interfaces declared without a network that no link uses.
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
        // Explicit addresses first (they reserve), then automatic ones, in file order.
        let mut owner: HashMap<IpAddr, (String, Origin)> = HashMap::new();
        let net_subnets: HashMap<String, (Option<Cidr>, Option<Cidr>)> = b
            .networks
            .iter()
            .map(|(n, _)| (n.name.0.clone(), (n.subnet, n.subnet6)))
            .collect();
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
        // Explicit MACs must be unique in the lab.
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

    fn gateways_and_routes(&mut self, b: &mut Build) {
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
        let published: HashSet<String> = HashSet::new();
        let _ = published;
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
        for node in b.nodes.iter_mut() {
            for bv in node.vms.iter_mut() {
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
                        (None, Attachment::Network(n)) => b
                            .networks
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
                bv.vm.routes = routes;
            }
        }
    }

    // ---------------------------------------------------------------- publish, totals

    fn publish(&mut self, b: &mut Build, copy_index: u32) -> Vec<Publish> {
        let stride = self
            .raw
            .copies
            .as_ref()
            .and_then(|c| c.port_stride)
            .unwrap_or(1);
        let mut out: Vec<Publish> = Vec::new();
        for (i, s) in self.raw.publish.iter().enumerate() {
            let at = self.lab_at(p("publish").index(i));
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

    fn check_copies_ports(&mut self, labs: &[Lab]) {
        if labs.len() < 2 {
            return;
        }
        let mut seen: HashMap<(u16, Proto), &str> = HashMap::new();
        for l in labs {
            for pp in &l.publish {
                if let Some(prev) = seen.insert((pp.host_port, pp.proto), l.name.as_str()) {
                    let at = self.lab_at(p("copies"));
                    self.err(
                        &at,
                        format!(
                            "host port {} is published by copies '{prev}' and '{}'",
                            pp.host_port, l.name
                        ),
                        Some(format!(
                            "set copies.port_stride to at least {} (the number of published ports)",
                            l.publish.len()
                        )),
                    );
                    return;
                }
            }
        }
    }

    fn host_totals(&mut self, b: &Build) {
        let total: u64 = b
            .nodes
            .iter()
            .flat_map(|n| n.vms.iter())
            .map(|v| v.vm.memory.0)
            .sum();
        if total > self.host.memory.0
            && b.nodes
                .iter()
                .all(|n| n.vms.iter().all(|v| v.vm.memory <= self.host.memory))
        {
            let at = self.lab_at(p("nodes"));
            self.key_err(
                &at,
                format!(
                    "the lab's VMs need {} of memory together, the host has {}",
                    MemMib(total),
                    self.host.memory
                ),
                "give the VMs less memory or use fewer VMs".to_string(),
            );
        }
    }
}

/// Adds `vm.node` names of the other nodes' VMs (their first IPv4 address on a lab network)
/// to every VM's hosts, after its own node's names.
fn lab_hosts(b: &mut Build) {
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

/// A service name from its command: the program's file name (`exec python3 /x` → `python3`).
fn service_name(command: &str) -> Option<String> {
    let mut words = command.split_whitespace();
    let mut w = words.next()?;
    if w == "exec" {
        w = words.next()?;
    }
    let base = w.rsplit('/').next()?;
    let n: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(32)
        .collect();
    let n = n.trim_end_matches('-').to_string();
    check_name(&n, 32, true).ok().map(|_| n)
}

/// An image of the store (`[a-z0-9][a-z0-9._-]*`, at most 64 bytes, as `kobako image`
/// names them) or a path (anything with a '/').
fn check_image(s: &str) -> Result<(), String> {
    if s.contains('/') {
        return Ok(());
    }
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 bytes".into());
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err("must start with a lowercase letter or digit".into());
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        Some(c) => Err(format!("contains '{c}'")),
        None => Ok(()),
    }
}

fn list<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

fn merge_vm(m: &mut MVm, rv: &RawVm, at: &Origin) {
    let o = |k: &str| Origin {
        src: at.src,
        path: at.path.key(k),
    };
    m.at = Some(at.clone());
    macro_rules! set {
        ($f:ident) => {
            if let Some(v) = &rv.$f {
                m.$f = Some(O {
                    v: v.clone(),
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
    for (k, i) in &rv.interfaces {
        let iat = Origin {
            src: at.src,
            path: at.path.key("interfaces").key(k),
        };
        match m.interfaces.get_mut(k) {
            Some(prev) => {
                let mut v = prev.v.clone();
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
                *prev = O { v, at: iat };
            }
            None => {
                m.interfaces.insert(
                    k.clone(),
                    O {
                        v: i.clone(),
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
            .map(|(i, r)| O {
                v: r.clone(),
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
            O {
                v: f.clone(),
                at: Origin {
                    src: at.src,
                    path: at.path.key("files").key(k),
                },
            },
        );
    }
    for (k, e) in &rv.env {
        m.env.insert(
            k.clone(),
            O {
                v: e.0.clone(),
                at: Origin {
                    src: at.src,
                    path: at.path.key("env").key(k),
                },
            },
        );
    }
}

#[derive(Default)]
struct Build {
    lab: LabName,
    networks: Vec<(Network, Origin)>,
    uplinked: HashSet<String>,
    nodes: Vec<BNode>,
    links: Vec<(Link, Origin)>,
    used_endpoints: HashMap<(usize, usize, String), Origin>,
    /// Nodes whose template failed: references to their VMs are not reported again.
    broken: HashSet<String>,
}

struct BNode {
    name: NodeName,
    description: Option<String>,
    template: Option<String>,
    network: Option<NodeNetwork>,
    vms: Vec<BVm>,
    #[allow(dead_code)]
    at: Origin,
}

struct BVm {
    vm: Vm,
    #[allow(dead_code)]
    at: Origin,
    ifaces: Vec<IfaceInfo>,
    routes: Vec<(Route, Origin)>,
}

struct IfaceInfo {
    at: Origin,
    explicit_addresses: bool,
    raw_addresses: Option<Vec<String>>,
}
