#![warn(missing_docs)]
//! kobako-net: the host side of kobako's lab networks, spoken to the kernel over netlink.
//!
//! One network namespace per lab (`kb-<lab>`) holds everything of that lab: bridges for
//! networks and point-to-point links, taps for the VMs (persistent, so a runtime process can
//! open them by name inside the namespace), veth pairs for test endpoints and uplinks,
//! impairments (netem, or a userspace relay where the kernel lacks netem), nftables NAT for
//! uplinks and published ports, and packet capture to pcapng.
//!
//! Entry point: [`LabNet`]. Lower layers ([`Netns`], [`Rtnl`], [`nft`], [`capture`]) are public
//! for tests and tools. All calls are blocking and short (netlink round trips); call them from
//! `tokio::task::spawn_blocking` in async code. No `ip`, `tc` or `nft` binary is ever run.
//!
//! ```no_run
//! use std::time::Duration;
//! use kobako_net::{
//!     Impairment, IfName, LabName, LabNet, MacAddr, PortSpec, PortVlan, Proto, PublishedPort,
//!     Uplink, VlanId,
//! };
//! use kobako_net::tap::TapFlags;
//!
//! # fn main() -> kobako_net::Result<()> {
//! let lab = LabName::new("shop")?;
//! let net = LabNet::ensure(&lab)?; // namespace kb-shop
//! let lan = IfName::new("lan")?;
//! net.ensure_bridge(&lan, Some(1500), Some("10.10.0.1/24".parse()?), true)?;
//! let tap = IfName::for_key("t", "web.api:eth1");
//! let mut port = PortSpec::tap(tap.clone(), lan.clone());
//! port.vlan = PortVlan::Access(VlanId::new(10)?);
//! net.ensure_port(&port)?;
//! let guest_mac = MacAddr::derived("shop", "web", "api", "eth1"); // for the runtime's NIC
//! let fd = net.open_tap(&tap, TapFlags { vnet_hdr: true })?; // hand to QEMU: -netdev tap,fd=N
//! # let _ = (guest_mac, fd);
//! let imp = Impairment::builder()
//!     .delay(Duration::from_millis(20))
//!     .jitter(Duration::from_millis(5))
//!     .loss(1.0)
//!     .build()?;
//! net.set_impairment(&tap, &imp)?; // live; clear_impairment() to remove
//! let mut up = Uplink::derived(&lab);
//! up.published.push(PublishedPort {
//!     proto: Proto::Tcp,
//!     host_port: 8080,
//!     target: "10.10.0.2".parse().unwrap(),
//!     target_port: 80,
//! });
//! net.set_uplink(Some(&up))?;
//! let cap = net.capture(&tap, std::io::stdout(), Default::default())?; // pcapng
//! # let _ = cap;
//! LabNet::delete(&lab)?; // everything, idempotent
//! # Ok(())
//! # }
//! ```

pub mod backend;
pub mod capture;
pub mod error;
pub mod impair;
pub mod lab;
mod netlink;
pub mod netns;
pub mod nft;
mod relay;
pub mod rtnl;
pub mod sysctl;
pub mod tap;
pub mod types;

pub use backend::{LabNetwork, NetCall, RecordingNetwork};
pub use error::{NetError, Result};
pub use impair::{Impairment, ImpairmentBuilder, Percent, Shaping};
pub use lab::{LabNet, PortKind, PortSpec, Proto, PublishedPort, Uplink, EGRESS_BLOCKED};
pub use netlink::NetlinkError;
pub use netns::Netns;
pub use rtnl::{BridgeOpts, Link, LinkChange, LinkStats, PortVlan, Qdisc, Rtnl};
pub use sysctl::{HostSysctl, HostSysctls};
pub use types::{IfName, Ipv4Cidr, LabName, MacAddr, MacParseError, VlanId};
