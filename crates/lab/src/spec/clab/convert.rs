//! containerlab topology → kobako lab file ([`RawLab`]), every mistake located in the
//! containerlab file.

use super::images;
use super::raw::*;
use crate::spec::error::{suggest, Path, SpecError};
use crate::spec::parse::Source;
use crate::spec::raw::*;
use crate::spec::units::{MemMib, Micros};
use indexmap::IndexMap;
use std::path::{Path as FsPath, PathBuf};

/// containerlab's default management subnet.
pub const MGMT_SUBNET: &str = "172.20.20.0/24";
/// The kobako network that stands for containerlab's management network.
pub const MGMT: &str = "mgmt";
/// How long `up` waits for a Debian-based node (FRR, Ubuntu, ...) to be ready: its exec
/// commands (FRR restarted with its configuration) and `kobako.ready` checks (routing
/// converged). Seconds on a KVM host; on a TCG host shared with other work (CI: two test
/// threads beside an emulated kernel boot) a fabric of three FRR VMs took more than 120 s.
pub const DEBIAN_READY_TIMEOUT_US: u64 = 300_000_000;
/// Where a node's `exec` commands are written, and the files that say how they went.
pub const EXEC_SCRIPT: &str = "/etc/kobako/clab-exec.sh";
const EXEC_OK: &str = "/run/kobako/clab-exec.ok";
const EXEC_FAILED: &str = "/run/kobako/clab-exec.failed";

/// Kinds that run a vendor network OS image (containerlab's list, abridged).
const NOS_KINDS: &[&str] = &[
    "nokia_srlinux",
    "nokia_sros",
    "nokia_srsim",
    "srl",
    "vr-sros",
    "ceos",
    "arista_ceos",
    "arista_veos",
    "vr-veos",
    "crpd",
    "juniper_crpd",
    "juniper_vmx",
    "vr-vmx",
    "juniper_vsrx",
    "juniper_vjunosswitch",
    "juniper_vjunosrouter",
    "juniper_vjunosevolved",
    "juniper_vqfx",
    "cisco_xrd",
    "xrd",
    "cisco_xrv",
    "cisco_xrv9k",
    "cisco_csr1000v",
    "cisco_c8000",
    "cisco_c8000v",
    "cisco_n9kv",
    "cisco_nxos",
    "cisco_iol",
    "cisco_ftdv",
    "cisco_cat9kv",
    "sonic-vs",
    "sonic-vm",
    "cumulus_cvx",
    "cvx",
    "fortinet_fortigate",
    "paloalto_panos",
    "mikrotik_ros",
    "vr-ros",
    "huawei_vrp",
    "ipinfusion_ocnos",
    "aruba_aoscx",
    "dell_sonic",
    "dell_ftosv",
    "checkpoint_cloudguard",
    "6wind_vsr",
    "openbsd",
    "freebsd",
    "rare",
    "keysight_ixia-c-one",
    "ostinato",
    "generic_vm",
    "vr-pan",
    "vr-n9kv",
    "vr-csr",
    "vr-xrv",
    "vr-xrv9k",
    "vr-vqfx",
    "vr-vsrx",
    "vr-ftosv",
    "vr-aoscx",
];

/// How a node of the topology runs in kobako.
#[derive(Debug, Clone)]
enum Role {
    /// One VM (kobako node and VM of the same name).
    Vm(String),
    /// A kobako network (containerlab `bridge` / `ovs-bridge`).
    Bridge(String),
}

/// Which kobako image runs a node, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChoice {
    pub node: String,
    /// The container image as written.
    pub container: String,
    pub kobako: String,
    /// Where the choice came from (the table's reason, an override, the label).
    pub why: String,
}

pub(super) struct Conv<'a> {
    pub src: &'a Source,
    pub base_dir: Option<&'a FsPath>,
    pub overrides: &'a [(String, String)],
    pub errors: Vec<SpecError>,
    pub warnings: Vec<SpecError>,
    pub images: Vec<ImageChoice>,
}

/// A field of a node with the path it was written at (node, its kind, or `defaults`).
struct At<T> {
    v: T,
    path: Path,
}

/// The three layers a node's values come from, strongest first.
struct Layers<'a> {
    items: Vec<(&'a ClabNode, Path)>,
}

impl<'a> Layers<'a> {
    /// The first layer that sets `f`.
    fn first<T: Clone>(&self, key: &str, f: impl Fn(&ClabNode) -> Option<T>) -> Option<At<T>> {
        self.items.iter().find_map(|(n, p)| {
            f(n).map(|v| At {
                v,
                path: p.key(key),
            })
        })
    }

    /// A map merged from the weakest layer to the strongest.
    fn merged(
        &self,
        f: impl Fn(&ClabNode) -> &IndexMap<String, EnvValue>,
    ) -> IndexMap<String, EnvValue> {
        let mut out = IndexMap::new();
        for (n, _) in self.items.iter().rev() {
            for (k, v) in f(n) {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }
}

impl Conv<'_> {
    fn err(&mut self, path: &Path, message: String, fix: impl Into<Option<String>>) {
        let e = self.src.error(path, message, fix.into());
        self.errors.push(e);
    }

    fn warn(&mut self, path: &Path, message: String, fix: impl Into<Option<String>>) {
        let e = self.src.error(path, message, fix.into());
        self.warnings.push(e);
    }

    /// A kobako name for a containerlab one (lowercase, `_` and `.` as `-`), with a warning
    /// when it had to change.
    fn name(&mut self, s: &str, path: &Path, what: &str) -> String {
        let n: String = s
            .chars()
            .map(|c| match c {
                '_' | '.' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        if n != s {
            let e = self.src.key_error(
                path,
                format!("{what} '{s}' is '{n}' in kobako (lowercase letters, digits and '-')"),
                None,
            );
            self.warnings.push(e);
        }
        n
    }

    pub fn lab(&mut self, cf: &ClabFile) -> RawLab {
        let root = Path::root();
        let name = self.name(&cf.name, &root.key("name"), "lab name");
        if cf.prefix.is_some() {
            self.warn(
                &root.key("prefix"),
                "containerlab's `prefix` has no effect: kobako names VMs LAB.NODE.VM".into(),
                None,
            );
        }
        let mut lab = RawLab {
            name,
            description: Some("containerlab topology, converted by kobako".into()),
            ..RawLab::default()
        };
        let mgmt = cf.mgmt.clone().unwrap_or_default();
        let mgmt_subnet = mgmt.ipv4_subnet.clone().unwrap_or(MGMT_SUBNET.into());
        if mgmt.bridge.is_some() {
            self.warn(
                &root.key("mgmt").key("bridge"),
                "`mgmt.bridge` has no effect: kobako makes the management bridge inside the lab's own network namespace".into(),
                None,
            );
        }
        lab.networks.insert(
            MGMT.into(),
            RawNetwork {
                subnet: Some(mgmt_subnet.clone()),
                subnet6: mgmt.ipv6_subnet.clone(),
                mtu: mgmt.mtu,
                gateway: mgmt.ipv4_gw.clone(),
                ..RawNetwork::default()
            },
        );
        if mgmt.external_access != Some(false) {
            lab.uplink = Some(RawUplink::Some(RawUplinkFull {
                networks: vec![MGMT.into()],
            }));
        }
        let topo = root.key("topology");
        let mut roles: IndexMap<String, Role> = IndexMap::new();
        for (raw_name, node) in &cf.topology.nodes {
            let at = topo.key("nodes").key(raw_name);
            let layers = self.layers(cf, node, &at);
            let Some(kind) = layers.first("kind", |n| n.kind.clone()) else {
                let e = self.src.key_error(
                    &at,
                    format!("node '{raw_name}' has no kind"),
                    Some("add `kind: linux` (to the node or to topology.defaults)".into()),
                );
                self.errors.push(e);
                continue;
            };
            let nn = self.name(raw_name, &at, "node name");
            match kind.v.as_str() {
                "linux" => {
                    if let Some(vm) = self.vm(&nn, &layers, &at, &mgmt_subnet, &mut lab) {
                        lab.nodes.insert(
                            nn.clone(),
                            RawNode {
                                description: vm.description.clone(),
                                vms: [(nn.clone(), vm)].into_iter().collect(),
                                ..RawNode::default()
                            },
                        );
                    }
                    roles.insert(raw_name.clone(), Role::Vm(nn));
                }
                "bridge" | "ovs-bridge" => {
                    if nn == MGMT {
                        self.err(
                            &at,
                            format!("bridge '{raw_name}' has the name of kobako's management network"),
                            "rename the bridge".to_string(),
                        );
                    }
                    lab.networks.insert(nn.clone(), RawNetwork::default());
                    roles.insert(raw_name.clone(), Role::Bridge(nn));
                }
                "host" => self.err(
                    &kind.path,
                    "kind `host` is the container host itself: a kobako lab is isolated from its host".into(),
                    "remove the node; reach services with `ports:` (published host ports)".to_string(),
                ),
                k if NOS_KINDS.contains(&k) => self.err(
                    &kind.path,
                    format!("kind `{k}` runs a vendor network OS image, which kobako does not run"),
                    "run FRR instead: `kind: linux` with `image: quay.io/frrouting/frr` (kobako image debian-frr)".to_string(),
                ),
                k => self.err(
                    &kind.path,
                    format!(
                        "unknown kind `{k}`{}",
                        suggest(k, ["linux", "bridge", "ovs-bridge"])
                    ),
                    "kobako runs `linux` nodes as VMs and `bridge`/`ovs-bridge` nodes as lab networks".to_string(),
                ),
            }
        }
        for (i, l) in cf.topology.links.iter().enumerate() {
            self.link(l, &topo.key("links").index(i), &roles, &mut lab);
        }
        lab
    }

    /// The node's layers: itself, its kind's entry in `kinds`, `defaults`.
    fn layers<'a>(&self, cf: &'a ClabFile, node: &'a ClabNode, at: &Path) -> Layers<'a> {
        let topo = Path::root().key("topology");
        let mut items = vec![(node, at.clone())];
        let kind = node
            .kind
            .clone()
            .or_else(|| cf.topology.defaults.as_ref().and_then(|d| d.kind.clone()));
        if let Some(k) = kind.and_then(|k| cf.topology.kinds.get_key_value(&k)) {
            items.push((k.1, topo.key("kinds").key(k.0)));
        }
        if let Some(d) = &cf.topology.defaults {
            items.push((d, topo.key("defaults")));
        }
        Layers { items }
    }

    /// The VM of a `linux` node.
    fn vm(
        &mut self,
        nn: &str,
        layers: &Layers,
        at: &Path,
        mgmt_subnet: &str,
        lab: &mut RawLab,
    ) -> Option<RawVm> {
        let labels = layers.merged(|n| &n.labels);
        let image = self.image(nn, layers, at, &labels)?;
        let frr = image == "debian-frr";
        let debian = image.starts_with("debian");
        let mut vm = RawVm {
            image: Some(image.clone()),
            ..RawVm::default()
        };
        if let Some(c) = layers.first("cpu", |n| n.cpu) {
            if !(c.v > 0.0 && c.v <= 1024.0) {
                self.err(
                    &c.path,
                    format!("cpu {} is not a CPU count", c.v),
                    "write a number like 1 or 2".to_string(),
                );
            } else {
                vm.vcpus = Some(c.v.ceil() as u32);
            }
        }
        match layers.first("memory", |n| n.memory.clone()) {
            Some(m) => match docker_memory(&m.v.0) {
                Some(mib) => vm.memory = Some(MemMib(mib)),
                None => self.err(
                    &m.path,
                    format!("memory '{}' is not a size", m.v.0),
                    "write it like 512mb or 1Gb".to_string(),
                ),
            },
            None if debian => vm.memory = Some(MemMib(256)),
            None => {}
        }
        // eth0 on the management network, as in containerlab.
        let mut addrs = Vec::new();
        let prefix4 = mgmt_subnet
            .split_once('/')
            .map_or("24", |(_, p)| p)
            .to_string();
        let prefix6 = lab
            .networks
            .get(MGMT)
            .and_then(|n| n.subnet6.as_deref())
            .and_then(|s| s.split_once('/'))
            .map(|(_, p)| p.to_string());
        if let Some(a) = layers.items[0].0.mgmt_ipv4.as_ref() {
            addrs.push(format!("{a}/{prefix4}"));
        }
        if let Some(a) = layers.items[0].0.mgmt_ipv6.as_ref() {
            match &prefix6 {
                Some(p) => addrs.push(format!("{a}/{p}")),
                None => self.err(
                    &at.key("mgmt-ipv6"),
                    "mgmt-ipv6 is set but the management network has no IPv6 subnet".into(),
                    "add `mgmt: {ipv6-subnet: ...}`".to_string(),
                ),
            }
        }
        vm.interfaces.insert(
            "eth0".into(),
            RawInterface {
                network: Some(MGMT.into()),
                addresses: (!addrs.is_empty()).then_some(addrs),
                ..RawInterface::default()
            },
        );
        // Environment: env, and labels as CLAB_LABEL_* (kobako's own label excluded).
        vm.env = layers.merged(|n| &n.env);
        for (k, v) in &labels {
            if k != images::LABEL && k != images::READY_LABEL {
                let key: String = k
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                vm.env.insert(format!("CLAB_LABEL_{key}"), v.clone());
            }
        }
        vm.env
            .insert("CLAB_NODE_NAME".into(), EnvValue(nn.to_string()));
        // Files: binds, startup-config.
        let mut frr_files = false;
        if let Some(b) = layers.first("binds", |n| n.binds.clone()) {
            for (i, bind) in b.v.iter().enumerate() {
                for (dst, f) in self.bind(bind, &b.path.index(i)) {
                    frr_files |= dst.starts_with("/etc/frr/");
                    vm.files.insert(dst, f);
                }
            }
        }
        if let Some(sc) = layers.first("startup-config", |n| n.startup_config.clone()) {
            if !frr {
                self.err(
                    &sc.path,
                    format!("startup-config is applied to FRR nodes only; this node runs kobako image '{image}'"),
                    "copy the file with `binds: [\"FILE:/path/in/vm\"]`, or use image frrouting/frr".to_string(),
                );
            } else {
                let f = if sc.v.contains('\n') {
                    RawFile::Full(RawFileFull {
                        content: Some(sc.v.clone()),
                        ..RawFileFull::default()
                    })
                } else {
                    self.host_file(&sc.v, &sc.path)
                        .unwrap_or(RawFile::Src(sc.v.clone()))
                };
                frr_files = true;
                vm.files.insert("/etc/frr/frr.conf".into(), f);
            }
        }
        // exec (after sysctls, and after FRR runs with its configuration).
        let mut steps: Vec<String> = Vec::new();
        for (k, v) in layers.merged(|n| &n.sysctls) {
            steps.push(format!("sysctl -qw {k}={}", v.0));
        }
        if frr {
            // The guest may still be booting (a warm clone resumes where its snapshot's boot
            // was): `start` waits for frr's boot-time start, which read the image's default
            // configuration; only then is `restart` a restart (systemd turns a restart of a
            // unit still activating into that same start, and the new frr.conf is ignored).
            steps.push("systemctl start frr".into());
            if frr_files {
                steps.push("systemctl restart frr".into());
            }
        }
        if let Some(e) = layers.first("exec", |n| n.exec.clone()) {
            steps.extend(e.v);
        }
        let mut run = Vec::new();
        if !steps.is_empty() {
            vm.files.insert(
                EXEC_SCRIPT.into(),
                RawFile::Full(RawFileFull {
                    content: Some(exec_script(nn, &steps)),
                    mode: Some("0755".into()),
                    ..RawFileFull::default()
                }),
            );
            run.push(RawService::Full(RawServiceFull {
                name: Some("clab-exec".into()),
                command: format!("sh {EXEC_SCRIPT}"),
                restart: Some(Restart::Never),
            }));
            vm.ready = Some(vec![RawReadyCheck {
                exec: Some(format!(
                    "test -f {EXEC_OK} || {{ cat {EXEC_FAILED} 2>/dev/null; exit 1; }}"
                )),
                ..RawReadyCheck::default()
            }]);
            if debian {
                vm.ready_timeout = Some(Micros(DEBIAN_READY_TIMEOUT_US));
            }
        }
        if let Some(check) = labels.get(images::READY_LABEL) {
            vm.ready.get_or_insert_with(Vec::new).push(RawReadyCheck {
                exec: Some(check.0.clone()),
                ..RawReadyCheck::default()
            });
            if debian {
                vm.ready_timeout = Some(Micros(DEBIAN_READY_TIMEOUT_US));
            }
        }
        if let Some(c) = layers.first("cmd", |n| n.cmd.clone()) {
            run.push(RawService::Full(RawServiceFull {
                name: Some("cmd".into()),
                command: c.v,
                restart: Some(Restart::Always),
            }));
        }
        if !run.is_empty() {
            vm.run = Some(run);
        }
        if let Some(p) = layers.first("ports", |n| n.ports.clone()) {
            for (i, port) in p.v.iter().enumerate() {
                match publish(&port.0, nn) {
                    Ok(s) => lab.publish.push(s),
                    Err(why) => self.err(
                        &p.path.index(i),
                        format!("port '{}' {why}", port.0),
                        "write HOSTPORT:PORT, e.g. 8080:80 or 5353:53/udp".to_string(),
                    ),
                }
            }
        }
        let group = layers.first("group", |n| n.group.clone());
        let choice = self.images.last().filter(|c| c.node == nn);
        vm.description = Some(format!(
            "containerlab node (kind linux{}{})",
            choice.map_or(String::new(), |c| format!(
                ", image {} as {}",
                c.container, c.kobako
            )),
            group.map_or(String::new(), |g| format!(", group {}", g.v))
        ));
        Some(vm)
    }

    /// The node's kobako image (recorded in `images`); None after an error.
    fn image(
        &mut self,
        nn: &str,
        layers: &Layers,
        at: &Path,
        labels: &IndexMap<String, EnvValue>,
    ) -> Option<String> {
        let img = layers.first("image", |n| n.image.clone());
        if let Some(k) = labels.get(images::LABEL) {
            self.images.push(ImageChoice {
                node: nn.into(),
                container: img.map_or("-".into(), |i| i.v),
                kobako: k.0.clone(),
                why: format!("label {}", images::LABEL),
            });
            return Some(k.0.clone());
        }
        let Some(img) = img else {
            let e = self.src.key_error(
                at,
                format!("node '{nn}' has no image"),
                Some("add `image:` (e.g. alpine:latest or quay.io/frrouting/frr:9.1.0)".into()),
            );
            self.errors.push(e);
            return None;
        };
        match images::lookup(&img.v, self.overrides) {
            Some(k) => {
                let repo = images::repository(&img.v);
                let why = if self
                    .overrides
                    .iter()
                    .any(|(f, _)| *f == img.v || *f == repo)
                {
                    "override".to_string()
                } else {
                    images::TABLE
                        .iter()
                        .find(|(r, _, _)| *r == repo)
                        .map_or("a kobako image".to_string(), |(_, _, w)| w.to_string())
                };
                let k = k.to_string();
                self.images.push(ImageChoice {
                    node: nn.into(),
                    container: img.v,
                    kobako: k.clone(),
                    why,
                });
                Some(k)
            }
            None => {
                let known: Vec<&str> = images::TABLE.iter().map(|(r, _, _)| *r).collect();
                self.err(
                    &img.path,
                    format!(
                        "no kobako image for container image '{}' (repository '{}')",
                        img.v,
                        images::repository(&img.v)
                    ),
                    format!(
                        "use one kobako maps ({}), name a kobako image (tiny, {}), add the label `{}: IMAGE`, or pass `--image {}=IMAGE` to `kobako import clab`",
                        known.join(", "),
                        kobako_image::recipes::names(),
                        images::LABEL,
                        images::repository(&img.v)
                    ),
                );
                None
            }
        }
    }

    /// A host file named in the topology (relative to its directory), if it exists.
    fn host_file(&mut self, src: &str, path: &Path) -> Option<RawFile> {
        if self.base_dir.is_none() && FsPath::new(src).is_relative() {
            self.err(
                path,
                format!("'{src}' is relative, and this topology came without its directory"),
                "run it from its file (`kobako up FILE.clab.yml`), or write an absolute path"
                    .to_string(),
            );
            return None;
        }
        let full = self.host_path(src);
        if self.base_dir.is_some() && !full.is_file() {
            self.err(
                path,
                format!("host file {} does not exist", full.display()),
                "fix the path (relative paths start at the topology file's directory)".to_string(),
            );
            return None;
        }
        Some(RawFile::Src(full.display().to_string()))
    }

    fn host_path(&self, src: &str) -> PathBuf {
        crate::spec::hostdir::host_path(self.base_dir, src)
    }

    /// One `binds:` entry, `SRC:DST[:OPTIONS]`, as files copied into the VM (a directory's
    /// regular files, recursively).
    fn bind(&mut self, bind: &str, path: &Path) -> Vec<(String, RawFile)> {
        let parts: Vec<&str> = bind.split(':').collect();
        let (src, dst) = match parts.as_slice() {
            [s, d] | [s, d, _] if !s.is_empty() && d.starts_with('/') => (*s, *d),
            _ => {
                self.err(
                    path,
                    format!("bind '{bind}' is not SRC:DST[:ro]"),
                    "write it like ./frr.conf:/etc/frr/frr.conf (DST an absolute path in the VM)"
                        .to_string(),
                );
                return Vec::new();
            }
        };
        if dst.split('/').any(|c| c == "..") {
            self.err(
                path,
                format!("bind destination '{dst}' contains '..'"),
                "write a plain absolute path".to_string(),
            );
            return Vec::new();
        }
        let full = self.host_path(src);
        if self.base_dir.is_none() || !full.is_dir() {
            return self
                .host_file(src, path)
                .map(|f| vec![(dst.to_string(), with_mode(f, &full))])
                .unwrap_or_default();
        }
        match crate::spec::hostdir::regular_files(&full) {
            Ok(files) => files
                .into_iter()
                .map(|(rel, p)| {
                    let f = RawFile::Src(p.display().to_string());
                    (
                        format!("{}/{rel}", dst.trim_end_matches('/')),
                        with_mode(f, &p),
                    )
                })
                .collect(),
            Err(why) => {
                self.err(
                    path,
                    why,
                    "bind the files the node needs, or a smaller directory".to_string(),
                );
                Vec::new()
            }
        }
    }

    fn link(&mut self, l: &ClabLink, at: &Path, roles: &IndexMap<String, Role>, lab: &mut RawLab) {
        if let Some(t) = l.kind.as_deref().filter(|t| *t != "veth") {
            let fix = match t {
                "host" => "a kobako lab is isolated from its host: publish ports with `ports:` instead",
                "mgmt-net" => "every node is on the management network already (eth0)",
                "macvlan" | "vxlan" | "vxlan-stitch" => "kobako links are veth pairs inside the lab: use `type: veth`, or a `bridge` node for a shared segment",
                "dummy" => "add the interface with `exec: [\"ip link add NAME type dummy\"]`",
                _ => "use `type: veth`",
            };
            self.err(
                &at.key("type"),
                format!("link type `{t}` is not supported by kobako"),
                fix.to_string(),
            );
            return;
        }
        if l.vars.is_some() {
            self.warn(
                &at.key("vars"),
                "link `vars` have no effect: kobako does not render config templates".into(),
                None,
            );
        }
        if !l.labels.is_empty() {
            self.warn(
                &at.key("labels"),
                "link `labels` have no effect in kobako".into(),
                None,
            );
        }
        if l.endpoints.len() != 2 {
            self.err(
                &at.key("endpoints"),
                format!("a link has 2 endpoints, this one has {}", l.endpoints.len()),
                "write `endpoints: [\"a:eth1\", \"b:eth1\"]`; use a `bridge` node for more"
                    .to_string(),
            );
            return;
        }
        let mut ends = Vec::new();
        for (i, e) in l.endpoints.iter().enumerate() {
            let p = at.key("endpoints").index(i);
            let (node, iface, mac) = match e {
                ClabEndpoint::Brief(s) => match s.split_once(':') {
                    Some((n, i)) if !n.is_empty() && !i.is_empty() => {
                        (n.to_string(), i.to_string(), None)
                    }
                    _ => {
                        self.err(
                            &p,
                            format!("endpoint '{s}' is not NODE:IFACE"),
                            "write it like \"srv1:eth1\"".to_string(),
                        );
                        continue;
                    }
                },
                ClabEndpoint::Full(f) => (f.node.clone(), f.interface.clone(), f.mac.clone()),
            };
            let Some(role) = roles.get(&node) else {
                let (msg, fix) = match node.as_str() {
                    "host" => ("a link to the host: a kobako lab is isolated from its host".to_string(), "publish ports with `ports:` instead".to_string()),
                    "mgmt-net" => ("a link to the management network: every node is on it already (eth0)".to_string(), "remove the link".to_string()),
                    "macvlan" => ("a macvlan link to a host interface: a kobako lab is isolated from its host".to_string(), "remove the link".to_string()),
                    _ => (
                        format!("endpoint '{node}:{iface}': no node '{node}'{}", suggest(&node, roles.keys().map(|s| s.as_str()))),
                        format!("nodes: {}", roles.keys().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
                    ),
                };
                self.err(&p, msg, fix);
                continue;
            };
            if iface == "eth0" && matches!(role, Role::Vm(_)) {
                self.err(
                    &p,
                    format!("endpoint '{node}:eth0': eth0 is the management interface (as in containerlab)"),
                    "use eth1 and up for links".to_string(),
                );
                continue;
            }
            ends.push((role.clone(), iface, mac, p));
        }
        if ends.len() != 2 {
            return;
        }
        let mut attach = |vm: &str, iface: &str, net: Option<&str>, mac: &Option<String>| {
            if let Some(v) = lab.nodes.get_mut(vm).and_then(|n| n.vms.get_mut(vm)) {
                let i = v.interfaces.entry(iface.to_string()).or_default();
                if let Some(n) = net {
                    i.network = Some(n.to_string());
                    i.mtu = l.mtu.or(i.mtu);
                }
                if mac.is_some() {
                    i.mac = mac.clone();
                }
            }
        };
        match (&ends[0], &ends[1]) {
            ((Role::Vm(a), ia, ma, _), (Role::Vm(b), ib, mb, _)) => {
                attach(a, ia, None, ma);
                attach(b, ib, None, mb);
                lab.links.push(RawLink {
                    endpoints: vec![format!("{a}:{ia}"), format!("{b}:{ib}")],
                    mtu: l.mtu,
                    ..RawLink::default()
                });
            }
            ((Role::Vm(v), iv, mv, _), (Role::Bridge(n), _, _, _))
            | ((Role::Bridge(n), _, _, _), (Role::Vm(v), iv, mv, _)) => attach(v, iv, Some(n), mv),
            ((Role::Bridge(_), ..), (Role::Bridge(_), _, _, p)) => self.err(
                p,
                "a link between two bridges".into(),
                "connect bridges through a node, or make them one bridge".to_string(),
            ),
        }
    }
}

/// A host file's mode on the VM's copy when it is executable.
fn with_mode(f: RawFile, host: &FsPath) -> RawFile {
    match (f, crate::spec::hostdir::exec_mode(host)) {
        (RawFile::Src(s), Some(m)) => RawFile::Full(RawFileFull {
            src: Some(s),
            mode: Some(format!("{m:04o}")),
            ..RawFileFull::default()
        }),
        (f, _) => f,
    }
}

/// The script that runs a node's `exec` commands in order, each in `/bin/sh`, recording the
/// ones that fail; it marks success for the node's readiness check.
fn exec_script(node: &str, steps: &[String]) -> String {
    let mut s = format!(
        "#!/bin/sh\n# containerlab exec commands of node {node} (kobako runs them once, in order).\n\
         mkdir -p /run/kobako\nrm -f {EXEC_OK} {EXEC_FAILED}\nfailed=0\n"
    );
    for c in steps {
        let quoted = c.replace('\'', "'\\''");
        s.push_str(&format!(
            "if ! {{ {c}\n}}; then echo 'exec failed: {quoted}' | tee -a {EXEC_FAILED} >&2; failed=1; fi\n"
        ));
    }
    s.push_str(&format!(
        "[ $failed = 0 ] && touch {EXEC_OK}\nexit $failed\n"
    ));
    s
}

/// Docker's memory sizes (`512m`, `512mb`, `1Gb`, `1073741824`) in MiB; None unless whole MiB.
fn docker_memory(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, scale) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1u64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        c if c.is_ascii_digit() => (t, 1),
        _ => return None,
    };
    let bytes = if let Ok(n) = num.parse::<u64>() {
        n.checked_mul(scale)?
    } else {
        let f: f64 = num.parse().ok()?;
        if !(f.is_finite() && f > 0.0) {
            return None;
        }
        (f * scale as f64) as u64
    };
    (bytes % (1 << 20) == 0 && bytes > 0).then_some(bytes >> 20)
}

/// containerlab `ports:` entry → kobako `publish:` entry.
fn publish(p: &str, vm: &str) -> Result<String, String> {
    let (spec, proto) = match p.rsplit_once('/') {
        Some((s, pr @ ("tcp" | "udp"))) => (s, pr),
        Some(_) => return Err("has a protocol other than tcp or udp".into()),
        None => (p, "tcp"),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, guest) = match parts.as_slice() {
        [h, g] => (*h, *g),
        [_addr, h, g] => (*h, *g),
        [_] => return Err("has no host port".into()),
        _ => return Err("is not HOSTPORT:PORT".into()),
    };
    for x in [host, guest] {
        if !matches!(x.parse::<u16>(), Ok(n) if n > 0) {
            return Err(format!("has '{x}', which is not a port number"));
        }
    }
    Ok(format!("{host}:{vm}.{vm}:{guest}/{proto}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_memory_sizes() {
        assert_eq!(docker_memory("512mb"), Some(512));
        assert_eq!(docker_memory("1Gb"), Some(1024));
        assert_eq!(docker_memory("2g"), Some(2048));
        assert_eq!(docker_memory("1.5GB"), Some(1536));
        assert_eq!(docker_memory("268435456"), Some(256));
        assert_eq!(docker_memory("100"), None);
        assert_eq!(docker_memory("lots"), None);
    }

    #[test]
    fn ports_become_published_ports() {
        assert_eq!(publish("8080:80", "web").unwrap(), "8080:web.web:80/tcp");
        assert_eq!(
            publish("5353:53/udp", "dns").unwrap(),
            "5353:dns.dns:53/udp"
        );
        assert_eq!(
            publish("127.0.0.1:8080:80", "w").unwrap(),
            "8080:w.w:80/tcp"
        );
        assert!(publish("80", "w").unwrap_err().contains("no host port"));
        assert!(publish("80:x", "w").is_err());
        assert!(publish("80:80/sctp", "w").is_err());
    }

    #[test]
    fn the_exec_script_records_failures() {
        let s = exec_script("n1", &["ip link set eth1 up".into(), "echo 'hi'".into()]);
        assert!(s.contains(
            "if ! { ip link set eth1 up\n}; then echo 'exec failed: ip link set eth1 up'"
        ));
        assert!(s.contains("echo 'exec failed: echo '\\''hi'\\'''"));
        assert!(s.ends_with("[ $failed = 0 ] && touch /run/kobako/clab-exec.ok\nexit $failed\n"));
    }
}
