//! The lab while it is being resolved: what later steps (links, addresses, routes, publish)
//! still change, with where each part was written.

use super::Origin;
use crate::spec::model::*;
use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub(super) struct Build {
    pub(super) lab: LabName,
    pub(super) networks: Vec<(Network, Origin)>,
    pub(super) uplinked: HashSet<String>,
    pub(super) nodes: Vec<BNode>,
    pub(super) links: Vec<(Link, Origin)>,
    pub(super) used_endpoints: HashMap<(usize, usize, String), Origin>,
    /// Nodes whose template failed: references to their VMs are not reported again.
    pub(super) broken: HashSet<String>,
}

pub(super) struct BNode {
    pub(super) name: NodeName,
    pub(super) description: Option<String>,
    pub(super) template: Option<String>,
    pub(super) network: Option<NodeNetwork>,
    pub(super) vms: Vec<BVm>,
    #[allow(dead_code)]
    pub(super) at: Origin,
}

pub(super) struct BVm {
    pub(super) vm: Vm,
    #[allow(dead_code)]
    pub(super) at: Origin,
    pub(super) ifaces: Vec<IfaceInfo>,
    pub(super) routes: Vec<(Route, Origin)>,
}

pub(super) struct IfaceInfo {
    pub(super) at: Origin,
    pub(super) explicit_addresses: bool,
    pub(super) raw_addresses: Option<Vec<String>>,
}
