//! The lab file model: parse, validate, resolve. No process or network side effects.
//!
//! ```text
//! text ──yaml──> MNode tree (positions, paths) ──serde──> RawLab ──resolve──> Vec<Lab>
//!                     └──────── every error located: file:line:col, path, fix ────────┘
//! ```
//!
//! - [`yaml`]: the document as a tree that keeps line/column and path of every value
//!   (`yaml-rust2` marked events; serde alone loses positions).
//! - [`raw`]: the file as written (serde, `deny_unknown_fields`); the JSON Schema comes from
//!   these types ([`json_schema`]).
//! - [`parse`]: deserialization that collects every structural error (unknown keys with
//!   did-you-mean, bad sizes/durations/percentages, wrong types), not just the first.
//! - [`mod@resolve`]: defaults → template → node → VM, every name and address checked, derived
//!   values computed (MACs, addresses, lab id); [`model`] is the result.
//! - [`templates`]: node templates shipped with kobako.
//! - [`trust`]: what in a lab names a host file (only admins may).
//! - [`export`]: Mermaid/DOT graphs and the lab as a lab file again (`kobako save`).

//! # The lab file
//!
//! ```yaml
//! name: shop                       # [a-z0-9][a-z0-9-]*, ≤ 40 bytes
//! defaults: { image: tiny, vcpus: 1, memory: 128M, kernel: default }
//! templates:                       # node templates; shadow the shipped ones (web-stack, router-vpn-ids)
//!   pair: { vms: { a: {}, b: {} } }
//! nodes:
//!   web:
//!     template: web-stack          # optional; `vms` below override the template's VMs field by field
//!     node_network: { subnet: 172.31.0.0/24, interface: eth0, mtu: 1500, addresses: { api: 172.31.0.5 } }
//!     vms:
//!       api:
//!         image: debian-web        # store name, or a path with '/'
//!         vcpus: 2                 # 1 ..= host CPUs
//!         memory: 256M             # 64M ..= host memory (K/M/G/T, MiB-exact)
//!         interfaces:
//!           eth1: { network: lan, addresses: [10.10.0.5/24, "fd00::5/64"], mac: 02:..., mtu: 1500, gateway: 10.10.0.1 }
//!           eth2: {}               # declared; connected by a link below
//!         routes: [{ to: 10.20.0.0/24, via: 10.10.0.1 }]
//!         run: ["redis-server", { name: api, command: "python3 app.py", restart: on-failure }]
//!         files: { /etc/app.conf: ./app.conf, /opt/x.sh: { content: "#!/bin/sh\n", mode: "0755" } }
//!         env: { PORT: 8080 }
//!     links: [{ endpoints: ["api:eth3", "cache:eth3"] }]   # inside a node: VM:IFACE
//! networks:
//!   lan: { subnet: 10.10.0.0/24, subnet6: "fd00::/64", vlan: 10, mtu: 1500, gateway: 10.10.0.1 }
//! links:
//!   - name: wan                    # default NODE.VM-NODE.VM
//!     endpoints: ["web.api:eth2", "edge.router:eth1"]
//!     impair: { delay: 20ms, jitter: 5ms, loss: { percent: 1%, correlation: 25% }, rate: 10mbit,
//!               corrupt: 0.1%, duplicate: 1%, reorder: 5% }
//!     state: up                    # or down
//! uplink: true                     # or { networks: [lan] }: NAT through the host
//! publish: ["8080:web.api:80/tcp"] # host port → VM port (the VM's first IPv4 on a lab network)
//! copies: { names: [alice, bob], port_stride: 1 }   # or { count: 3 }: one isolated lab per copy
//! ```
//!
//! Resolution rules worth knowing:
//! - VM values: VM → node's override → template (recursively) → `defaults` → built-in defaults
//!   (`tiny`, 1 vCPU, 128M, kernel `default`). `run` replaces a template's list; `interfaces`,
//!   `files` and `env` merge by key (interfaces field by field).
//! - A node with 2+ VMs gets a node network (`eth0`, default `172.31.0.0/24`, VMs from `.10` in
//!   node order); node networks are isolated from each other and may reuse the same subnet, but
//!   must not overlap a lab network. Every VM's `hosts` names its node peers (`api`, `api.web`).
//! - On a network with a subnet, an interface without `addresses:` gets the next free address
//!   from `.2` (`.1` is kept for a gateway). An address without a prefix takes the network's.
//! - A network in `uplink` (or whose VM is published) gets the host as gateway (`.1` unless
//!   `gateway:` says otherwise); VMs on a network with a gateway they do not own get a default
//!   route through it (first such interface wins; `no_gateway: true` opts out).
//! - MACs: locally administered unicast, sha256 of lab/node/vm/interface names. Lab id:
//!   `k` + 6 hex digits of sha256(name); [`Lab::host_ifname`] gives ≤ 15-byte host names.
//! - `copies:` makes one [`Lab`] per copy, named `LAB-COPY`, fully isolated (own namespace);
//!   published host ports shift by `index * port_stride`.

pub mod clab;
pub mod de;
pub mod error;
pub mod export;
pub mod hostdir;
pub mod model;
pub mod parse;
pub mod raw;
pub mod resolve;
pub mod templates;
pub mod trust;
pub mod units;
mod warnings;
pub mod yaml;

pub use error::{Limit, Path, Pos, SpecError, SpecErrors};
pub use model::*;
pub use raw::{LinkState, RawLab, Restart};
pub use resolve::{load_file, load_file_noted, load_one, load_str, parse_lab, resolve, LabFile};
pub use trust::{HostPathUse, ImageSource, KernelSource};
pub use units::{BitRate, MemMib, Micros, Percent};

/// The JSON Schema of lab files, pretty-printed (what `schema/lab.schema.json` holds).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawLab);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}

/// The JSON Schema of node template files (`templates/*.yaml`; `schema/template.schema.json`).
pub fn template_json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawNode);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}
