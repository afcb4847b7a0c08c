//! Lab file checks: `kobako lab check FILE`, and the checks `up` makes before it starts
//! anything (the file, and every image and kernel there or buildable).

use anyhow::{bail, Result};
use kobako_lab::spec::{self, HostLimits, Lab};

/// What a lab needs that is not there yet, per VM field: unknown images, missing or unbootable
/// image and kernel files. Empty when `up` will find (or build) everything.
pub(crate) fn missing_artifacts(lab: &Lab) -> Vec<String> {
    use kobako_image::store::StoreError;
    use kobako_image::{disk, kernel, recipes};
    use spec::{ImageSource, KernelSource};
    let store = crate::image_cmd::store();
    let mut out = Vec::new();
    for vm in lab.vms() {
        let at = format!("{}: nodes.{}.vms.{}", lab.name, vm.id.node, vm.id.vm);
        match ImageSource::of(&vm.image) {
            ImageSource::Store(name) if name == "tiny" || recipes::find(name).is_some() => {}
            ImageSource::Store(name) => match store.get(name) {
                Ok(_) => {}
                Err(StoreError::NotFound { known, .. }) => out.push(format!(
                    "{at}.image: {}",
                    crate::resolve::unknown_image(name, &known)
                )),
                Err(e) => out.push(format!("{at}.image: {e}")),
            },
            ImageSource::Host(p) => match disk::sniff(p) {
                Ok(disk::Sniff::Cpio | disk::Sniff::Qcow2 | disk::Sniff::Ext4) => {}
                Ok(_) => out.push(format!(
                    "{at}.image: {} is not an initramfs, ext4 or qcow2 image (import archives with `kobako image import`)",
                    p.display()
                )),
                Err(e) => out.push(format!("{at}.image: {}: {e}", p.display())),
            },
        }
        if let KernelSource::Host(p) = KernelSource::of(&vm.kernel) {
            if let Err(e) = kernel::inspect(p) {
                out.push(format!("{at}.kernel: {e}"));
            }
        }
    }
    out
}

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
        problems.extend(missing_artifacts(lab));
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
    let missing: Vec<String> = labs.iter().flat_map(missing_artifacts).collect();
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
