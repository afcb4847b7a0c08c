//! One VM: machine (image, vCPUs, memory, kernel), interfaces, services, files, environment
//! and routes, each checked where it was written.

use super::draft::{InterfaceDecl, VmDraft};
use super::merge::MergedVm;
use super::{
    spec_path, LabDraft, Located, Origin, Resolver, DEFAULT_IMAGE, DEFAULT_MEMORY, DEFAULT_MTU,
    DEFAULT_VCPUS,
};
use crate::spec::error::suggest;
use crate::spec::model::*;
use crate::spec::raw::*;
use crate::spec::units::MemMib;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

/// The machine of a VM: what boots.
struct Machine {
    image: String,
    vcpus: u32,
    memory: MemMib,
    kernel: String,
}

impl Resolver<'_> {
    /// Resolves VM `id` of a node from its merged definition `m` (declared at `at`): its own
    /// values, checked where they were written. `nn` is the node network, where `node_addr`
    /// is this VM's address; `hosts` are the names of its node peers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn vm(
        &mut self,
        b: &LabDraft,
        id: VmRef,
        m: &MergedVm,
        at: &Origin,
        nn: Option<&NodeNetwork>,
        node_addr: Option<&Cidr>,
        hosts: &[(String, IpAddr)],
    ) -> VmDraft {
        let machine = self.vm_machine(m);
        let (interfaces, ifaces) = self.vm_interfaces(b, &id, m, at, nn, node_addr);
        let services = self.vm_services(&id, m);
        let files = self.vm_files(m);
        let shares = self.vm_shares(m);
        let env = self.vm_env(m);
        let routes = self.vm_routes(m);
        let apparmor = self.vm_apparmor(m, &machine.image);
        let (ready, ready_timeout_ms) = self.vm_ready(m);
        VmDraft {
            vm: Vm {
                id,
                description: m.description.as_ref().map(|o| o.value.clone()),
                image: machine.image,
                vcpus: machine.vcpus,
                memory: machine.memory,
                kernel: machine.kernel,
                interfaces,
                routes: Vec::new(),
                services,
                files,
                shares,
                env,
                hosts: hosts.to_vec(),
                apparmor,
                ready,
                ready_timeout_ms,
            },
            at: at.clone(),
            ifaces,
            routes,
        }
    }

    /// Image, vCPUs, memory and kernel: the VM's own, else `defaults:`, else built in.
    fn vm_machine(&mut self, m: &MergedVm) -> Machine {
        let d = self.raw.defaults.clone().unwrap_or_default();
        let image = m
            .image
            .as_ref()
            .map(|o| o.value.clone())
            .or(d.image.clone())
            .unwrap_or_else(|| DEFAULT_IMAGE.into());
        let vcpus = match &m.vcpus {
            Some(o) => self.vcpus(o.value, &o.at),
            None => match d.vcpus {
                Some(v) => self.vcpus(v, &self.lab_at(spec_path("defaults.vcpus"))),
                None => DEFAULT_VCPUS,
            },
        };
        let memory = match &m.memory {
            Some(o) => self.memory(o.value, &o.at),
            None => match d.memory {
                Some(v) => self.memory(v, &self.lab_at(spec_path("defaults.memory"))),
                None => DEFAULT_MEMORY,
            },
        };
        let kernel = m
            .kernel
            .as_ref()
            .map(|o| o.value.clone())
            .or(d.kernel.clone())
            .unwrap_or_else(|| "default".into());
        let image_at = m.image.as_ref().map_or_else(
            || self.lab_at(spec_path("defaults.image")),
            |o| o.at.clone(),
        );
        if let Err(why) = check_image(&image) {
            self.err(
                &image_at,
                format!("image '{image}' {why}"),
                "name an image of the store (`kobako image ls`: tiny, debian-web ...) or give a path with '/'"
                    .to_string(),
            );
        }
        let kernel_at = m.kernel.as_ref().map_or_else(
            || self.lab_at(spec_path("defaults.kernel")),
            |o| o.at.clone(),
        );
        if kernel != "default" && !kernel.contains('/') {
            self.err(
                &kernel_at,
                format!("kernel '{kernel}' is neither `default` nor a path"),
                "write `default`, or a path to a vmlinux/bzImage like ./vmlinux".to_string(),
            );
        }
        Machine {
            image,
            vcpus,
            memory,
            kernel,
        }
    }

    /// AppArmor's mode: `security.apparmor`, else `off` on `tiny` (busybox: no AppArmor
    /// userspace, no profiles) and `enforce` on every other image. Enforce or complain on
    /// `tiny` is refused: nothing there would load a profile.
    fn vm_apparmor(&mut self, m: &MergedVm, image: &str) -> AppArmorMode {
        let tiny = image == DEFAULT_IMAGE;
        let Some((mode, at)) = m
            .security
            .as_ref()
            .and_then(|o| o.value.apparmor.map(|a| (a, o.at.clone())))
        else {
            return if tiny {
                AppArmorMode::Off
            } else {
                AppArmorMode::Enforce
            };
        };
        if tiny && mode != AppArmorMode::Off {
            let at = Origin {
                src: at.src,
                path: at.path.key("apparmor"),
            };
            self.err(
                &at,
                format!("apparmor `{mode}` needs AppArmor in the guest, and image '{image}' (busybox) has none"),
                "use a Debian image (debian, debian-web, debian-router) for this VM, or write `apparmor: off`"
                    .to_string(),
            );
        }
        mode
    }

    /// The VM's interfaces: the node network's first (if the node has one), then the declared
    /// ones in file order; each with what the file said about it.
    fn vm_interfaces(
        &mut self,
        b: &LabDraft,
        id: &VmRef,
        m: &MergedVm,
        at: &Origin,
        nn: Option<&NodeNetwork>,
        node_addr: Option<&Cidr>,
    ) -> (Vec<Interface>, Vec<InterfaceDecl>) {
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
            iface_at.push(InterfaceDecl {
                at: at.clone(),
                explicit_addresses: true,
                raw_addresses: None,
            });
        }
        for (iname, ri) in &m.interfaces {
            if let Some((iface, decl)) = self.declared_interface(b, id, iname, ri, nn) {
                interfaces.push(iface);
                iface_at.push(decl);
            }
        }
        (interfaces, iface_at)
    }

    /// One interface under `interfaces:`; None when it clashes with the node network's.
    fn declared_interface(
        &mut self,
        b: &LabDraft,
        id: &VmRef,
        iname: &str,
        ri: &Located<RawInterface>,
        nn: Option<&NodeNetwork>,
    ) -> Option<(Interface, InterfaceDecl)> {
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
                "use another name (eth1, eth2 ...), or rename node_network.interface".to_string(),
            );
            return None;
        }
        let r = &ri.value;
        let sub = |k: &str| Origin {
            src: iat.src,
            path: iat.path.key(k),
        };
        let (attach, vlan, net_mtu) = match &r.network {
            Some(n) => self.interface_network(b, n, &sub("network")),
            None => (None, None, DEFAULT_MTU),
        };
        let mac = match &r.mac {
            Some(s) => self.interface_mac(s, &sub("mac")),
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
        let iface = Interface {
            name: IfaceName(iname.to_string()),
            // A link attachment is filled in when links are resolved.
            attach: attach.unwrap_or(Attachment::Link(LinkName(String::new()))),
            addresses: Vec::new(),
            mac: mac.unwrap_or_else(|| MacAddr::derived(&b.lab.0, &id.node.0, &id.vm.0, iname)),
            mac_explicit: mac.is_some(),
            mtu,
            vlan,
            gateway,
            no_gateway: r.no_gateway,
        };
        let decl = InterfaceDecl {
            at: iat.clone(),
            explicit_addresses: r.addresses.is_some(),
            raw_addresses: r.addresses.clone(),
        };
        Some((iface, decl))
    }

    /// An interface's `network:` (written at `at`): the attachment, VLAN and MTU it gives.
    fn interface_network(
        &mut self,
        b: &LabDraft,
        n: &str,
        at: &Origin,
    ) -> (Option<Attachment>, Option<u16>, u32) {
        match b.networks.iter().find(|(x, _)| x.name.0 == *n) {
            Some((x, _)) => (Some(Attachment::Network(x.name.clone())), x.vlan, x.mtu),
            None => {
                let names: Vec<&str> = b.networks.iter().map(|(x, _)| x.name.as_str()).collect();
                self.err(
                    at,
                    format!("no network '{n}'{}", suggest(n, names.iter().copied())),
                    Some(if names.is_empty() {
                        "declare it under `networks:`".to_string()
                    } else {
                        format!("networks: {}", names.join(", "))
                    }),
                );
                (None, None, DEFAULT_MTU)
            }
        }
    }

    /// An interface's `mac:` (written at `at`); a multicast MAC is reported and kept.
    fn interface_mac(&mut self, s: &str, at: &Origin) -> Option<MacAddr> {
        match s.parse::<MacAddr>() {
            Ok(mac) if !mac.is_unicast() => {
                self.err(
                    at,
                    format!("{mac} is a multicast address"),
                    "clear bit 0 of the first octet (e.g. 02:...)".to_string(),
                );
                Some(mac)
            }
            Ok(mac) => Some(mac),
            Err(e) => {
                self.err(at, e.to_string(), None);
                None
            }
        }
    }

    /// `run:`: the VM's services, each named (given, or from its program, unique in the VM).
    fn vm_services(&mut self, id: &VmRef, m: &MergedVm) -> Vec<Service> {
        let mut services = Vec::new();
        if let Some(run) = &m.run {
            let mut names = HashSet::new();
            for (i, s) in run.value.iter().enumerate() {
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
        services
    }

    /// `files:`: what is copied into the guest, from the host or inline.
    fn vm_files(&mut self, m: &MergedVm) -> Vec<FileCopy> {
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
            let (src, content, mode) = match &f.value {
                RawFile::Src(s) => (Some(s.clone()), None, None),
                RawFile::Full(x) => (x.src.clone(), x.content.clone(), x.mode.clone()),
            };
            // A host directory: its regular files under `dst` (containerlab's `binds` habit).
            if let (Some(dir), true, None) = (&src, self.base_dir.is_some(), &content) {
                let full = self.host_path(dir);
                if full.is_dir() && fat.src == 0 {
                    files.extend(self.dir_files(&full, dst, mode.as_deref(), fat));
                    continue;
                }
            }
            let Some(source) = self.file_source(src, content, fat) else {
                continue;
            };
            let mode = match mode {
                None => 0o644,
                Some(m) => self.file_mode(&m, fat),
            };
            files.push(FileCopy {
                source,
                dst: dst.clone(),
                mode,
            });
        }
        files
    }

    /// A host path named in the lab file (`files:` sources, `shares:`).
    fn host_path(&self, src: &str) -> PathBuf {
        crate::spec::hostdir::host_path(self.base_dir.as_deref(), src)
    }

    /// `shares:`: host directories mounted read-only in the guest, tagged `kshareN`.
    fn vm_shares(&mut self, m: &MergedVm) -> Vec<Share> {
        let mut out = Vec::new();
        for (dst, s) in &m.shares {
            let at = &s.at;
            let (src, readonly) = match &s.value {
                RawShare::Src(p) => (p.clone(), None),
                RawShare::Full(f) => (f.src.clone(), f.readonly),
            };
            let bad_dst = !dst.starts_with('/')
                || dst == "/"
                || dst.split('/').any(|c| c == ".." || c == ".")
                || ["/proc", "/sys", "/dev", "/run/kobako"]
                    .iter()
                    .any(|p| dst == p || dst.starts_with(&format!("{p}/")));
            if bad_dst {
                self.key_err(
                    at,
                    format!("share target '{dst}' is not a guest directory kobako may mount on"),
                    "write an absolute path such as /srv/data (not /, /proc, /sys, /dev, /run/kobako or one with '..')".to_string(),
                );
                continue;
            }
            if readonly == Some(false) {
                self.err(
                    &Origin {
                        src: at.src,
                        path: at.path.key("readonly"),
                    },
                    "writable shares are not supported: a share is read-only in the guest".into(),
                    "remove `readonly: false`; copy results out with `kobako cp VM:PATH DEST`"
                        .to_string(),
                );
                continue;
            }
            if at.src != 0 {
                self.err(
                    at,
                    "a template shipped with kobako cannot share host directories".into(),
                    "declare the share in the lab file".to_string(),
                );
                continue;
            }
            let full = self.host_path(&src);
            if self.base_dir.is_some() {
                use std::os::unix::fs::PermissionsExt;
                match std::fs::metadata(&full) {
                    Ok(md) if !md.is_dir() => {
                        self.err(
                            at,
                            format!("{} is not a directory", full.display()),
                            "share a directory (copy single files with `files:`)".to_string(),
                        );
                        continue;
                    }
                    Ok(md) if md.permissions().mode() & 0o005 != 0o005 => {
                        self.err(
                            at,
                            format!("{} is not readable by others (mode {:04o})", full.display(), md.permissions().mode() & 0o7777),
                            format!("the VM process runs as an unprivileged user: `chmod o+rx {}` (and make the files in it world-readable)", full.display()),
                        );
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.err(
                            at,
                            format!("host directory {}: {e}", full.display()),
                            "fix the path (relative paths start at the lab file's directory)"
                                .to_string(),
                        );
                        continue;
                    }
                }
            } else if !full.is_absolute() {
                self.err(
                    at,
                    format!("share '{src}' is relative, and this lab came without its directory"),
                    "write an absolute host path, or run the lab from its file".to_string(),
                );
                continue;
            }
            if out.len() == MAX_SHARES {
                self.err(
                    at,
                    format!("more than {MAX_SHARES} shares"),
                    "share a parent directory instead".to_string(),
                );
                break;
            }
            out.push(Share {
                src: full,
                dst: dst.trim_end_matches('/').to_string(),
                tag: format!("kshare{}", out.len()),
            });
        }
        out
    }

    /// The copies of host directory `dir` into guest directory `dst`: each file keeps its
    /// executable bits unless `mode` says otherwise.
    fn dir_files(
        &mut self,
        dir: &std::path::Path,
        dst: &str,
        mode: Option<&str>,
        fat: &Origin,
    ) -> Vec<FileCopy> {
        let mode = mode.map(|m| self.file_mode(m, fat));
        match crate::spec::hostdir::regular_files(dir) {
            Ok(list) => list
                .into_iter()
                .map(|(rel, p)| FileCopy {
                    dst: format!("{}/{rel}", dst.trim_end_matches('/')),
                    mode: mode
                        .or(crate::spec::hostdir::exec_mode(&p))
                        .unwrap_or(0o644),
                    source: FileSource::Host(p),
                })
                .collect(),
            Err(why) => {
                self.err(
                    fat,
                    why,
                    "copy the files the VM needs, or a smaller directory".to_string(),
                );
                Vec::new()
            }
        }
    }

    /// Where a file's bytes come from: `src` (a host path) or `content`, exactly one of them.
    fn file_source(
        &mut self,
        src: Option<String>,
        content: Option<String>,
        fat: &Origin,
    ) -> Option<FileSource> {
        match (src, content) {
            (Some(_), Some(_)) => {
                self.err(
                    fat,
                    "both `src` and `content` given".into(),
                    "keep one".to_string(),
                );
                None
            }
            (None, None) => {
                self.err(
                    fat,
                    "a file needs `src` (host path) or `content`".into(),
                    "add one of them".to_string(),
                );
                None
            }
            (Some(s), None) => {
                if fat.src != 0 {
                    self.err(
                        fat,
                        "a template shipped with kobako cannot copy host files".into(),
                        "use `content:`".to_string(),
                    );
                }
                let full = self.host_path(&s);
                // Read from disk files only: a lab given as text may come from elsewhere.
                if self.base_dir.is_some() && !full.is_file() {
                    self.err(
                        fat,
                        format!("host file {} does not exist", full.display()),
                        "fix the path (relative paths start at the lab file's directory)"
                            .to_string(),
                    );
                }
                Some(FileSource::Host(full))
            }
            (None, Some(c)) => Some(FileSource::Inline(c)),
        }
    }

    /// A file's `mode:` (octal, `0644` or `0o644`) of the file at `fat`; 0644 when invalid.
    fn file_mode(&mut self, m: &str, fat: &Origin) -> u32 {
        match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
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
        }
    }

    /// `env:`: the VM's environment variables.
    fn vm_env(&mut self, m: &MergedVm) -> BTreeMap<String, String> {
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
            env.insert(k.clone(), v.value.clone());
        }
        env
    }

    /// `routes:` as written (next hops are checked once the VM's addresses are known).
    fn vm_routes(&mut self, m: &MergedVm) -> Vec<(Route, Origin)> {
        let mut routes = Vec::new();
        for r in &m.routes {
            let sub = |k: &str| Origin {
                src: r.at.src,
                path: r.at.path.key(k),
            };
            let to = if r.value.to == "default" {
                Some(Cidr {
                    addr: IpAddr::V4(0.into()),
                    prefix: 0,
                })
            } else {
                match r.value.to.parse::<Cidr>() {
                    Ok(c) => Some(c.network()),
                    Err(e) => {
                        self.err(
                            &sub("to"),
                            e.to_string(),
                            "write `default` or a subnet like 10.2.0.0/24".to_string(),
                        );
                        None
                    }
                }
            };
            let via = match r.value.via.parse::<IpAddr>() {
                Ok(v) => Some(v),
                Err(_) => {
                    self.err(
                        &sub("via"),
                        format!("'{}' is not an IP address", r.value.via),
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
        routes
    }

    /// vCPUs written at `at`: at least 1, at most the host's.
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

    /// Memory written at `at`: enough to boot, at most the host's.
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
fn check_image(s: &str) -> Result<(), NameError> {
    if s.contains('/') {
        return Ok(());
    }
    if s.is_empty() || s.len() > 64 {
        return Err(NameError::Length { max: 64 });
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(NameError::FirstNotLetterOrDigit);
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        Some(c) => Err(NameError::Contains(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{self, AppArmorMode, HostLimits, MemMib};

    fn load(text: &str) -> Result<Vec<crate::spec::Lab>, crate::spec::SpecErrors> {
        let host = HostLimits {
            cpus: 2,
            memory: MemMib(4096),
        };
        spec::load_str("lab.yaml", text, &host)
    }

    fn modes(text: &str) -> Vec<(String, AppArmorMode, String)> {
        let labs = load(text).unwrap_or_else(|e| panic!("{e}"));
        labs[0]
            .vms()
            .map(|v| (v.id.vm.to_string(), v.apparmor, v.kernel_cmdline()))
            .collect()
    }

    #[test]
    fn apparmor_mode_per_vm_with_image_defaults() {
        let got = modes(
            "name: aa
nodes:
  n:
    vms:
      small: {}
      deb: { image: debian }
      loose: { image: debian, security: { apparmor: complain } }
      none: { image: debian, security: { apparmor: off } }
      tinyoff: { security: { apparmor: off } }
",
        );
        let want = [
            ("small", AppArmorMode::Off, "apparmor=0"),
            ("deb", AppArmorMode::Enforce, "apparmor=1"),
            ("loose", AppArmorMode::Complain, "apparmor.mode=complain"),
            ("none", AppArmorMode::Off, "apparmor=0"),
            ("tinyoff", AppArmorMode::Off, "apparmor=0"),
        ];
        assert_eq!(got.len(), want.len());
        for ((n, m, c), (wn, wm, wc)) in got.iter().zip(want) {
            assert_eq!((n.as_str(), *m, c.as_str()), (wn, wm, wc));
        }
    }

    #[test]
    fn apparmor_template_vms_default_to_enforce_and_can_be_overridden() {
        let got = modes(
            "name: aa
nodes:
  web:
    template: web-stack
    vms:
      cache: { security: { apparmor: complain } }
",
        );
        let m: std::collections::BTreeMap<_, _> = got.into_iter().map(|(n, m, _)| (n, m)).collect();
        assert_eq!(m["api"], AppArmorMode::Enforce);
        assert_eq!(m["logger"], AppArmorMode::Enforce);
        assert_eq!(m["cache"], AppArmorMode::Complain);
    }

    #[test]
    fn apparmor_bad_value_names_the_field_and_the_values() {
        let e = load(
            "name: aa
nodes:
  n:
    vms:
      a: { image: debian, security: { apparmor: strict } }
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("apparmor"), "{e}");
        for v in ["enforce", "complain", "off"] {
            assert!(e.contains(v), "{v} missing in: {e}");
        }
        let e = load(
            "name: aa
nodes:
  n:
    vms:
      a: { image: debian, security: { selinux: on } }
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("selinux") && e.contains("apparmor"), "{e}");
    }

    #[test]
    fn apparmor_on_tiny_is_refused_with_a_fix() {
        let e = load(
            "name: aa
nodes:
  n:
    vms:
      a: { security: { apparmor: enforce } }
",
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("nodes.n.vms.a.security.apparmor"), "{s}");
        assert!(s.contains("image 'tiny'"), "{s}");
        assert!(s.contains("use a Debian image"), "{s}");
    }
}
