//! The lab while it is being resolved: what later steps (links, addresses, routes, publish)
//! still change, with where each part was written.

use super::Origin;
use crate::spec::model::*;
use std::collections::{HashMap, HashSet};

/// A lab being resolved: networks, nodes and links so far. Links, addresses, gateways and
/// publish complete it in turn; [`Resolver::lab`](super::Resolver) then turns it into a `Lab`.
/// A link endpoint: (node index, VM index, interface name) in a [`LabDraft`].
pub(super) type EndpointKey = (usize, usize, String);

#[derive(Default)]
pub(super) struct LabDraft {
    pub(super) lab: LabName,
    pub(super) networks: Vec<(Network, Origin)>,
    pub(super) uplinked: HashSet<String>,
    pub(super) nodes: Vec<NodeDraft>,
    pub(super) links: Vec<(Link, Origin)>,
    /// Every link endpoint → where that link is.
    pub(super) used_endpoints: HashMap<EndpointKey, Origin>,
    /// Nodes whose template failed: references to their VMs are not reported again.
    pub(super) broken: HashSet<String>,
}

/// A node being resolved.
pub(super) struct NodeDraft {
    pub(super) name: NodeName,
    pub(super) description: Option<String>,
    pub(super) template: Option<String>,
    pub(super) network: Option<NodeNetwork>,
    pub(super) vms: Vec<VmDraft>,
    #[allow(dead_code)]
    pub(super) at: Origin,
}

/// A VM being resolved: the VM so far, plus what later steps check against the file.
pub(super) struct VmDraft {
    pub(super) vm: Vm,
    #[allow(dead_code)]
    pub(super) at: Origin,
    /// One per `vm.interfaces`, same order.
    pub(super) ifaces: Vec<InterfaceDecl>,
    /// The explicit `routes:`; their next hops are checked once addresses are known.
    pub(super) routes: Vec<(Route, Origin)>,
}

/// What the file said about one interface of a [`VmDraft`], for the address step.
pub(super) struct InterfaceDecl {
    /// Where the interface was declared (or the link or node that made it).
    pub(super) at: Origin,
    /// No automatic address: the file gave `addresses:`, or a node network or link made it.
    pub(super) explicit_addresses: bool,
    /// `addresses:` as written.
    pub(super) raw_addresses: Option<Vec<String>>,
}
