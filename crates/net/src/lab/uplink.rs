//! The uplink of a lab: the veth to the host, outbound NAT and published ports, and the nft
//! rules on both sides that keep the lab from the host, from other labs and (unless allowed)
//! from private ranges.

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use super::{LabNet, UPLINK_IFNAME};
use crate::error::{NetError, Result};
use crate::netns::Netns;
use crate::nft::{Chain, Expr, Hook, Nft, L4};
use crate::rtnl::{LinkChange, Rtnl};
use crate::types::{IfName, Ipv4Cidr, LabName};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP
    Tcp,
    /// UDP
    Udp,
}

/// A host port forwarded to `target:target_port` inside the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    /// Protocol.
    pub proto: Proto,
    /// Port on the host's addresses.
    pub host_port: u16,
    /// VM address inside the lab.
    pub target: Ipv4Addr,
    /// VM port.
    pub target_port: u16,
}

/// Outbound NAT through the host and published ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Host end of the uplink veth, with its prefix (the transfer network).
    pub host_addr: Ipv4Cidr,
    /// Lab end of the uplink veth (in the same prefix).
    pub lab_addr: Ipv4Addr,
    /// Host ports forwarded into the lab.
    pub published: Vec<PublishedPort>,
    /// Whether lab traffic may leave through the host (NAT to the outside). Without it the
    /// uplink only carries published ports: the host forwards nothing the lab starts.
    /// Either way the lab can never open a connection to the host itself. Traffic leaving
    /// the host also needs the host's `net.ipv4.ip_forward` (see [`crate::sysctl`]).
    pub outbound: bool,
    /// Ranges of [`EGRESS_BLOCKED`] this lab may reach anyway (an admin's decision, e.g. a
    /// lab that must talk to a LAN). The host's own addresses and other labs stay closed.
    pub allow: Vec<Ipv4Cidr>,
}

/// Destinations outbound lab traffic never reaches unless [`Uplink::allow`] opens them:
/// "this network", private (RFC 1918), shared address space (RFC 6598: other labs' uplinks),
/// loopback, link-local (cloud metadata at 169.254.169.254), multicast and reserved/broadcast.
/// The host's own addresses are closed separately and always (the input hook).
pub const EGRESS_BLOCKED: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

impl Uplink {
    /// A transfer /30 in 100.64.0.0/10 (shared address space, RFC 6598) derived from the lab
    /// name, so each lab gets a stable, distinct pair of addresses.
    pub fn derived(lab: &LabName) -> Uplink {
        let d = Sha256::digest(lab.as_str().as_bytes());
        // 2^20 /30 blocks in 100.64.0.0/10.
        let block = ((d[0] as u32) << 12 | (d[1] as u32) << 4 | (d[2] as u32 >> 4)) & 0xf_ffff;
        let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + block * 4;
        Uplink {
            host_addr: Ipv4Cidr::from_parts(Ipv4Addr::from(base + 1), 30),
            lab_addr: Ipv4Addr::from(base + 2),
            published: Vec::new(),
            outbound: true,
            allow: Vec::new(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NetError::InvalidArgument(m));
        let p = self.host_addr.prefix();
        if p == 0 || p > 30 {
            return bad(format!("uplink prefix /{p} must be 1..=30"));
        }
        let mask = u32::MAX << (32 - p);
        let h = u32::from(self.host_addr.addr());
        let l = u32::from(self.lab_addr);
        if h & mask != l & mask || h == l {
            return bad(format!(
                "uplink lab address {} must be a different address in {}",
                self.lab_addr, self.host_addr
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for pp in &self.published {
            if pp.host_port == 0 || pp.target_port == 0 {
                return bad("published port 0".into());
            }
            if !seen.insert((pp.proto, pp.host_port)) {
                return bad(format!("host port {} published twice", pp.host_port));
            }
        }
        Ok(())
    }
}

/// The forward rules of an outbound uplink (`kbu` = the lab's host end), in order:
/// 1. `iifname kbu oifname "kbu*" drop` — never into another lab (its uplink or published ports);
/// 2. `iifname kbu ct state established,related accept` — answers (published ports to LAN
///    clients included);
/// 3. `iifname kbu ip daddr ALLOWED accept` for each range the lab's policy opens;
/// 4. `iifname kbu ip daddr BLOCKED drop` for each of [`EGRESS_BLOCKED`].
///
/// The host's own addresses never reach this chain (they are delivered locally: the input
/// chain drops what the lab starts), so `allow` cannot open them.
pub(crate) fn egress_rules(host_if: &IfName, allow: &[Ipv4Cidr]) -> Vec<Vec<Expr>> {
    let from = || -> Vec<Expr> { Expr::iifname_eq(host_if).into() };
    let mut rules = Vec::new();
    let mut r = from();
    r.push(Expr::Meta(7));
    r.push(Expr::Cmp(true, b"kbu".to_vec()));
    r.push(Expr::Verdict(false));
    rules.push(r);
    let mut r = from();
    r.extend(Expr::ct_established_or_related());
    r.push(Expr::Verdict(true));
    rules.push(r);
    for a in allow {
        let mut r = from();
        r.extend(Expr::daddr_in(*a));
        r.push(Expr::Verdict(true));
        rules.push(r);
    }
    for &(a, p) in EGRESS_BLOCKED {
        let mut r = from();
        r.extend(Expr::daddr_in(Ipv4Cidr::from_parts(a, p)));
        r.push(Expr::Verdict(false));
        rules.push(r);
    }
    rules
}
impl LabNet {
    /// Configures (or with `None` removes) the uplink: a veth `uplink` ↔ `kbu<hash>` to the
    /// host, a default route in the lab, masquerading on both sides and DNAT for published
    /// ports. Re-applying replaces the rules atomically.
    pub fn set_uplink(&self, uplink: Option<&Uplink>) -> Result<()> {
        tracing::debug!(lab = %self.name, ?uplink, "set uplink");
        let host = Netns::host()?;
        let host_if = self.name.uplink_host_ifname();
        let table = self.name.nft_table();
        let Some(u) = uplink else {
            Nft::open(&host)?.delete_table(&table)?;
            Nft::open(&self.ns)?.delete_table(&table)?;
            self.rt.delete_link(UPLINK_IFNAME)?;
            return Ok(());
        };
        u.validate()?;
        let hrt = Rtnl::open(&host)?;
        // The transfer network must not already be in use on the host by anything else
        // (e.g. another lab whose derived /30 collides): that would break both.
        let own = hrt.link(host_if.as_str())?.map(|l| l.index);
        let (mask, net) = {
            let m = u32::MAX << (32 - u32::from(u.host_addr.prefix()));
            (m, u32::from(u.host_addr.addr()) & m)
        };
        for (idx, c) in hrt.all_addrs()? {
            if Some(idx) != own && u32::from(c.addr()) & mask == net {
                return Err(NetError::InvalidArgument(format!(
                    "uplink network {} overlaps host address {c} (interface #{idx}); \
                     choose another transfer network",
                    u.host_addr
                )));
            }
        }
        let up_if = IfName(UPLINK_IFNAME.into());
        let lab_l = self
            .rt
            .ensure_veth(&up_if, None, &host_if, Some(&host), None, None)?;
        let host_l = hrt.require(host_if.as_str())?;
        // IPv4 only: without IPv6 on either end (the lab end inherits the lab namespace's
        // `disable_ipv6`), no IPv6 packet from the lab reaches the host or beyond it — no
        // link-local (fe80::/10), no metadata (fd00:ec2::254), no host addresses. Absent on
        // kernels without IPv6: ignored.
        let _ = host.set_sysctl(&format!("ipv6/conf/{host_if}/disable_ipv6"), "1");
        hrt.add_addr(&host_l, u.host_addr)?;
        hrt.set_link(
            &host_l,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )?;
        self.rt
            .add_addr(&lab_l, Ipv4Cidr::new(u.lab_addr, u.host_addr.prefix())?)?;
        self.rt.set_link(
            &lab_l,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )?;
        self.rt
            .add_route(None, Some(u.host_addr.addr()), Some(&lab_l))?;
        self.ns.set_sysctl("ipv4/ip_forward", "1")?;

        let l4 = |p: Proto| if p == Proto::Tcp { L4::Tcp } else { L4::Udp };
        // Lab side: VMs leave as the lab's uplink address; published ports go to their VM.
        let mut lab_pre = Vec::new();
        for p in &u.published {
            let mut r: Vec<Expr> = Expr::iifname_eq(&up_if).into();
            r.extend(Expr::dport_eq(l4(p.proto), p.host_port));
            r.extend(Expr::dnat(p.target, p.target_port));
            lab_pre.push(r);
        }
        let mut lab_post: Vec<Expr> = Expr::oifname(&up_if, true).into();
        lab_post.push(Expr::Masq);
        Nft::open(&self.ns)?.replace_table(
            &table,
            &[
                Chain {
                    name: "prerouting",
                    kind: "nat",
                    hook: Hook::Prerouting,
                    priority: -100,
                    rules: lab_pre,
                },
                Chain {
                    name: "postrouting",
                    kind: "nat",
                    hook: Hook::Postrouting,
                    priority: 100,
                    rules: vec![lab_post],
                },
            ],
        )?;
        // Host side: the lab's traffic leaving through other interfaces is masqueraded;
        // published host ports (to any local address) go to the lab's uplink address.
        let mut host_dnat = Vec::new();
        for p in &u.published {
            let mut r: Vec<Expr> = Expr::daddr_local().into();
            r.extend(Expr::dport_eq(l4(p.proto), p.host_port));
            r.extend(Expr::dnat(u.lab_addr, p.host_port));
            host_dnat.push(r);
        }
        // The lab never opens connections to the host itself (its API, sshd, ...): only
        // answers to connections the host made (published ports) come in. Without
        // `outbound`, the host forwards nothing the lab starts either.
        let guard = || {
            let mut established: Vec<Expr> = Expr::iifname_eq(&host_if).into();
            established.extend(Expr::ct_established_or_related());
            established.push(Expr::Verdict(true));
            let mut drop: Vec<Expr> = Expr::iifname_eq(&host_if).into();
            drop.push(Expr::Verdict(false));
            vec![established, drop]
        };
        let mut host_post: Vec<Expr> = Expr::saddr_eq(u.lab_addr).into();
        host_post.extend(Expr::oifname(&host_if, false));
        host_post.push(Expr::Masq);
        Nft::open(&host)?.replace_table(
            &table,
            &[
                Chain {
                    name: "prerouting",
                    kind: "nat",
                    hook: Hook::Prerouting,
                    priority: -100,
                    rules: host_dnat.clone(),
                },
                Chain {
                    name: "output",
                    kind: "nat",
                    hook: Hook::Output,
                    priority: -100,
                    rules: host_dnat,
                },
                Chain {
                    name: "postrouting",
                    kind: "nat",
                    hook: Hook::Postrouting,
                    priority: 100,
                    rules: vec![host_post],
                },
                Chain {
                    name: "input",
                    kind: "filter",
                    hook: Hook::Input,
                    priority: 0,
                    rules: guard(),
                },
                Chain {
                    name: "forward",
                    kind: "filter",
                    hook: Hook::Forward,
                    priority: 0,
                    rules: if u.outbound {
                        egress_rules(&host_if, &u.allow)
                    } else {
                        guard()
                    },
                },
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules_order() {
        let kbu = IfName::new("kbu12345678").unwrap();
        let allow = ["10.0.0.0/8".parse().unwrap()];
        let r = egress_rules(&kbu, &allow);
        // other labs, answers, one allowed range, then every blocked range
        assert_eq!(r.len(), 3 + EGRESS_BLOCKED.len());
        assert_eq!(r[0].last(), Some(&Expr::Verdict(false)));
        assert!(r[1].contains(&Expr::CtState));
        assert_eq!(r[2].last(), Some(&Expr::Verdict(true)));
        assert!(r[2].contains(&Expr::Cmp(true, vec![10, 0, 0, 0])));
        assert!(r[3..]
            .iter()
            .all(|x| x.last() == Some(&Expr::Verdict(false))));
        // Every rule is about this lab's traffic only.
        assert!(r.iter().all(|x| x[..2] == Expr::iifname_eq(&kbu)));
    }

    #[test]
    fn derived_uplink_is_valid() {
        let u = Uplink::derived(&LabName::new("shop").unwrap());
        u.validate().unwrap();
        assert_eq!(u.host_addr.prefix(), 30);
        let o = u32::from(u.lab_addr);
        assert!(Ipv4Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 10).is_ok());
        assert_eq!(o >> 22, u32::from(Ipv4Addr::new(100, 64, 0, 0)) >> 22);
    }
}
