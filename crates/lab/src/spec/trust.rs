//! What in a lab reaches the server's own filesystem.
//!
//! A lab file names images, kernels and files. Store names (`tiny`, `debian-web`, an imported
//! image) and inline content are safe for anyone; a host path (`image: /var/lib/kobako/...`,
//! `kernel: ./vmlinux`, `files: {/etc/x: {src: /etc/shadow}}`) makes the server (root) open
//! that file for the VM. Only admins may do that (docs/SECURITY.md); the server refuses a
//! member's lab that holds any of [`Lab::host_paths`] before anything is stored.

use std::path::Path;

use super::model::{FileSource, Lab, Vm};

/// Where a VM's image comes from (the rule `kobako up` resolves it by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource<'a> {
    /// A name of the image store or a recipe (`tiny`, `debian-web`): no '/' in it.
    Store(&'a str),
    /// A file on the host (anything with a '/').
    Host(&'a Path),
}

impl<'a> ImageSource<'a> {
    /// The source an `image:` value names.
    pub fn of(image: &'a str) -> ImageSource<'a> {
        if image.contains('/') {
            ImageSource::Host(Path::new(image))
        } else {
            ImageSource::Store(image)
        }
    }
}

/// Where a VM's kernel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSource<'a> {
    /// kobako's guest kernel (built once, cached).
    Default,
    /// A vmlinux or bzImage on the host.
    Host(&'a Path),
}

impl<'a> KernelSource<'a> {
    /// The source a `kernel:` value names.
    pub fn of(kernel: &'a str) -> KernelSource<'a> {
        if kernel == "default" {
            KernelSource::Default
        } else {
            KernelSource::Host(Path::new(kernel))
        }
    }
}

/// One field of a lab that names a file of the server's host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostPathUse {
    /// The field in the resolved lab, e.g. `nodes.web.vms.api.image`.
    pub field: String,
    /// The host path it names.
    pub path: String,
    /// Why that field may name a store object instead (the fix for a member).
    pub instead: &'static str,
}

impl Vm {
    fn host_paths_into(&self, out: &mut Vec<HostPathUse>) {
        let at = format!("nodes.{}.vms.{}", self.id.node, self.id.vm);
        if let ImageSource::Host(p) = ImageSource::of(&self.image) {
            out.push(HostPathUse {
                field: format!("{at}.image"),
                path: p.display().to_string(),
                instead: "name an image of the store (GET /api/v1/images: tiny, debian-web, ...)",
            });
        }
        if let KernelSource::Host(p) = KernelSource::of(&self.kernel) {
            out.push(HostPathUse {
                field: format!("{at}.kernel"),
                path: p.display().to_string(),
                instead: "use `kernel: default` (kobako's guest kernel)",
            });
        }
        for s in &self.shares {
            out.push(HostPathUse {
                field: format!("{at}.shares[{}]", s.dst),
                path: s.src.display().to_string(),
                instead: "copy the files in with `files:` (`content:`), or ask an admin to share the directory",
            });
        }
        for f in &self.files {
            if let FileSource::Host(p) = &f.source {
                out.push(HostPathUse {
                    field: format!("{at}.files[{}].src", f.dst),
                    path: p.display().to_string(),
                    instead: "give the file's text with `content:` (or upload it into the VM after `up`)",
                });
            }
        }
    }
}

impl Lab {
    /// Every field of this lab that names a file on the host, in VM order.
    pub fn host_paths(&self) -> Vec<HostPathUse> {
        let mut out = Vec::new();
        for vm in self.vms() {
            vm.host_paths_into(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{load_str, HostLimits};

    fn lab(vm: &str) -> Lab {
        let text = format!("name: t\nnodes:\n  n:\n    vms:\n      v: {vm}\n");
        load_str("t.yaml", &text, &HostLimits::detect())
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
    }

    #[test]
    fn store_names_and_inline_files_name_no_host_path() {
        let l = lab("{ image: tiny, kernel: default, files: { /etc/x: { content: hi } } }");
        assert!(l.host_paths().is_empty());
    }

    #[test]
    fn image_kernel_and_file_sources_on_the_host_are_each_named() {
        let l = lab(
            "{ image: /var/lib/kobako/server/jwt.key, kernel: ./vmlinux, files: { /etc/x: { src: /etc/shadow } }, shares: { /mnt/etc: /etc } }",
        );
        let v = l.host_paths();
        let fields: Vec<&str> = v.iter().map(|u| u.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "nodes.n.vms.v.image",
                "nodes.n.vms.v.kernel",
                "nodes.n.vms.v.shares[/mnt/etc]",
                "nodes.n.vms.v.files[/etc/x].src"
            ]
        );
        assert_eq!(v[0].path, "/var/lib/kobako/server/jwt.key");
        assert_eq!(v[2].path, "/etc");
        assert_eq!(v[3].path, "/etc/shadow");
    }
}
