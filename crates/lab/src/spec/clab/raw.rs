//! A containerlab topology file as written (serde, `deny_unknown_fields`): the fields kobako
//! maps. Fields containerlab knows but kobako does not map are taken out of the tree before
//! this is deserialized, each with its own message ([`super::unsupported`]); anything else is
//! an unknown key (with did-you-mean), located like every lab file error.

use crate::spec::raw::EnvValue;
use indexmap::IndexMap;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// A `*.clab.yml` file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClabFile {
    pub name: String,
    /// Container name prefix: kobako names VMs `LAB.NODE.VM` (a warning says so).
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub mgmt: Option<ClabMgmt>,
    pub topology: ClabTopology,
}

/// `mgmt:`: the management network every node's eth0 is on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClabMgmt {
    /// Docker network name (kept in the description).
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ipv4_subnet: Option<String>,
    #[serde(default)]
    pub ipv6_subnet: Option<String>,
    #[serde(default)]
    pub ipv4_gw: Option<String>,
    #[serde(default)]
    pub ipv6_gw: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Host bridge name: kobako makes its own bridge in the lab's namespace (warning).
    #[serde(default)]
    pub bridge: Option<String>,
    /// `false`: no NAT to the outside (kobako: no `uplink`).
    #[serde(default)]
    pub external_access: Option<bool>,
}

/// `topology:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClabTopology {
    #[serde(default)]
    pub defaults: Option<ClabNode>,
    #[serde(default)]
    pub kinds: IndexMap<String, ClabNode>,
    #[serde(default)]
    pub nodes: IndexMap<String, ClabNode>,
    #[serde(default)]
    pub links: Vec<ClabLink>,
}

/// A node (also `defaults` and each entry of `kinds`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClabNode {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default)]
    pub binds: Option<Vec<String>>,
    #[serde(default)]
    pub env: IndexMap<String, EnvValue>,
    #[serde(default)]
    pub labels: IndexMap<String, EnvValue>,
    #[serde(default)]
    pub startup_config: Option<String>,
    #[serde(default)]
    pub mgmt_ipv4: Option<String>,
    #[serde(default)]
    pub mgmt_ipv6: Option<String>,
    /// CPUs (containerlab: a float quota); kobako gives whole vCPUs, rounded up.
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Docker-style memory (`512mb`, `1Gb`, `1g`).
    #[serde(default)]
    pub memory: Option<EnvValue>,
    /// `HOST:PORT[/tcp|/udp]` (or `ADDR:HOST:PORT`): published host ports.
    #[serde(default)]
    pub ports: Option<Vec<EnvValue>>,
    /// Free text (kept in the node's description).
    #[serde(default)]
    pub group: Option<String>,
    /// The container's command: a supervised service of the VM.
    #[serde(default)]
    pub cmd: Option<String>,
    /// Kernel parameters set in the VM before `exec` runs.
    #[serde(default)]
    pub sysctls: IndexMap<String, EnvValue>,
}

/// A link: the brief form (`endpoints: ["a:eth1", "b:eth1"]`) or the extended one
/// (`type: veth`, `endpoints: [{node: a, interface: eth1, mac: ...}]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClabLink {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<ClabEndpoint>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Variables for containerlab's config templates: kobako has none (a warning says so).
    #[serde(default)]
    pub vars: Option<serde_json::Value>,
    #[serde(default)]
    pub labels: IndexMap<String, EnvValue>,
}

/// One end of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClabEndpoint {
    /// `NODE:IFACE`.
    Brief(String),
    /// `{node, interface, mac}`.
    Full(ClabEndpointFull),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClabEndpointFull {
    pub node: String,
    pub interface: String,
    #[serde(default)]
    pub mac: Option<String>,
}

impl<'de> Deserialize<'de> for ClabEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClabEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"NODE:IFACE\", or {node, interface, mac}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClabEndpoint, E> {
                Ok(ClabEndpoint::Brief(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<ClabEndpoint, A::Error> {
                ClabEndpointFull::deserialize(MapAccessDeserializer::new(m)).map(ClabEndpoint::Full)
            }
        }
        d.deserialize_any(V)
    }
}
