//! Resolution: raw lab file → validated [`Lab`]s, once, in this order: defaults → template
//! (recursively) → node → VM. Every mistake is collected with its position and fix; nothing
//! stops at the first one.

use super::error::{Path, SpecError, SpecErrors};
use super::model::*;
use super::parse::{self, Source};
use super::raw::*;
use super::units::MemMib;
use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};

/// Default image of a VM when nothing says otherwise.
pub const DEFAULT_IMAGE: &str = "tiny";
/// Default vCPUs.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory.
pub const DEFAULT_MEMORY: MemMib = MemMib(128);
/// Default node-network subnet.
pub const DEFAULT_NODE_SUBNET: &str = "172.31.0.0/24";
/// Default MTU.
pub const DEFAULT_MTU: u32 = 1500;
/// First host number given to VMs on a node network.
const NODE_NET_FIRST: u128 = 10;

/// Where a value was written: source index and path.
#[derive(Debug, Clone)]
struct Origin {
    src: usize,
    path: Path,
}

/// A value of the lab file with where it was written (the merged node and VM keep one per
/// field, so an error points at the file and line that set it: lab file or template).
#[derive(Debug, Clone)]
struct Located<T> {
    value: T,
    at: Origin,
}

mod addresses;
mod copies;
mod draft;
mod links;
mod merge;
mod networks;
mod nodes;
mod publish;
mod ready;
mod routes;
mod vms;

use draft::LabDraft;
use nodes::lab_hosts;

/// The parsed lab file, before resolution.
#[derive(Debug, Clone)]
pub struct LabFile {
    /// The raw document (after error recovery).
    pub raw: RawLab,
    /// The positioned source.
    pub source: Source,
    /// Directory of the file, for relative `files:` sources.
    pub base_dir: Option<PathBuf>,
}

/// Parses a lab file's text (named `file` in errors). Structural errors are all reported.
pub fn parse_lab(file: &str, text: &str) -> Result<LabFile, SpecErrors> {
    let (v, errors) = parse::parse::<RawLab>(file, text);
    match v {
        Some((raw, source)) if errors.is_empty() => Ok(LabFile {
            raw,
            source,
            base_dir: None,
        }),
        _ => Err(SpecErrors::sorted(errors)),
    }
}

/// Parses and resolves a lab file's text. A file with `copies:` gives one lab per copy.
pub fn load_str(file: &str, text: &str, host: &HostLimits) -> Result<Vec<Lab>, SpecErrors> {
    load_with_base(file, text, None, host)
}

/// Reads, parses and resolves a lab file (or a containerlab topology, `*.clab.yml`); relative
/// `files:` sources are taken from its directory.
pub fn load_file(path: &FsPath, host: &HostLimits) -> Result<Vec<Lab>, SpecErrors> {
    load_file_noted(path, host).map(|(labs, _)| labs)
}

/// [`load_file`], with the notes a containerlab topology's conversion made (the image of
/// each node, what was dropped): lines for the user.
pub fn load_file_noted(
    path: &FsPath,
    host: &HostLimits,
) -> Result<(Vec<Lab>, Vec<String>), SpecErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecErrors(vec![SpecError {
            file: file.clone(),
            pos: Default::default(),
            path: Path::root(),
            message: format!("cannot read the lab file: {e}"),
            fix: Some("check the path".into()),
            limit: None,
        }])
    })?;
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                FsPath::new(".")
            } else {
                p
            }
        })
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    if !crate::spec::clab::is_clab_path(path) {
        return load_with_base(&file, &text, base, host).map(|labs| (labs, Vec::new()));
    }
    let conv = crate::spec::clab::convert(&file, &text, base.as_deref(), &[])?;
    // What resolution finds wrong is located in the converted file (`kobako import clab`
    // writes it); the containerlab file's own mistakes were reported above.
    let labs = load_with_base(
        &format!("{file} (converted: kobako import clab {file})"),
        &conv.to_yaml(&file),
        base,
        host,
    )?;
    Ok((labs, conv.notes()))
}

/// Like [`load_str`] for a file expected to hold one lab (no `copies:`).
pub fn load_one(file: &str, text: &str, host: &HostLimits) -> Result<Lab, SpecErrors> {
    let mut labs = load_str(file, text, host)?;
    if labs.len() != 1 {
        return Err(SpecErrors(vec![SpecError {
            file: file.into(),
            pos: Default::default(),
            path: Path::parse("copies"),
            message: format!("this file makes {} labs, one was expected", labs.len()),
            fix: Some("use load_str for files with copies".into()),
            limit: None,
        }]));
    }
    Ok(labs.remove(0))
}

/// Parses and resolves; relative `files:` sources are taken from `base_dir`. Errors that only
/// follow from a structural error already reported are dropped.
fn load_with_base(
    file: &str,
    text: &str,
    base_dir: Option<PathBuf>,
    host: &HostLimits,
) -> Result<Vec<Lab>, SpecErrors> {
    let (v, mut errors) = parse::parse::<RawLab>(file, text);
    let Some((raw, source)) = v else {
        return Err(SpecErrors::sorted(errors));
    };
    let lf = LabFile {
        raw,
        source,
        base_dir,
    };
    match resolve(&lf, host) {
        Ok(labs) if errors.is_empty() => Ok(labs),
        Ok(_) => Err(SpecErrors::sorted(errors)),
        Err(e) => {
            // An entry with a structural error was dropped; what its parent then lacks
            // (an interface "connected to nothing" after `netwrok:`) is a consequence,
            // not another mistake.
            let damaged: Vec<(String, Path)> = errors
                .iter()
                .filter(|e| !e.path.is_root())
                .map(|e| (e.file.clone(), e.path.parent()))
                .collect();
            errors.extend(
                e.0.into_iter()
                    .filter(|x| !damaged.iter().any(|(f, p)| *f == x.file && *p == x.path)),
            );
            Err(SpecErrors::sorted(errors))
        }
    }
}

/// Resolves a parsed lab file into its labs (one, or one per copy).
pub fn resolve(lf: &LabFile, host: &HostLimits) -> Result<Vec<Lab>, SpecErrors> {
    let mut r = Resolver {
        sources: vec![lf.source.clone()],
        errors: Vec::new(),
        host: *host,
        raw: &lf.raw,
        base_dir: lf.base_dir.clone(),
        builtin: HashMap::new(),
    };
    let copies = r.copies();
    let mut labs = Vec::new();
    let mut reported = false;
    for c in &copies {
        let before = r.errors.len();
        let lab = r.lab(c.as_ref());
        // Copies only differ in names: report the first copy's errors only.
        if reported {
            r.errors.truncate(before);
        }
        reported = true;
        labs.extend(lab);
    }
    r.check_copies_ports(&labs);
    if labs.len() > 1 {
        let total: u64 = labs.iter().map(|l| l.total_memory().0).sum();
        if total > host.memory.0 && labs.iter().all(|l| l.total_memory() <= host.memory) {
            let at = r.lab_at(spec_path("copies"));
            r.err(
                &at,
                format!(
                    "the {} copies need {} of memory together, the host has {}",
                    labs.len(),
                    MemMib(total),
                    host.memory
                ),
                "make fewer copies or give the VMs less memory".to_string(),
            );
        }
    }
    if r.errors.is_empty() {
        Ok(labs)
    } else {
        Err(SpecErrors::sorted(r.errors))
    }
}

/// One resolution of one lab file: the sources errors point into (the lab file first, then
/// each shipped template read), and every error found so far.
struct Resolver<'a> {
    sources: Vec<Source>,
    errors: Vec<SpecError>,
    host: HostLimits,
    raw: &'a RawLab,
    base_dir: Option<PathBuf>,
    /// Builtin template name → source index.
    builtin: HashMap<String, (usize, RawNode)>,
}

/// A path in the lab file from its dotted form (`copies.names`).
fn spec_path(s: &str) -> Path {
    Path::parse(s)
}

impl Resolver<'_> {
    /// Reports an error at the value written at `at`.
    fn err(&mut self, at: &Origin, message: String, fix: impl Into<Option<String>>) {
        let e = self.sources[at.src].error(&at.path, message, fix.into());
        self.errors.push(e);
    }

    /// Reports an error at the key of the entry at `at` (a name that is wrong).
    fn key_err(&mut self, at: &Origin, message: String, fix: impl Into<Option<String>>) {
        let e = self.sources[at.src].key_error(&at.path, message, fix.into());
        self.errors.push(e);
    }

    /// `path` in the lab file itself.
    fn lab_at(&self, path: Path) -> Origin {
        Origin { src: 0, path }
    }

    /// Resolves the lab, or copy `copy` (name, index) of it, in order: networks and uplink,
    /// nodes (templates merged) with their VMs, links, addresses, gateways and routes, publish,
    /// host names.
    fn lab(&mut self, copy: Option<&(String, u32)>) -> Option<Lab> {
        let raw = self.raw;
        let (lab_name, copy_info) = self.lab_name(copy);
        let id = LabId::of(&lab_name);

        let networks = self.networks();
        let (uplink, uplinked) = self.uplink(&networks);
        let (merged, broken) = self.merge_nodes();

        let mut b = LabDraft {
            lab: lab_name.clone(),
            networks,
            uplinked,
            broken,
            ..Default::default()
        };
        // Node networks, VMs and explicit interfaces.
        for (nname, at, def) in &merged {
            self.node(&mut b, nname, at, def);
        }
        // Links (lab level, then node level).
        for (i, l) in raw.links.iter().enumerate() {
            let at = self.lab_at(spec_path("links").index(i));
            self.link(&mut b, l, &at, None);
        }
        for (nname, _, def) in &merged {
            for l in &def.links {
                self.link(&mut b, &l.value, &l.at, Some(nname));
            }
        }
        self.addresses(&mut b);
        self.gateways_and_routes(&mut b);
        let publish = self.publish(&mut b, copy.map_or(0, |c| c.1));
        lab_hosts(&mut b);
        self.host_totals(&b);

        let nodes = b
            .nodes
            .into_iter()
            .map(|n| Node {
                name: n.name,
                description: n.description,
                template: n.template,
                network: n.network,
                vms: n.vms.into_iter().map(|v| v.vm).collect(),
            })
            .collect();
        Some(Lab {
            name: lab_name,
            id,
            description: raw.description.clone(),
            copy: copy_info,
            nodes,
            networks: b.networks.into_iter().map(|(n, _)| n).collect(),
            links: b.links.into_iter().map(|(l, _)| l).collect(),
            uplink,
            publish,
            base_dir: self.base_dir.clone(),
        })
    }

    /// The lab's name (checked), or copy `copy`'s `LAB-COPY` and what it is a copy of.
    fn lab_name(&mut self, copy: Option<&(String, u32)>) -> (LabName, Option<CopyInfo>) {
        let raw = self.raw;
        let name_at = self.lab_at(spec_path("name"));
        let base_name = raw.name.clone();
        if let Err(why) = check_name(&base_name, 40, true) {
            self.err(
                &name_at,
                format!("lab name '{base_name}' {why}"),
                "use lowercase letters, digits and '-', e.g. `name: my-lab`".to_string(),
            );
        }
        let (name, copy_info) = match copy {
            None => (base_name.clone(), None),
            Some((c, i)) => {
                let n = format!("{base_name}-{c}");
                if n.len() > 40 {
                    let at = self.lab_at(spec_path("copies"));
                    self.err(
                        &at,
                        format!("copy lab name '{n}' is longer than 40 bytes"),
                        "use a shorter lab name or shorter copy names".to_string(),
                    );
                }
                (
                    n,
                    Some(CopyInfo {
                        of: LabName(base_name.clone()),
                        name: c.clone(),
                        index: *i,
                    }),
                )
            }
        };
        (LabName(name), copy_info)
    }

    /// The lab's VMs together must fit in the host's memory (when each one does).
    fn host_totals(&mut self, b: &LabDraft) {
        let total: u64 = b
            .nodes
            .iter()
            .flat_map(|n| n.vms.iter())
            .map(|v| v.vm.memory.0)
            .sum();
        if total > self.host.memory.0
            && b.nodes
                .iter()
                .all(|n| n.vms.iter().all(|v| v.vm.memory <= self.host.memory))
        {
            let at = self.lab_at(spec_path("nodes"));
            self.key_err(
                &at,
                format!(
                    "the lab's VMs need {} of memory together, the host has {}",
                    MemMib(total),
                    self.host.memory
                ),
                "give the VMs less memory or use fewer VMs".to_string(),
            );
        }
    }
}

/// Names for a fix hint: `a, b, c`, or `(none)`.
fn list<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}
