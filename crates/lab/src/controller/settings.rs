//! How lab VMs boot: the settings the binary reads once (its flags and environment) and passes
//! down to `up`, `restart`, `start_vms`, scenarios and function deploys. No process-wide flag
//! steers a library: two callers in one process (a benchmark timing warm against cold) each
//! pass their own.

use kobako_boot::{AccelMode, BootError, BootSpec, RootKind};
use kobako_runtime::config::VmConfig;

use crate::spec::{Lab, Vm};

/// What every lab VM of an operation boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// CPU accelerator (`KOBAKO_ACCEL`, default auto).
    pub accel: AccelMode,
    /// Clone VMs from warm snapshots when one fits (`KOBAKO_WARM=0` and `up --cold`: off).
    pub warm: bool,
    /// A virtio-balloon with free page reporting in every lab VM, so memory the guest frees goes
    /// back to the host: the density lever for idle labs (`KOBAKO_BALLOON=0`: off).
    pub free_page_reporting: bool,
}

impl Default for BootSettings {
    fn default() -> BootSettings {
        BootSettings {
            accel: AccelMode::Auto,
            warm: true,
            free_page_reporting: true,
        }
    }
}

impl BootSettings {
    /// The runtime config (kernel, image, sizes) of lab VM `vm` under runtime name `name`:
    /// the resolution of `kobako vm run`, with a lab file's reading of words (a bare image name
    /// is a store name or recipe, never a file in the working directory). Images and the
    /// kernel are built when missing, their progress on stderr. No NICs, namespace or cgroups:
    /// `up` adds those.
    pub fn vm_config(&self, vm: &Vm, name: &str) -> Result<VmConfig, BootError> {
        let spec = BootSpec {
            name: name.to_string(),
            kernel: vm.kernel.clone(),
            image: vm.image.clone(),
            root: RootKind::Initramfs,
            vcpus: vm.vcpus,
            memory_mib: u32::try_from(vm.memory.0).unwrap_or(u32::MAX),
            // The lab's guest settings (AppArmor's mode).
            cmdline: vm.kernel_cmdline(),
            accel: self.accel,
            ready_timeout_secs: 120,
            names_only: true,
        };
        kobako_boot::vm_config(&spec, &kobako_image::StderrProgress).map(|(cfg, _)| cfg)
    }
}

/// What a lab needs that is not there yet, per VM field: unknown images, missing or unbootable
/// image and kernel files. Empty when `up` will find (or build) everything.
pub fn missing_artifacts(lab: &Lab) -> Vec<String> {
    use crate::spec::{ImageSource, KernelSource};
    use kobako_image::store::StoreError;
    use kobako_image::{disk, kernel, recipes};
    let store = kobako_boot::image::store();
    let mut out = Vec::new();
    for vm in lab.vms() {
        let at = format!("{}: nodes.{}.vms.{}", lab.name, vm.id.node, vm.id.vm);
        match ImageSource::of(&vm.image) {
            ImageSource::Store(name) if name == "tiny" || recipes::find(name).is_some() => {}
            ImageSource::Store(name) => match store.get(name) {
                Ok(_) => {}
                Err(StoreError::NotFound { known, .. }) => out.push(format!(
                    "{at}.image: {}",
                    kobako_boot::unknown_image(name, &known)
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
