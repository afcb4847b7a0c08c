//! Host ports and egress are an admin's decision: which host ports a lab may publish, and which
//! private ranges its uplink may reach.
//!
//! - **Members' labs** (a lab whose owner is not an admin) publish only host ports ≥ 1024, never
//!   22, never the server's own listen ports, and (checked at `up`) never a port a host service
//!   listens on. An admin widens one lab with a [`NetPolicy`] (`publish_ports`, e.g. `"80"`,
//!   `"8000-8100"`), stored with the lab and bound to its owner; the server's own ports stay closed
//!   to members whatever the policy says.
//! - **Admins' labs** (and labs without an owner: the local CLI, i.e. root) publish anything.
//! - **Every lab**: two labs never publish the same host port (checked at `up`, under one host-wide
//!   lock so two `up`s cannot both win); its uplink reaches no private, shared, loopback,
//!   link-local or multicast range unless its policy's `uplink_allow` names it (enforced by
//!   nftables, see [`kobako_net::EGRESS_BLOCKED`]), and never the host itself.
//!
//! The server tells the controller its own ports and who is an admin once, at start
//! ([`configure`]); the library reads no environment.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kobako_net::Ipv4Cidr;
pub use kobako_net::EGRESS_BLOCKED as UPLINK_BLOCKED;
use kobako_state::Db;
use serde::{Deserialize, Serialize};

use crate::spec::{Lab, Proto, Publish};

/// What the server knows about a lab's owner (a user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerInfo {
    /// The user is an admin.
    pub admin: bool,
    /// When the user was created: a policy granted before that was granted to someone else
    /// of the same name (a deleted user) and does not apply.
    pub since_ms: i64,
    /// The user's quotas (None: no limit): their VMs' cgroups share a parent with these
    /// limits, so the kernel holds them too.
    pub max_vms: Option<u32>,
    pub max_memory_mib: Option<u64>,
}

/// Looks a lab's owner up by name (`None`: no such user).
pub type OwnerLookup = dyn Fn(&str) -> Option<OwnerInfo> + Send + Sync;

/// What the process serving labs tells the controller about the host.
#[derive(Clone, Default)]
pub struct HostNetConfig {
    /// The server's own listen ports: a member's lab never publishes them.
    pub server_ports: Vec<u16>,
    /// Who a lab's owner is. Without it, every lab that has an owner is treated as a member's
    /// with nothing granted.
    pub owner: Option<Arc<OwnerLookup>>,
}

impl fmt::Debug for HostNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostNetConfig")
            .field("server_ports", &self.server_ports)
            .field("owner", &self.owner.is_some())
            .finish()
    }
}

static CONFIG: RwLock<Option<Arc<HostNetConfig>>> = RwLock::new(None);

/// Sets the host configuration for this process (the server calls it at start).
pub fn configure(cfg: HostNetConfig) {
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(cfg));
}

/// The host configuration ([`configure`]; empty when nothing was configured).
pub fn host_config() -> Arc<HostNetConfig> {
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Most entries a policy list may have.
pub const MAX_POLICY_ENTRIES: usize = 64;

/// A host port or an inclusive range of them: `"80"`, `"8000-8100"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// A policy entry that does not read, or a policy too long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("'{0}' is not a host port or range (write \"80\" or \"8000-8100\"; ports 1..65535)")]
    NotAPort(String),
    #[error("port range '{text}' ends before it starts (write \"{hi}-{lo}\")")]
    Reversed { text: String, lo: u16, hi: u16 },
    #[error("'{0}' is not an IPv4 network (write e.g. \"10.0.0.0/8\")")]
    NotANetwork(String),
    #[error("'{text}' has host bits set: write \"{net}/{prefix}\"")]
    HostBits {
        text: String,
        net: std::net::Ipv4Addr,
        prefix: u32,
    },
    #[error("at most {MAX_POLICY_ENTRIES} entries per list (use ranges)")]
    TooMany,
}

impl FromStr for PortRange {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let port = |x: &str| -> Result<u16, PolicyError> {
            match x.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(PolicyError::NotAPort(s.into())),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if lo > hi {
            return Err(PolicyError::Reversed {
                text: s.into(),
                lo,
                hi,
            });
        }
        Ok(PortRange { lo, hi })
    }
}

impl TryFrom<String> for PortRange {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, PolicyError> {
        s.parse()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

/// An IPv4 network an uplink may reach: `"10.0.0.0/8"` (host bits must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllowNet(Ipv4Cidr);

impl AllowNet {
    /// The network.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.0
    }
}

impl FromStr for AllowNet {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let c: Ipv4Cidr = s.parse().map_err(|_| PolicyError::NotANetwork(s.into()))?;
        let p = u32::from(c.prefix());
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        let net = u32::from(c.addr()) & mask;
        if net != u32::from(c.addr()) {
            return Err(PolicyError::HostBits {
                text: s.into(),
                net: std::net::Ipv4Addr::from(net),
                prefix: p,
            });
        }
        Ok(AllowNet(c))
    }
}

impl TryFrom<String> for AllowNet {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, PolicyError> {
        s.parse()
    }
}

impl From<AllowNet> for String {
    fn from(a: AllowNet) -> String {
        a.0.to_string()
    }
}

/// What an admin allowed one lab beyond the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetPolicy {
    /// Host ports a member's lab may publish besides ≥ 1024 (e.g. `"80"`, `"8000-8100"`).
    #[serde(default)]
    pub publish_ports: Vec<PortRange>,
    /// Private/link-local ranges the lab's uplink may reach (e.g. `"10.0.0.0/8"`).
    #[serde(default)]
    pub uplink_allow: Vec<AllowNet>,
}

impl NetPolicy {
    /// Checks the sizes of the lists.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.publish_ports.len() > MAX_POLICY_ENTRIES
            || self.uplink_allow.len() > MAX_POLICY_ENTRIES
        {
            return Err(PolicyError::TooMany);
        }
        Ok(())
    }

    fn allows_port(&self, port: u16) -> bool {
        self.publish_ports.iter().any(|r| r.contains(port))
    }
}

/// Whose lab it is, for what it may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// An admin's lab, or a lab without owner (the local CLI): any host port.
    Admin,
    /// A member's lab: the defaults plus its policy.
    Member,
}

/// Why a published host port is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishDenied {
    #[error(
        "host port {port} is below 1024; a member's lab publishes ports 1024-65535 (publish e.g. {}, or ask an admin to allow port {port} for this lab)",
        u32::from(*port) + 8000
    )]
    Privileged { port: u16 },
    #[error(
        "host port 22 is the host's SSH port; publish another port (e.g. 2222) or ask an admin to allow port 22 for this lab"
    )]
    Ssh,
    #[error("host port {port} is the kobako server's own port; publish another port")]
    ServerPort { port: u16 },
    #[error(
        "host port {port}/{proto} is in use on the host (a service listens on it); publish another port"
    )]
    InUseOnHost { port: u16, proto: &'static str },
    #[error(
        "host port {port}/{proto} is already published by lab '{lab}'; publish another port or take that lab down first"
    )]
    TakenByLab {
        port: u16,
        proto: &'static str,
        lab: String,
    },
    #[error("host port {port}/{proto} is in use; publish another port")]
    Taken { port: u16, proto: &'static str },
}

impl PublishDenied {
    /// A conflict with what exists now (409), rather than a lack of permission (403).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            PublishDenied::InUseOnHost { .. }
                | PublishDenied::TakenByLab { .. }
                | PublishDenied::Taken { .. }
        )
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// The principal and policy that apply to lab `lab` owned by `owner`, looking the owner up
/// through [`HostNetConfig::owner`] (see [`effective_with`]).
pub fn effective(
    db: &Db,
    lab: &str,
    owner: Option<&str>,
) -> kobako_state::Result<(Principal, NetPolicy)> {
    let info = owner.and_then(|o| host_config().owner.as_ref().and_then(|f| f(o)));
    effective_with(db, lab, owner, info)
}

/// The principal and policy for lab `lab` owned by `owner` (`info`: what is known of that
/// user). No owner (the local CLI, root) is [`Principal::Admin`]; an owner nobody knows is a
/// member with nothing granted. The stored policy applies only if it was granted to this owner,
/// after this user was created.
pub fn effective_with(
    db: &Db,
    lab: &str,
    owner: Option<&str>,
    info: Option<OwnerInfo>,
) -> kobako_state::Result<(Principal, NetPolicy)> {
    Ok(match (owner, info) {
        (None, _) => (Principal::Admin, stored_policy(db, lab, None, 0)?),
        (Some(o), Some(i)) => (
            if i.admin {
                Principal::Admin
            } else {
                Principal::Member
            },
            stored_policy(db, lab, Some(o), i.since_ms)?,
        ),
        (Some(_), None) => (Principal::Member, NetPolicy::default()),
    })
}

/// The policy stored for `lab` if it was granted to `owner` at or after `since_ms` (else the
/// empty policy).
fn stored_policy(
    db: &Db,
    lab: &str,
    owner: Option<&str>,
    since_ms: i64,
) -> kobako_state::Result<NetPolicy> {
    Ok(db
        .net_policy(lab)?
        .filter(|r| r.owner.as_deref() == owner && r.updated_ms >= since_ms)
        .and_then(|r| serde_json::from_value(r.policy).ok())
        .unwrap_or_default())
}

/// Whether `who` may publish the lab's host ports at all (the rules that do not depend on
/// what runs). Checked when a lab is created and at every `up`.
pub fn check_allowed(
    publish: &[Publish],
    who: Principal,
    policy: &NetPolicy,
    server_ports: &[u16],
) -> Result<(), PublishDenied> {
    if who == Principal::Admin {
        return Ok(());
    }
    for p in publish {
        let port = p.host_port;
        if server_ports.contains(&port) {
            return Err(PublishDenied::ServerPort { port });
        }
        if policy.allows_port(port) {
            continue;
        }
        if port == 22 {
            return Err(PublishDenied::Ssh);
        }
        if port < 1024 {
            return Err(PublishDenied::Privileged { port });
        }
    }
    Ok(())
}

/// Who is asking, for what a conflict may reveal about other labs.
#[derive(Debug, Clone, Copy)]
pub enum Asker<'a> {
    /// Sees every lab's name.
    Admin,
    /// Sees the names of its own labs only.
    Member(&'a str),
}

/// Whether the lab's host ports are free now: not published by another lab that is up (its
/// namespace exists), and — for a member's lab — not a port a host service listens on. The
/// outer error: the other labs could not be read (nothing is assumed free then).
pub fn check_free(
    db: &Db,
    lab: &Lab,
    who: Principal,
    asker: Asker<'_>,
) -> kobako_state::Result<Result<(), PublishDenied>> {
    if lab.publish.is_empty() {
        return Ok(Ok(()));
    }
    Ok(check_free_in(&db.labs()?, lab, who, asker))
}

fn check_free_in(
    rows: &[kobako_state::LabRow],
    lab: &Lab,
    who: Principal,
    asker: Asker<'_>,
) -> Result<(), PublishDenied> {
    #[derive(Deserialize)]
    struct Published {
        #[serde(default)]
        publish: Vec<Publish>,
    }
    let name = lab.name.as_str();
    for row in rows.iter().filter(|r| r.name != name) {
        if !lab_is_up(&row.name) {
            continue;
        }
        let Ok(other) = serde_json::from_value::<Published>(row.spec.clone()) else {
            continue;
        };
        for p in &lab.publish {
            if other
                .publish
                .iter()
                .any(|o| o.host_port == p.host_port && o.proto == p.proto)
            {
                let (port, proto) = (p.host_port, proto_name(p.proto));
                let visible = match asker {
                    Asker::Admin => true,
                    Asker::Member(m) => row.owner.as_deref() == Some(m),
                };
                return Err(if visible {
                    PublishDenied::TakenByLab {
                        port,
                        proto,
                        lab: row.name.clone(),
                    }
                } else {
                    PublishDenied::Taken { port, proto }
                });
            }
        }
    }
    if who == Principal::Member {
        let used = host_ports_in_use();
        for p in &lab.publish {
            if used.contains(&(p.proto, p.host_port)) {
                return Err(PublishDenied::InUseOnHost {
                    port: p.host_port,
                    proto: proto_name(p.proto),
                });
            }
        }
    }
    Ok(())
}

/// Whether lab `name` has a host network (its namespace exists). Only looks: opening the lab
/// (`LabNet::open`) would touch it.
fn lab_is_up(name: &str) -> bool {
    kobako_net::LabName::new(name)
        .ok()
        .and_then(|n| kobako_net::Netns::open(&n.netns_name()).ok().flatten())
        .is_some()
}

/// Ports that sockets of the host namespace hold: TCP listeners and bound UDP sockets, IPv4
/// and IPv6 (`/proc/thread-self/net/{tcp,tcp6,udp,udp6}` of the calling thread, which never
/// leaves the host namespace).
pub fn host_ports_in_use() -> HashSet<(Proto, u16)> {
    let mut out = HashSet::new();
    for (file, proto) in [
        ("tcp", Proto::Tcp),
        ("tcp6", Proto::Tcp),
        ("udp", Proto::Udp),
        ("udp6", Proto::Udp),
    ] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
            continue;
        };
        out.extend(
            parse_proc_net(&text, proto == Proto::Tcp)
                .into_iter()
                .map(|p| (proto, p)),
        );
    }
    out
}

/// Local ports of `/proc/net/{tcp,udp}[6]` lines; for TCP only listeners (state `0A`).
fn parse_proc_net(text: &str, listeners_only: bool) -> Vec<u16> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if listeners_only && state != "0A" {
                return None;
            }
            let port = local.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .filter(|&p| p != 0)
        .collect()
}

/// The host-wide lock held from the check of a lab's host ports until they are published, so
/// two `up`s cannot both find a port free. (`+` is not allowed in lab names.)
pub(crate) fn lock_host_ports() -> crate::controller::Result<kobako_state::LabLock> {
    Ok(kobako_state::LabLock::acquire(
        "+host-ports",
        Duration::from_secs(60),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(ports: &[u16]) -> Vec<Publish> {
        ports
            .iter()
            .map(|&p| Publish {
                host_port: p,
                vm: "web.api".parse().unwrap(),
                port: 80,
                proto: Proto::Tcp,
                target: "10.0.0.2".parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn member_defaults() {
        let none = NetPolicy::default();
        let m = Principal::Member;
        assert_eq!(check_allowed(&publish(&[8080]), m, &none, &[8443]), Ok(()));
        assert_eq!(
            check_allowed(&publish(&[8080, 22]), m, &none, &[8443]),
            Err(PublishDenied::Ssh)
        );
        assert_eq!(
            check_allowed(&publish(&[80]), m, &none, &[8443]),
            Err(PublishDenied::Privileged { port: 80 })
        );
        assert_eq!(
            check_allowed(&publish(&[8443]), m, &none, &[8443]),
            Err(PublishDenied::ServerPort { port: 8443 })
        );
        // Admins publish anything.
        let a = Principal::Admin;
        assert_eq!(
            check_allowed(&publish(&[22, 80, 8443]), a, &none, &[8443]),
            Ok(())
        );
    }

    #[test]
    fn policy_widens_but_never_opens_the_server_port() {
        let p: NetPolicy = serde_json::from_value(serde_json::json!({
            "publish_ports": ["80", "22", "8000-8100"], "uplink_allow": ["10.0.0.0/8"]
        }))
        .unwrap();
        let m = Principal::Member;
        assert_eq!(
            check_allowed(&publish(&[80, 22, 8050]), m, &p, &[443]),
            Ok(())
        );
        assert_eq!(
            check_allowed(&publish(&[8050]), m, &p, &[8050]),
            Err(PublishDenied::ServerPort { port: 8050 })
        );
        assert_eq!(
            check_allowed(&publish(&[81]), m, &p, &[]),
            Err(PublishDenied::Privileged { port: 81 })
        );
        // Round trip.
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["publish_ports"][2], "8000-8100");
        assert_eq!(v["uplink_allow"][0], "10.0.0.0/8");
    }

    #[test]
    fn bad_policies_name_the_fix() {
        let e = "10.1.0.0/8".parse::<AllowNet>().unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/8"), "{e}");
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        let e = "9000-8000".parse::<PortRange>().unwrap_err();
        assert!(e.to_string().contains("8000-9000"), "{e}");
        let r: Result<NetPolicy, _> =
            serde_json::from_value(serde_json::json!({"publish_ports": ["80"], "x": 1}));
        assert!(r.is_err());
    }

    #[test]
    fn proc_net_listeners() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
";
        assert_eq!(parse_proc_net(tcp, true), vec![22]);
        assert_eq!(parse_proc_net(tcp, false), vec![22, 8080]);
        // This process's listener is seen.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(host_ports_in_use().contains(&(Proto::Tcp, port)));
    }
}
