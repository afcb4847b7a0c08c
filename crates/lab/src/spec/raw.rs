//! Raw types: the lab file exactly as written (serde, `deny_unknown_fields`). Names, addresses
//! and references stay strings here; [`mod@super::resolve`] checks them with positions. Values
//! with units are parsed here ([`MemMib`], [`Micros`], [`Percent`], [`BitRate`]).
//!
//! The JSON Schema of lab files (`schema/lab.schema.json`) is generated from these types.

use super::units::{BitRate, MemMib, Micros, Percent};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A lab file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kobako lab file")]
pub struct RawLab {
    /// Lab name: lowercase letters, digits and `-`, up to 40 bytes.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Values every VM gets unless its template, node or itself says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<RawDefaults>,
    /// Node templates defined in this file (they shadow the templates shipped with kobako).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub templates: IndexMap<String, RawNode>,
    /// The nodes: each is 1..N microVMs sharing a node-internal network.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub nodes: IndexMap<String, RawNode>,
    /// Lab networks (one bridge each).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub networks: IndexMap<String, RawNetwork>,
    /// Point-to-point links between two VM interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<RawLink>,
    /// Outbound NAT through the host: `true` for every network with a subnet, or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<RawUplink>,
    /// Host ports forwarded to VM ports: `HOSTPORT:NODE.VM:PORT[/tcp|/udp]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Several isolated copies of this lab (e.g. one per student).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<RawCopies>,
}

/// Lab-wide defaults for VMs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Image name from the image store (`tiny`, `debian`, `debian-web` ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Virtual CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Memory, e.g. `128M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemMib>,
    /// Guest kernel: `default` or a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Readiness checks of every VM that declares none itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Vec<RawReadyCheck>>,
    /// How long `up` waits for a VM's readiness checks, e.g. `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<Micros>,
}

/// A node (under `nodes:`) or a node template (under `templates:`, or shipped with kobako).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Start from this template (a file template or one shipped with kobako); `vms` below
    /// adds VMs or overrides the template's VMs field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The node's VMs.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub vms: IndexMap<String, RawVm>,
    /// The network joining the node's VMs (created when the node has 2 or more VMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_network: Option<RawNodeNetwork>,
    /// Point-to-point links inside the node; endpoints are `VM:IFACE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<RawLink>,
}

/// The node-internal network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNodeNetwork {
    /// IPv4 subnet; default `172.31.0.0/24`. VMs get addresses from `.10` in node order
    /// and can reach each other by VM name (`api`, `api.web`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Interface name in every VM; default `eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// MTU; default 1500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Explicit addresses by VM name (without prefix), overriding the automatic ones.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub addresses: IndexMap<String, String>,
}

/// One microVM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Image name from the image store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Virtual CPUs (1 up to the host's CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub vcpus: Option<u32>,
    /// Memory (64M up to the host's memory), e.g. `256M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemMib>,
    /// Guest kernel: `default` or a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Network interfaces by guest name (at most 15 bytes).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub interfaces: IndexMap<String, RawInterface>,
    /// Static routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RawRoute>,
    /// Services the agent runs and supervises, in order. Replaces a template's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Vec<RawService>>,
    /// Files copied into the guest before the services start, by guest path.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub files: IndexMap<String, RawFile>,
    /// Environment of the services.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<String, EnvValue>,
    /// Host directories mounted into the guest (virtio-9p; the QEMU runtime), by guest path:
    /// `{/srv/data: ./data}`. Read-only; host paths are for admins and the local CLI.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub shares: IndexMap<String, RawShare>,
    /// Security modules in the guest: `{apparmor: enforce|complain|off}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<RawSecurity>,
    /// Readiness checks run inside the guest after it is configured; `up` reports the VM
    /// ready only when all pass (at most 16). Replaces a template's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub ready: Option<Vec<RawReadyCheck>>,
    /// How long `up` waits for the readiness checks to pass, e.g. `90s`; default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<Micros>,
}

/// One readiness check: exactly one of `tcp`, `http`, `exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReadyCheck {
    /// A TCP port on the guest's loopback (127.0.0.1, else ::1) that accepts a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub tcp: Option<u32>,
    /// An `http://` URL on the guest itself (`localhost`, 127.0.0.1, [::1]) whose GET answers
    /// 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub http: Option<String>,
    /// A command (`/bin/sh -c`) that exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub exec: Option<String>,
}

/// A VM's security settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    /// AppArmor in the guest: `enforce` (the default on Debian images: kobako's profiles for
    /// the template services confine them), `complain` (profiles loaded, violations logged but
    /// allowed) or `off` (the default on `tiny`, which has no AppArmor userspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor: Option<AppArmorMode>,
}

/// AppArmor mode of a guest (the kernel command line carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppArmorMode {
    /// Profiles are enforced: what a profile does not allow is denied and logged.
    Enforce,
    /// Profiles are loaded in complain mode: violations are allowed and logged.
    Complain,
    /// AppArmor is off in the guest kernel (`apparmor=0`).
    Off,
}

impl AppArmorMode {
    /// The name as written in lab files.
    pub fn as_str(self) -> &'static str {
        match self {
            AppArmorMode::Enforce => "enforce",
            AppArmorMode::Complain => "complain",
            AppArmorMode::Off => "off",
        }
    }

    /// Guest kernel command-line parameters for this mode: `apparmor=0` turns the LSM off,
    /// `apparmor.mode=complain` makes every loaded profile complain; `apparmor=1` (enforce,
    /// kobako's kernel's default) says it for kernels built otherwise.
    pub fn kernel_cmdline(self) -> &'static str {
        match self {
            AppArmorMode::Enforce => "apparmor=1",
            AppArmorMode::Complain => "apparmor.mode=complain",
            AppArmorMode::Off => "apparmor=0",
        }
    }
}

impl fmt::Display for AppArmorMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An environment value: strings, numbers and booleans are taken as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct EnvValue(#[schemars(with = "EnvValueSchema")] pub String);

#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
enum EnvValueSchema {
    S(String),
    N(f64),
    B(bool),
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A VM interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    /// Lab network this interface joins. An interface without one must be a link endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Addresses in CIDR form (`10.0.0.2/24`, `fd00::2/64`); an address without a prefix
    /// takes the network's. Default on a network with a subnet: the next free address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// MAC address; default: derived from lab, node, VM and interface names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU; default: the network's or link's, else 1500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Default route through this gateway (default: the network's gateway, unless the VM owns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// No default route through this interface even if the network has a gateway.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_gateway: bool,
}

/// A static route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Destination in CIDR form (`default` for 0.0.0.0/0).
    pub to: String,
    /// Next hop.
    pub via: String,
}

/// Restart policy of a service (as the agent applies it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Restart whenever it ends (the default).
    #[default]
    Always,
    /// Restart when it fails.
    OnFailure,
    /// Run once (setup steps).
    Never,
}

/// A service: a command (`/bin/sh -c`), or `{name, command, restart}`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawService {
    /// Just the command; named `svc<N>` after its position.
    Command(String),
    /// Named, with a restart policy.
    Full(RawServiceFull),
}

/// A named service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServiceFull {
    /// Service name (unique in the VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Run with `/bin/sh -c`.
    pub command: String,
    /// `always` (default), `on-failure` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
}

impl<'de> Deserialize<'de> for RawService {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawService;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command, or {name, command, restart}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawService, E> {
                Ok(RawService::Command(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawService, A::Error> {
                RawServiceFull::deserialize(MapAccessDeserializer::new(m)).map(RawService::Full)
            }
        }
        d.deserialize_any(V)
    }
}

/// A file copied into the guest: a host path (relative to the lab file), or
/// `{src | content, mode}`.
/// A shared directory: its host path, or `{src, readonly}`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawShare {
    Src(String),
    Full(RawShareFull),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShareFull {
    /// The host directory (relative: from the lab file's directory).
    pub src: String,
    /// Read-only in the guest (the default, and the only mode kobako offers yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

impl<'de> Deserialize<'de> for RawShare {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawShare;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a host directory, or {src, readonly}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawShare, E> {
                Ok(RawShare::Src(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawShare, A::Error> {
                RawShareFull::deserialize(MapAccessDeserializer::new(m)).map(RawShare::Full)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawFile {
    /// Host path.
    Src(String),
    /// With options.
    Full(RawFileFull),
}

/// A file with options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFileFull {
    /// Host path (relative to the lab file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// The file's content, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Octal mode as a string, e.g. `"0755"`; default `"0644"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl<'de> Deserialize<'de> for RawFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a host path, or {src | content, mode}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawFile, E> {
                Ok(RawFile::Src(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawFile, A::Error> {
                RawFileFull::deserialize(MapAccessDeserializer::new(m)).map(RawFile::Full)
            }
        }
        d.deserialize_any(V)
    }
}

/// A lab network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// IPv4 subnet, e.g. `10.10.0.0/24`. Without one, addresses are not checked or assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// IPv6 subnet, e.g. `fd00:10::/64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    /// 802.1Q VLAN id (1..4094) of the network's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4094))]
    pub vlan: Option<u32>,
    /// MTU; default 1500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Default gateway of the VMs on this network (an address in the subnet). With `uplink`,
    /// defaults to the first address, held by the host side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// A point-to-point link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLink {
    /// Name for `kobako impair NAME`; default `NODE.VM-NODE.VM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Exactly two endpoints `NODE.VM:IFACE` (`NODE:IFACE` for a node of one VM; `VM:IFACE`
    /// inside a node or template).
    pub endpoints: Vec<String>,
    /// Impairments (netem) on both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impair: Option<RawImpair>,
    /// `up` (default) or `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<LinkState>,
    /// MTU; default 1500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Administrative state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Carrying traffic.
    #[default]
    Up,
    /// Cut.
    Down,
}

/// Impairments of a link (netem).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawImpair {
    /// One-way delay, e.g. `20ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Micros>,
    /// Delay variation, e.g. `5ms` (needs `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Micros>,
    /// Packet loss, e.g. `1%` or `{percent: 1%, correlation: 25%}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<RawPct>,
    /// Rate limit, e.g. `10mbit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<BitRate>,
    /// Corrupted packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<RawPct>,
    /// Duplicated packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<RawPct>,
    /// Reordered packets (needs `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<RawPct>,
}

/// A percentage, optionally with a correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawPct {
    /// `1%`.
    Plain(Percent),
    /// `{percent: 1%, correlation: 25%}`.
    Correlated(RawPctFull),
}

/// A percentage with a correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPctFull {
    /// The percentage.
    pub percent: Percent,
    /// Correlation with the previous packet.
    pub correlation: Percent,
}

impl RawPct {
    /// (percentage, correlation).
    pub fn parts(self) -> (Percent, Percent) {
        match self {
            RawPct::Plain(p) => (p, Percent(0)),
            RawPct::Correlated(f) => (f.percent, f.correlation),
        }
    }
}

impl<'de> Deserialize<'de> for RawPct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPct;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage like 1%, or {percent: 1%, correlation: 25%}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPct, E> {
                v.parse().map(RawPct::Plain).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPct, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write a percentage like {v}%"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPct, E> {
                self.visit_i64(v as i64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawPct, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write a percentage like {v}%"
                )))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawPct, A::Error> {
                RawPctFull::deserialize(MapAccessDeserializer::new(m)).map(RawPct::Correlated)
            }
        }
        d.deserialize_any(V)
    }
}

/// Outbound NAT: `true`/`false`, or `{networks: [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawUplink {
    /// All networks with a subnet, or none.
    All(bool),
    /// Only these networks.
    Some(RawUplinkFull),
}

/// Uplink for some networks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUplinkFull {
    /// Lab networks whose VMs reach outside through the host.
    pub networks: Vec<String>,
}

impl<'de> Deserialize<'de> for RawUplink {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUplink;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or {networks: [...]}")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawUplink, E> {
                Ok(RawUplink::All(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawUplink, A::Error> {
                RawUplinkFull::deserialize(MapAccessDeserializer::new(m)).map(RawUplink::Some)
            }
        }
        d.deserialize_any(V)
    }
}

/// Copies of the lab: each copy is its own lab (own namespace, nothing shared), named
/// `LAB-NAME` for each name (or `LAB-1` .. `LAB-N` for a count).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCopies {
    /// Number of copies (1..=200), named `1`..`N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Names of the copies (e.g. students), instead of a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Published host ports of copy `i` (from 0) are shifted by `i * port_stride`; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_stride: Option<u16>,
}
