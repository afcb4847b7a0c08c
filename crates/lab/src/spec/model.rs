//! The resolved lab: every name checked, every default applied, every derived value (MACs,
//! addresses, ids) computed. This is what the controller plans and applies from.

pub use super::raw::AppArmorMode;
use super::raw::{LinkState, Restart};
use super::units::{BitRate, MemMib, Micros, Percent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

macro_rules! name_type {
    ($(#[$m:meta])* $t:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $t(pub(crate) String);

        impl $t {
            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A lab name: `[a-z0-9][a-z0-9-]*`, at most 40 bytes.
    LabName
);
name_type!(
    /// A node name: `[a-z][a-z0-9-]*`, at most 32 bytes (also a hostname part).
    NodeName
);
name_type!(
    /// A VM name within its node: `[a-z][a-z0-9-]*`, at most 32 bytes (the VM's hostname).
    VmName
);
name_type!(
    /// A lab network name: `[a-z][a-z0-9-]*`, at most 32 bytes.
    NetName
);
name_type!(
    /// A guest interface name: 1..=15 bytes (IFNAMSIZ - 1), no `/`, `:` or whitespace.
    IfaceName
);
name_type!(
    /// A link name (unique in the lab).
    LinkName
);

/// What is wrong with a name (lab, node, VM, interface, image ...). The text follows the name:
/// "VM name 'Web' must start with a lowercase letter".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} bytes")]
    TooLong { max: usize },
    /// Outside `1..=max` bytes (image names).
    #[error("must be 1 to {max} bytes")]
    Length { max: usize },
    #[error("must start with a lowercase letter")]
    FirstNotLetter,
    #[error("must start with a lowercase letter or digit")]
    FirstNotLetterOrDigit,
    #[error("contains '{0}': use lowercase letters, digits and '-'")]
    BadChar(char),
    /// A character image names do not allow.
    #[error("contains '{0}'")]
    Contains(char),
    #[error("ends with '-'")]
    TrailingDash,
    #[error("is {0} bytes: Linux interface names are at most 15")]
    IfnameTooLong(usize),
    /// `.`, `..` or `lo`.
    #[error("is reserved")]
    Reserved,
    #[error("contains '/', ':', '.' or whitespace")]
    IfnameChar,
}

/// Checks a name of the `[a-z][a-z0-9-]*` family; the reason if not.
pub(crate) fn check_name(s: &str, max: usize, digit_first: bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > max {
        return Err(NameError::TooLong { max });
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_lowercase() || (digit_first && first.is_ascii_digit())) {
        return Err(if digit_first {
            NameError::FirstNotLetterOrDigit
        } else {
            NameError::FirstNotLetter
        });
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar(c));
    }
    if s.ends_with('-') {
        return Err(NameError::TrailingDash);
    }
    Ok(())
}

pub(crate) fn check_ifname(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 15 {
        return Err(NameError::IfnameTooLong(s.len()));
    }
    if s == "." || s == ".." || s == "lo" {
        return Err(NameError::Reserved);
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '.')
    {
        return Err(NameError::IfnameChar);
    }
    Ok(())
}

/// A VM in a lab: `node.vm`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmRef {
    /// The node.
    pub node: NodeName,
    /// The VM in the node.
    pub vm: VmName,
}

/// Why a text is not a [`VmRef`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmRefError {
    #[error("'{0}' is not NODE.VM (e.g. web.api)")]
    NotNodeVm(String),
    #[error("node name '{name}' {why}")]
    Node { name: String, why: NameError },
    #[error("VM name '{name}' {why}")]
    Vm { name: String, why: NameError },
}

impl FromStr for VmRef {
    type Err = VmRefError;
    /// Parses `node.vm` (names checked).
    fn from_str(s: &str) -> Result<VmRef, VmRefError> {
        let (n, v) = s
            .split_once('.')
            .ok_or_else(|| VmRefError::NotNodeVm(s.into()))?;
        check_name(n, 32, false).map_err(|why| VmRefError::Node {
            name: n.into(),
            why,
        })?;
        check_name(v, 32, false).map_err(|why| VmRefError::Vm {
            name: v.into(),
            why,
        })?;
        Ok(VmRef {
            node: NodeName(n.to_string()),
            vm: VmName(v.to_string()),
        })
    }
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.vm)
    }
}

/// A short, stable id of a lab (`k` + 6 hex digits of sha256(name)), for host object names
/// that must fit in 15 bytes: `<id>-<8 more>` still fits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabId(pub(crate) String);

impl LabId {
    /// The id of the lab named `name`.
    pub fn of(name: &LabName) -> LabId {
        let d = Sha256::digest(name.as_str().as_bytes());
        LabId(format!("k{:02x}{:02x}{:02x}", d[0], d[1], d[2]))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ethernet MAC address; `MacAddr::derived(lab, node, vm, iface)` is an interface's MAC when
/// the file gives none. The one MAC type, from kobako-net.
pub use kobako_net::MacAddr;

/// An address with its prefix length (`10.0.0.2/24`), or a subnet (`10.0.0.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Maximum prefix for the address family.
    fn max(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn from_bits(v4: bool, b: u128) -> IpAddr {
        if v4 {
            IpAddr::V4((b as u32).into())
        } else {
            IpAddr::V6(b.into())
        }
    }

    fn mask(&self) -> u128 {
        let max = Cidr::max(self.addr);
        let full: u128 = if max == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        if self.prefix == 0 {
            0
        } else {
            let shift = u32::from(max - self.prefix);
            (full >> shift) << shift
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Cidr {
        Cidr {
            addr: Cidr::from_bits(self.addr.is_ipv4(), Cidr::bits(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    /// True if this is a network address (no host bits).
    pub fn is_network(&self) -> bool {
        self.network().addr == self.addr
    }

    /// True if `ip` is in this subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && Cidr::bits(ip) & self.mask() == Cidr::bits(self.addr) & self.mask()
    }

    /// True if the two subnets share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let p = self.prefix.min(other.prefix);
        let a = Cidr {
            addr: self.addr,
            prefix: p,
        };
        a.contains(other.addr)
    }

    /// The `n`-th address of the subnet with this prefix (None past the end or at the
    /// IPv4 broadcast address).
    pub fn host(&self, n: u128) -> Option<Cidr> {
        let max = Cidr::max(self.addr);
        let size: u128 = if max - self.prefix >= 127 {
            u128::MAX
        } else {
            1u128 << (max - self.prefix)
        };
        let last = if self.addr.is_ipv4() && self.prefix < 31 {
            size - 1
        } else {
            size
        };
        if n == 0 || n >= last {
            return None;
        }
        let base = Cidr::bits(self.network().addr);
        Some(Cidr {
            addr: Cidr::from_bits(self.addr.is_ipv4(), base + n),
            prefix: self.prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a text is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' has no prefix length: write it like 10.0.0.0/24")]
    NoPrefix(String),
    #[error("'{0}' is not an IP address")]
    NotAnAddress(String),
    #[error("'/{0}' is not a prefix length")]
    NotAPrefix(String),
    #[error("prefix /{prefix} is longer than /{max} for this address")]
    PrefixTooLong { prefix: u8, max: u8 },
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| CidrError::NoPrefix(s.into()))?;
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(a.into()))?;
        let prefix: u8 = p
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAPrefix(p.into()))?;
        if prefix > Cidr::max(addr) {
            return Err(CidrError::PrefixTooLong {
                prefix,
                max: Cidr::max(addr),
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Limits of the host VMs run on (a parameter, so validation is testable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLimits {
    /// CPUs one VM may have at most.
    pub cpus: u32,
    /// Memory one VM may have at most, and all VMs of a lab together.
    pub memory: MemMib,
}

impl HostLimits {
    /// The limits of this machine (online CPUs, physical memory).
    pub fn detect() -> HostLimits {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                    })
            })
            .unwrap_or(1024 * 1024);
        HostLimits {
            cpus,
            memory: MemMib(mem_kib / 1024),
        }
    }
}

/// Smallest memory a VM may have.
pub const MIN_MEMORY: MemMib = MemMib(64);

/// Why [`Lab::find_vm`] found no VM; the text ends with a did-you-mean when one is close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindVmError {
    #[error(transparent)]
    NotAVmRef(#[from] VmRefError),
    #[error("lab '{lab}' has no node '{node}'{suggestion}")]
    NoNode {
        lab: LabName,
        node: NodeName,
        /// ` (did you mean 'web'?)` or empty.
        suggestion: String,
    },
    #[error("node '{node}' has no VM '{vm}'{suggestion}")]
    NoVm {
        node: NodeName,
        vm: VmName,
        suggestion: String,
    },
}

/// A resolved lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lab {
    /// Name.
    pub name: LabName,
    /// Short stable id for host object names.
    pub id: LabId,
    /// Free text.
    pub description: Option<String>,
    /// When this lab is one of the `copies:` of a lab file.
    pub copy: Option<CopyInfo>,
    /// Nodes in file order.
    pub nodes: Vec<Node>,
    /// Lab networks in file order.
    pub networks: Vec<Network>,
    /// Point-to-point links (lab links first, then links inside nodes).
    pub links: Vec<Link>,
    /// Networks NATed through the host.
    pub uplink: Vec<NetName>,
    /// Host ports forwarded to VMs.
    pub publish: Vec<Publish>,
    /// Directory relative host paths (`files: src`) were resolved against.
    pub base_dir: Option<PathBuf>,
}

/// Which copy of a lab file this lab is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInfo {
    /// Name of the lab file's lab.
    pub of: LabName,
    /// Copy name (`alice` or `3`).
    pub name: String,
    /// Index from 0.
    pub index: u32,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Name.
    pub name: NodeName,
    /// Free text.
    pub description: Option<String>,
    /// The template it came from.
    pub template: Option<String>,
    /// The node-internal network (nodes with 2 or more VMs).
    pub network: Option<NodeNetwork>,
    /// VMs in order (template VMs first).
    pub vms: Vec<Vm>,
}

/// The network joining a node's VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    /// Subnet.
    pub subnet: Cidr,
    /// Interface name in every VM.
    pub interface: IfaceName,
    /// MTU.
    pub mtu: u32,
}

/// A microVM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    /// `node.vm`.
    pub id: VmRef,
    /// Free text.
    pub description: Option<String>,
    /// Image name for the image store.
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory.
    pub memory: MemMib,
    /// `default` or a kernel path.
    pub kernel: String,
    /// Interfaces: the node network's first (when there is one), then in file order.
    pub interfaces: Vec<Interface>,
    /// Static routes (including the default route from a gateway).
    pub routes: Vec<Route>,
    /// Services in start order.
    pub services: Vec<Service>,
    /// Files to copy in before the services start.
    pub files: Vec<FileCopy>,
    /// Host directories mounted read-only into the guest (virtio-9p), in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
    /// Environment of the services.
    pub env: BTreeMap<String, String>,
    /// `/etc/hosts` entries: the node's VMs by name (`api`, `api.web`, node-network
    /// addresses), then the other nodes' VMs as `vm.node` (first IPv4 on a lab network).
    pub hosts: Vec<(String, IpAddr)>,
    /// AppArmor in the guest: the lab file's `security.apparmor`, else `off` on `tiny` and
    /// `enforce` on every other image. Labs stored before the field existed read as `off`
    /// (their guests booted without AppArmor).
    #[serde(default = "apparmor_before_the_field")]
    pub apparmor: AppArmorMode,
    /// Readiness checks run in the guest after it is configured (`ready:`), in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready: Vec<ReadyCheck>,
    /// How long `up` waits for [`Vm::ready`] to pass (`ready_timeout:`), in milliseconds.
    #[serde(default = "default_ready_timeout_ms")]
    pub ready_timeout_ms: u64,
}

fn apparmor_before_the_field() -> AppArmorMode {
    AppArmorMode::Off
}

/// A host directory mounted into the guest (`shares:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The host directory (absolute when the lab came from a file).
    pub src: PathBuf,
    /// Where the guest sees it (absolute).
    pub dst: String,
    /// The virtio-9p mount tag (`kshare0`, `kshare1`, ... in file order).
    pub tag: String,
}

/// Most shared directories one VM may have.
pub const MAX_SHARES: usize = 8;

/// Most readiness checks one VM may declare.
pub const MAX_READY_CHECKS: usize = 16;
/// Longest command or URL of a readiness check, in bytes.
pub const MAX_READY_TEXT: usize = 2048;
/// `ready_timeout` when the lab file gives none.
pub const DEFAULT_READY_TIMEOUT_MS: u64 = 60_000;
/// Longest `ready_timeout` (one hour).
pub const MAX_READY_TIMEOUT_MS: u64 = 3_600_000;

fn default_ready_timeout_ms() -> u64 {
    DEFAULT_READY_TIMEOUT_MS
}

/// One readiness check, run inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyCheck {
    /// A TCP connection to this loopback port is accepted.
    Tcp(u16),
    /// A GET of this `http://` URL (on the guest itself) answers 2xx or 3xx.
    Http(String),
    /// This `/bin/sh -c` command exits 0.
    Exec(String),
}

impl fmt::Display for ReadyCheck {
    /// `tcp 6379`, `http http://localhost:8080/health`, `exec 'redis-cli ping'`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyCheck::Tcp(p) => write!(f, "tcp {p}"),
            ReadyCheck::Http(u) => write!(f, "http {u}"),
            ReadyCheck::Exec(c) => write!(f, "exec '{c}'"),
        }
    }
}

impl Vm {
    /// `/etc/hosts` for the guest: localhost, itself, then [`Vm::hosts`].
    pub fn hosts_file(&self) -> String {
        let mut s = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            self.id.vm
        );
        for (name, addr) in &self.hosts {
            s.push_str(&format!("{addr}\t{name}\n"));
        }
        s
    }

    /// Guest kernel command-line parameters the VM's settings add (AppArmor's mode).
    pub fn kernel_cmdline(&self) -> String {
        self.apparmor.kernel_cmdline().to_string()
    }

    /// The interface named `name`.
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name.as_str() == name)
    }
}

/// What an interface is plugged into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    /// The node-internal network.
    NodeNetwork,
    /// A lab network.
    Network(NetName),
    /// A point-to-point link.
    Link(LinkName),
}

/// A VM interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Guest name.
    pub name: IfaceName,
    /// What it is plugged into.
    pub attach: Attachment,
    /// Addresses.
    pub addresses: Vec<Cidr>,
    /// MAC (derived unless given).
    pub mac: MacAddr,
    /// Whether `mac` was given in the file (kept on save).
    pub mac_explicit: bool,
    /// MTU.
    pub mtu: u32,
    /// VLAN of the host port (from the network).
    pub vlan: Option<u16>,
    /// Gateway given on the interface itself.
    pub gateway: Option<IpAddr>,
    /// No default route through this interface.
    pub no_gateway: bool,
}

/// A static route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination (`0.0.0.0/0` for the default route).
    pub to: Cidr,
    /// Next hop.
    pub via: IpAddr,
    /// The default route derived from a network's or interface's gateway (not in `routes:`).
    pub from_gateway: bool,
}

/// A service the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Name, unique in the VM.
    pub name: String,
    /// `/bin/sh -c` command.
    pub command: String,
    /// Restart policy.
    pub restart: Restart,
}

/// Where a copied file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileSource {
    /// A host path (absolute when the lab file's directory is known).
    Host(PathBuf),
    /// Inline content.
    Inline(String),
}

/// A file copied into a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCopy {
    /// Source.
    pub source: FileSource,
    /// Absolute guest path.
    pub dst: String,
    /// Mode bits.
    pub mode: u32,
}

/// A lab network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Name.
    pub name: NetName,
    /// IPv4 subnet.
    pub subnet: Option<Cidr>,
    /// IPv6 subnet.
    pub subnet6: Option<Cidr>,
    /// 802.1Q VLAN id.
    pub vlan: Option<u16>,
    /// MTU.
    pub mtu: u32,
    /// Default gateway of its VMs.
    pub gateway: Option<IpAddr>,
    /// The gateway is the host side (lab namespace) of the bridge, not a VM.
    pub host_gateway: bool,
}

/// One end of a link.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The VM.
    pub vm: VmRef,
    /// Its interface.
    pub iface: IfaceName,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.vm, self.iface)
    }
}

/// A point-to-point link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Name (unique in the lab).
    pub name: LinkName,
    /// Whether `name` was given in the file.
    pub name_explicit: bool,
    /// The two ends.
    pub endpoints: [Endpoint; 2],
    /// Impairments.
    pub impair: Impairment,
    /// Up or down.
    pub state: LinkState,
    /// MTU.
    pub mtu: u32,
    /// Declared inside this node (or its template), not at lab level.
    pub node: Option<NodeName>,
}

/// A percentage with its correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Chance {
    /// Probability.
    pub percent: Percent,
    /// Correlation with the previous packet.
    pub correlation: Percent,
}

/// Impairments of a link (netem), both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Impairment {
    /// One-way delay.
    pub delay: Option<Micros>,
    /// Delay variation.
    pub jitter: Option<Micros>,
    /// Loss.
    pub loss: Option<Chance>,
    /// Rate limit.
    pub rate: Option<BitRate>,
    /// Corruption.
    pub corrupt: Option<Chance>,
    /// Duplication.
    pub duplicate: Option<Chance>,
    /// Reordering.
    pub reorder: Option<Chance>,
}

impl Impairment {
    /// No impairment at all.
    pub fn is_none(&self) -> bool {
        *self == Impairment::default()
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A host port forwarded to a VM port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Host port.
    pub host_port: u16,
    /// The VM.
    pub vm: VmRef,
    /// VM port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// The VM address the port goes to (its first IPv4 address on a lab network).
    pub target: IpAddr,
}

impl Lab {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name.as_str() == name)
    }

    /// The VM `r`.
    pub fn vm(&self, r: &VmRef) -> Option<&Vm> {
        self.node(r.node.as_str())?
            .vms
            .iter()
            .find(|v| v.id.vm == r.vm)
    }

    /// The VM named `node.vm` (as users type it; `node` for a node of one VM), or what is
    /// wrong with a did-you-mean (for `kobako exec web.ap`).
    pub fn find_vm(&self, s: &str) -> Result<&Vm, FindVmError> {
        use super::error::suggest;
        // `NODE` alone names the VM of a node of one VM (containerlab's habit).
        if !s.contains('.') {
            if let Some([only]) = self.node(s).map(|n| n.vms.as_slice()) {
                return Ok(only);
            }
        }
        let r: VmRef = s.parse()?;
        let Some(n) = self.node(r.node.as_str()) else {
            return Err(FindVmError::NoNode {
                lab: self.name.clone(),
                suggestion: suggest(r.node.as_str(), self.nodes.iter().map(|n| n.name.as_str())),
                node: r.node,
            });
        };
        n.vms
            .iter()
            .find(|v| v.id.vm == r.vm)
            .ok_or_else(|| FindVmError::NoVm {
                suggestion: suggest(r.vm.as_str(), n.vms.iter().map(|v| v.id.vm.as_str())),
                node: r.node,
                vm: r.vm,
            })
    }

    /// Every VM, node by node.
    pub fn vms(&self) -> impl Iterator<Item = &Vm> {
        self.nodes.iter().flat_map(|n| n.vms.iter())
    }

    /// The link named `name`.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name.as_str() == name)
    }

    /// The network named `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name.as_str() == name)
    }

    /// Total memory of all VMs.
    pub fn total_memory(&self) -> MemMib {
        MemMib(self.vms().map(|v| v.memory.0).sum())
    }

    /// Length of every [`Lab::host_ifname`].
    pub const fn host_ifname_len() -> usize {
        7 + 8
    }

    /// A host interface name for `key` (a VM interface, a network ...) that fits in 15
    /// bytes: `<lab id>` + 8 hex digits of sha256(key), e.g. `k1a2b3c5f00ba12`.
    pub fn host_ifname(&self, key: &str) -> String {
        let d = Sha256::digest(key.as_bytes());
        format!(
            "{}{:02x}{:02x}{:02x}{:02x}",
            self.id, d[0], d[1], d[2], d[3]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let n: Cidr = "10.0.0.0/24".parse().unwrap();
        assert!(n.contains("10.0.0.7".parse().unwrap()));
        assert!(!n.contains("10.0.1.7".parse().unwrap()));
        assert!(n.overlaps(&"10.0.0.128/25".parse().unwrap()));
        assert!(!n.overlaps(&"10.0.1.0/24".parse().unwrap()));
        assert_eq!(n.host(1).unwrap().to_string(), "10.0.0.1/24");
        assert_eq!(n.host(255), None);
        let v6: Cidr = "fd00::/64".parse().unwrap();
        assert!(v6.contains("fd00::5".parse().unwrap()));
        assert_eq!(v6.host(2).unwrap().to_string(), "fd00::2/64");
        assert!("10.0.0.5/24"
            .parse::<Cidr>()
            .map(|c| !c.is_network())
            .unwrap());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn macs_are_local_unicast_and_stable() {
        let a = MacAddr::derived("lab", "web", "api", "eth1");
        assert!(a.is_local() && a.is_unicast());
        assert_eq!(a, MacAddr::derived("lab", "web", "api", "eth1"));
        assert_ne!(a, MacAddr::derived("lab", "web", "api", "eth2"));
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
        assert_eq!(
            a.to_string(),
            "8e:3d:5e:6a:c9:e4",
            "existing labs' guests have this MAC"
        );
    }

    #[test]
    fn lab_id_and_host_names_fit() {
        let id = LabId::of(&LabName("shop".into()));
        assert_eq!(id.as_str().len(), 7);
        assert_eq!(id, LabId::of(&LabName("shop".into())));
        assert!(Lab::host_ifname_len() <= 15);
    }
}
