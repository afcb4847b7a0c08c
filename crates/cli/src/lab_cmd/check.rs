//! Lab file checks: `kobako lab check FILE`, and the checks `up` makes before it starts
//! anything (the file, and every image and kernel there or buildable).

use anyhow::{bail, Result};
use kobako_lab::spec::{self, HostLimits, Lab};

/// `kobako lab check FILE`: the lab file as `up` would take it, without starting anything.
pub fn check(file: &str) -> Result<i32> {
    let labs = match spec::load_file_noted(std::path::Path::new(file), &HostLimits::detect()) {
        Ok((l, notes)) => {
            notes.iter().for_each(|n| eprintln!("{n}"));
            l
        }
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(1);
        }
    };
    let mut problems = Vec::new();
    for lab in &labs {
        problems.extend(kobako_lab::controller::missing_artifacts(lab));
        print_warnings(lab);
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!(
            "{file}: {} problem(s); `up` would not start",
            problems.len()
        );
        return Ok(1);
    }
    let kernel = if kobako_image::kernel::cached().is_some() {
        "cached"
    } else {
        "built at the first `up` (about 15 minutes)"
    };
    for lab in &labs {
        let mut images: Vec<&str> = lab.vms().map(|v| v.image.as_str()).collect();
        images.sort_unstable();
        images.dedup();
        println!(
            "lab {}: OK — {} node(s), {} VM(s), {} network(s), {} link(s); images {}; guest kernel {kernel}",
            lab.name,
            lab.nodes.len(),
            lab.vms().count(),
            lab.networks.len(),
            lab.links.len(),
            images.join(", ")
        );
    }
    Ok(0)
}

/// The labs of `file`, checked as `up` checks them before it starts anything: the file itself,
/// and every image and kernel there (or buildable).
pub(super) fn checked_labs(file: &str) -> Result<Vec<spec::Lab>> {
    let labs = match spec::load_file_noted(std::path::Path::new(file), &HostLimits::detect()) {
        Ok((l, notes)) => {
            notes.iter().for_each(|n| eprintln!("{n}"));
            l
        }
        Err(errs) => {
            eprintln!("{errs}");
            bail!("{file}: {} problem(s); nothing was started", errs.0.len());
        }
    };
    let missing: Vec<String> = labs
        .iter()
        .flat_map(kobako_lab::controller::missing_artifacts)
        .collect();
    for lab in &labs {
        print_warnings(lab);
    }
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("{m}");
        }
        bail!("{file}: {} problem(s); nothing was started", missing.len());
    }
    Ok(labs)
}

/// The lab's warnings (valid, but probably not meant), on stderr.
fn print_warnings(lab: &Lab) {
    for w in lab.warnings() {
        eprintln!("{}: warning: {w}", lab.name);
    }
}
