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
pub mod tap;
pub mod types;

pub use backend::{LabNetwork, NetCall, RecordingNetwork};
pub use error::{NetError, Result};
pub use impair::{Impairment, ImpairmentBuilder, Percent, Shaping};
pub use lab::{LabNet, PortKind, PortSpec, Proto, PublishedPort, Uplink};
pub use netlink::NetlinkError;
pub use netns::Netns;
pub use rtnl::{BridgeOpts, Link, LinkChange, PortVlan, Qdisc, Rtnl};
pub use types::{IfName, Ipv4Cidr, LabName, MacAddr, VlanId};
