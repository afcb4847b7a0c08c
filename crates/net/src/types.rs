//! Validated value types: interface names, lab names, VLAN ids, MAC addresses, IPv4 prefixes.
//! Constructing one of these is the validation; everything downstream can trust it.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{NetError, Result};

/// A Linux interface name: 1..=15 bytes (IFNAMSIZ - 1), no `/`, `:`, whitespace or NUL,
/// not `.` or `..` (see `dev_valid_name()` in net/core/dev.c).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(pub(crate) String);

impl IfName {
    /// Maximum length in bytes.
    pub const MAX_LEN: usize = 15;

    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<IfName> {
        let name = name.into();
        let bad = |reason| NetError::InvalidIfName {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(bad("longer than 15 bytes (the kernel's IFNAMSIZ limit)"));
        }
        if name == "." || name == ".." {
            return Err(bad("reserved name"));
        }
        if name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(bad("contains '/', ':', NUL or whitespace"));
        }
        Ok(IfName(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A stable name for something whose natural name may be too long (e.g. the tap of
    /// `web.api:eth1`): `key` itself if it is a valid name, otherwise up to 6 bytes of
    /// `prefix` + 8 hex digits of SHA-256(`key`).
    pub fn for_key(prefix: &str, key: &str) -> IfName {
        if let Ok(n) = IfName::new(key) {
            return n;
        }
        let d = Sha256::digest(key.as_bytes());
        let p: String = prefix
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(6)
            .collect();
        IfName(format!(
            "{p}{:02x}{:02x}{:02x}{:02x}",
            d[0], d[1], d[2], d[3]
        ))
    }

    /// The name NUL-padded to IFNAMSIZ (16 bytes), as nf_tables compares it.
    pub(crate) fn padded(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..self.0.len()].copy_from_slice(self.0.as_bytes());
        b
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IfName {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self> {
        IfName::new(s)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A lab name: 1..=48 bytes of `[A-Za-z0-9_.-]`, not starting with `-` or `.`.
/// It names the namespace `kb-<lab>` and the nft table `kobako-<lab>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabName(String);

impl LabName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<LabName> {
        let name = name.into();
        let bad = |reason| NetError::InvalidLabName {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > 48 {
            return Err(bad("longer than 48 bytes"));
        }
        if name.starts_with('-') || name.starts_with('.') {
            return Err(bad("starts with '-' or '.'"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
        }
        Ok(LabName(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lab's network namespace name (`kb-<lab>`, under /run/netns like `ip netns`).
    pub fn netns_name(&self) -> String {
        format!("kb-{}", self.0)
    }

    /// The nftables table owned by this lab, in the host and in the lab namespace.
    pub fn nft_table(&self) -> String {
        format!("kobako-{}", self.0)
    }

    /// Short stable hash of the name, used to derive host-side interface names that must be
    /// unique on the host and fit in 15 bytes.
    pub fn short_hash(&self) -> String {
        let d = Sha256::digest(self.0.as_bytes());
        format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
    }

    /// The host-side interface of this lab's uplink veth: `kbu<8 hex>` (11 bytes).
    pub fn uplink_host_ifname(&self) -> IfName {
        IfName(format!("kbu{}", self.short_hash()))
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for LabName {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self> {
        LabName::new(s)
    }
}

/// An 802.1Q VLAN id in 1..=4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

impl VlanId {
    /// Validates `id`.
    pub fn new(id: u32) -> Result<VlanId> {
        if (1..=4094).contains(&id) {
            Ok(VlanId(id as u16))
        } else {
            Err(NetError::InvalidVlan(id))
        }
    }

    /// The numeric id.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An Ethernet MAC address. Written as six hex pairs separated by `:` (or `-` when parsed);
/// with the `serde` feature it is (de)serialized as that string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The MAC of interface `iface` of VM `vm` on node `node` in `lab` when the lab file gives
    /// none: the first 6 bytes of SHA-256("kobako-mac\0lab\0node\0vm\0iface\0") with bit 1 of
    /// the first octet set (locally administered) and bit 0 cleared (unicast). The same names
    /// always yield the same MAC, across restarts and hosts, so guests keep their DHCP leases
    /// and ARP caches stay valid. This is the one derivation kobako uses; changing it would
    /// change every existing lab's guest MACs.
    pub fn derived(lab: &str, node: &str, vm: &str, iface: &str) -> MacAddr {
        let mut h = Sha256::new();
        for part in ["kobako-mac", lab, node, vm, iface] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let d = h.finalize();
        let mut m = [d[0], d[1], d[2], d[3], d[4], d[5]];
        m[0] = (m[0] | 0x02) & !0x01;
        MacAddr(m)
    }

    /// Whether the locally-administered bit is set.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Whether this is a unicast address.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a MAC address (the text given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address: write six hex pairs like 02:00:00:00:00:01")]
pub struct MacParseError(pub String);

impl From<MacParseError> for NetError {
    fn from(e: MacParseError) -> NetError {
        NetError::InvalidArgument(e.to_string())
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;
    /// Six hex pairs separated by `:` or `-`.
    fn from_str(s: &str) -> std::result::Result<Self, MacParseError> {
        let bad = || MacParseError(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (b, p) in m.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(m))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An IPv4 address with a prefix length, e.g. `10.0.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// Validates the prefix length (0..=32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr> {
        if prefix > 32 {
            return Err(NetError::InvalidArgument(format!(
                "prefix length {prefix} > 32"
            )));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }

    /// For prefixes known to be valid (≤ 32) at the call site.
    pub(crate) fn from_parts(addr: Ipv4Addr, prefix: u8) -> Ipv4Cidr {
        Ipv4Cidr {
            addr,
            prefix: prefix.min(32),
        }
    }

    /// The address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || NetError::InvalidArgument(format!("invalid IPv4 prefix {s:?}"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        Ipv4Cidr::new(addr, prefix)
    }
}

/// Validates an MTU for Ethernet-like devices (68..=65535; 68 is IPv4's minimum).
pub(crate) fn check_mtu(mtu: u32) -> Result<u32> {
    if (68..=65535).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(NetError::InvalidArgument(format!(
            "MTU {mtu} outside 68..=65535"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_rules() {
        assert!(IfName::new("eth0").is_ok());
        assert!(IfName::new("a23456789012345").is_ok());
        let e = IfName::new("a234567890123456").unwrap_err();
        assert!(e.to_string().contains("15 bytes"), "{e}");
        assert!(IfName::new("").is_err());
        assert!(IfName::new("a/b").is_err());
        assert!(IfName::new("a b").is_err());
        assert!(IfName::new("..").is_err());
    }

    #[test]
    fn derived_ifnames() {
        assert_eq!(IfName::for_key("t", "eth0").as_str(), "eth0");
        let n = IfName::for_key("tap-web", "web.api:eth1");
        assert!(
            n.as_str().starts_with("tap-we") && n.as_str().len() == 14,
            "{n}"
        );
        assert_eq!(n, IfName::for_key("tap-web", "web.api:eth1"));
        assert_ne!(n, IfName::for_key("tap-web", "web.api:eth2"));
        assert!(IfName::new(n.as_str()).is_ok());
    }

    #[test]
    fn vlan_range() {
        assert!(VlanId::new(0).is_err());
        assert!(VlanId::new(4095).is_err());
        assert_eq!(VlanId::new(1).unwrap().get(), 1);
        assert_eq!(VlanId::new(4094).unwrap().get(), 4094);
        assert_eq!(
            VlanId::new(5000).unwrap_err().to_string(),
            "VLAN id 5000 is outside 1..=4094"
        );
    }

    #[test]
    fn lab_names() {
        let l = LabName::new("shop-1").unwrap();
        assert_eq!(l.netns_name(), "kb-shop-1");
        assert_eq!(l.nft_table(), "kobako-shop-1");
        assert!(l.uplink_host_ifname().as_str().len() <= 15);
        assert!(LabName::new("a b").is_err());
        assert!(LabName::new("-x").is_err());
        assert!(LabName::new("x".repeat(49)).is_err());
    }

    #[test]
    fn mac_is_stable_local_unicast() {
        let a = MacAddr::derived("shop", "web", "api", "eth1");
        let b = MacAddr::derived("shop", "web", "api", "eth1");
        let c = MacAddr::derived("shop", "web", "api", "eth2");
        assert_eq!(a, b);
        assert_ne!(a, c);
        for m in [a, c] {
            assert!(m.is_local() && m.is_unicast(), "{m}");
        }
        // Field separation: ("ab","c") and ("a","bc") differ.
        assert_ne!(
            MacAddr::derived("l", "ab", "c", "x"),
            MacAddr::derived("l", "a", "bc", "x")
        );
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
    }

    #[test]
    fn derived_macs_are_pinned() {
        // The MACs existing labs' guests have: changing the derivation would change them.
        for (names, mac) in [
            (["lab", "web", "api", "eth1"], "8e:3d:5e:6a:c9:e4"),
            (["shop", "web", "api", "eth1"], "42:a6:c3:b8:74:50"),
            (["shop", "db", "db", "eth0"], "92:1a:9c:0e:09:bb"),
            (["kbdemo", "n1", "vm", "eth0"], "3a:48:08:9a:14:24"),
        ] {
            let [lab, node, vm, iface] = names;
            assert_eq!(MacAddr::derived(lab, node, vm, iface).to_string(), mac);
        }
    }

    #[test]
    fn mac_parse() {
        let m: MacAddr = "02-00-00-00-00-0A".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:00:00:00:0a");
        for bad in [
            "",
            "zz",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:000",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("'{bad}' is not a MAC address: write six hex pairs like 02:00:00:00:00:01")
            );
        }
    }

    #[test]
    fn cidr_parse() {
        let c: Ipv4Cidr = "10.0.0.1/24".parse().unwrap();
        assert_eq!(c.prefix(), 24);
        assert!("10.0.0.1/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.1".parse::<Ipv4Cidr>().is_err());
    }
}
