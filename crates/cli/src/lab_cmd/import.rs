//! `kobako import clab FILE [-o OUT] [--image REPO=IMAGE]...`: a containerlab topology as a
//! kobako lab file, written once (`kobako up FILE.clab.yml` converts on the fly instead).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kobako_lab::spec::{self, clab, HostLimits};

/// Topologies of other tools.
#[derive(Subcommand)]
pub enum ImportCmd {
    /// A containerlab topology (`*.clab.yml`): nodes of kind linux become VMs, bridges lab
    /// networks, links links; container images map to kobako images (README: "containerlab
    /// topologies"). The result is checked as `kobako lab check` checks a file.
    Clab {
        file: String,
        /// Where to write the lab file (default: stdout).
        #[arg(short, long)]
        output: Option<String>,
        /// Run container image REPO (or a full reference) as kobako image IMAGE, e.g.
        /// `--image myorg/router=debian-frr`; repeatable.
        #[arg(long = "image", value_name = "REPO=IMAGE")]
        images: Vec<String>,
    },
}

/// Runs an import command; the exit code.
pub fn import(c: ImportCmd) -> Result<i32> {
    let ImportCmd::Clab {
        file,
        output,
        images,
    } = c;
    let mut overrides = Vec::new();
    for m in &images {
        match m.split_once('=') {
            Some((from, to)) if !from.is_empty() && !to.is_empty() => {
                overrides.push((from.to_string(), to.to_string()))
            }
            _ => {
                bail!("--image {m}: write it as REPO=IMAGE, e.g. --image frrouting/frr=debian-frr")
            }
        }
    }
    let path = std::path::Path::new(&file);
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"))?;
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        })
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    let conv = match clab::convert(&file, &text, base.as_deref(), &overrides) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            eprintln!("{file}: {} problem(s); nothing was written", errs.0.len());
            return Ok(1);
        }
    };
    for n in conv.notes() {
        eprintln!("{n}");
    }
    let yaml = conv.to_yaml(&file);
    // The result must be a lab `up` takes: check it before writing it.
    if let Err(errs) = spec::load_str("converted lab", &yaml, &HostLimits::detect()) {
        eprintln!("{errs}");
        bail!("{file}: the converted lab does not resolve (a bug in the conversion, or a mistake only the kobako lab shows); nothing was written");
    }
    match output {
        Some(o) => {
            std::fs::write(&o, &yaml).with_context(|| format!("cannot write {o}"))?;
            eprintln!("{file}: written as the kobako lab file {o}");
        }
        None => print!("{yaml}"),
    }
    Ok(0)
}
