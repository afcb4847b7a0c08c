//! containerlab topologies (`*.clab.yml`) as kobako labs: `kobako up topo.clab.yml` runs one
//! as it is, `kobako import clab FILE -o lab.yaml` writes the kobako lab file once.
//!
//! ```text
//! text ──yaml──> MNode ──unsupported::take──> ──serde──> ClabFile ──convert──> RawLab ──> lab file text
//!                  └── every error located in the containerlab file (line, column, fix) ──┘
//! ```
//!
//! How a topology maps (README "containerlab topologies" has the user's version):
//! - `kind: linux` node → a kobako node with one VM of the same name; its `image:` picks a
//!   kobako image by [`images::TABLE`] (overrides: label `kobako.image`, `--image`).
//!   `kind: bridge`/`ovs-bridge` → a lab network (L2, no subnet); other kinds are errors.
//! - `topology.defaults` → `kinds.KIND` → node: the node's value wins; `env`, `labels` and
//!   `sysctls` merge by key.
//! - `mgmt` → network `mgmt` (default 172.20.20.0/24) on every VM's eth0, `mgmt-ipv4/6` its
//!   addresses, uplink (NAT) unless `external-access: false`.
//! - `exec:` (after `sysctls`, and after FRR is (re)started with its configuration) → one
//!   script run once in order; the VM is ready when every command succeeded.
//! - `binds:` → `files:` copied in at `up` (a directory: its regular files); `startup-config`
//!   of an FRR node → /etc/frr/frr.conf; `ports:` → `publish:`; `cmd:` → a supervised
//!   service; `labels` → `CLAB_LABEL_*` environment variables; `cpu`/`memory` → vCPUs/memory.
//! - links: `endpoints: ["a:eth1", "b:eth1"]` (or the extended `type: veth` form with
//!   `mac`) → a kobako link; an endpoint on a bridge node → the VM's interface on that
//!   network; `mtu` kept; `vars` and `labels` warned about (no effect).
//! - Fields containerlab has and kobako cannot honour are errors saying what to do
//!   ([`unsupported`]); a few that change nothing in a VM are warnings.

pub mod convert;
pub mod images;
pub mod raw;
pub mod unsupported;

#[cfg(test)]
mod tests;

use super::error::{SpecError, SpecErrors};
use super::parse::{self, Source};
use super::raw::RawLab;
use super::yaml;
pub use convert::ImageChoice;
use std::path::Path;

/// Whether `path` names a containerlab topology (`*.clab.yml`, `*.clab.yaml`).
pub fn is_clab_path(path: &Path) -> bool {
    let n = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    n.is_some_and(|n| n.ends_with(".clab.yml") || n.ends_with(".clab.yaml"))
}

/// A topology converted.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The kobako lab file.
    pub lab: RawLab,
    /// What was dropped or renamed (the topology is still run).
    pub warnings: Vec<SpecError>,
    /// The kobako image of every `linux` node, and why.
    pub images: Vec<ImageChoice>,
}

/// Converts containerlab topology `text` (named `file` in errors). Host files named in it
/// (`binds`, `startup-config`) are taken relative to `base_dir` and checked there when it is
/// given. `image_overrides` maps container image references or repositories to kobako images.
pub fn convert(
    file: &str,
    text: &str,
    base_dir: Option<&Path>,
    image_overrides: &[(String, String)],
) -> Result<Converted, SpecErrors> {
    let (mut root, mut errors) = yaml::parse(file, text).map_err(SpecErrors::sorted)?;
    let (refused, warnings) = unsupported::take(file, &mut root);
    errors.extend(refused);
    let src = Source {
        file: file.to_string(),
        root,
    };
    let (v, errs) = parse::deserialize::<raw::ClabFile>(&src);
    errors.extend(errs);
    let Some(cf) = v else {
        return Err(SpecErrors::sorted(errors));
    };
    let mut c = convert::Conv {
        src: &src,
        base_dir,
        overrides: image_overrides,
        errors,
        warnings,
        images: Vec::new(),
    };
    let lab = c.lab(&cf);
    if !c.errors.is_empty() {
        return Err(SpecErrors::sorted(c.errors));
    }
    Ok(Converted {
        lab,
        warnings: c.warnings,
        images: c.images,
    })
}

impl Converted {
    /// The kobako lab file, with a header saying where it came from and which image runs
    /// each node.
    pub fn to_yaml(&self, file: &str) -> String {
        let mut h =
            format!("# Converted by kobako from the containerlab topology {file}.\n# Images:");
        for c in &self.images {
            h.push_str(&format!(
                "\n#   {}: {} -> {} ({})",
                c.node, c.container, c.kobako, c.why
            ));
        }
        for w in &self.warnings {
            h.push_str(&format!(
                "\n# warning: line {}: {}",
                w.pos.line,
                w.message.replace('\n', " ")
            ));
        }
        self.lab.to_yaml(&h)
    }

    /// One line per image choice and warning, for the command line.
    pub fn notes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .images
            .iter()
            .map(|c| {
                format!(
                    "node {}: container image {} runs as kobako image {} ({})",
                    c.node, c.container, c.kobako, c.why
                )
            })
            .collect();
        v.extend(self.warnings.iter().map(|w| format!("warning: {w}")));
        v
    }
}
