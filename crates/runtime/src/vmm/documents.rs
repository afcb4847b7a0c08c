//! The VMM's configuration documents: the guest command line, `vmm.json` (the
//! Firecracker-format configuration a VM boots from; without kobako's extensions for
//! Firecracker) and the `--snapshot-load` document of a restored VM.

use std::path::Path;

use super::{
    Flavor, VmmRuntime, CONSOLE_SOCKET, GUEST_CID, MEMORY_FILE, PVM_CMDLINE, VSOCK_SOCKET,
};
use crate::config::{Root, VmConfig};
use crate::{Result, RuntimeError};

impl VmmRuntime {
    /// The guest command line of kobako-vmm: the common one, then what this runtime needs last
    /// (later `reboot=` wins).
    pub fn cmdline(cfg: &VmConfig, pvm: bool) -> String {
        Self::cmdline_for(Flavor::Kobako, cfg, pvm)
    }

    /// The guest command line for `flavor`: `reboot=k` (the i8042 reset ends the VM process
    /// with both VMMs), and for kobako-vmm `kobako.bootmark=1` (the agent's boot-complete
    /// write, which only kobako-vmm's API reports).
    pub fn cmdline_for(flavor: Flavor, cfg: &VmConfig, pvm: bool) -> String {
        let mut c = cfg.cmdline();
        if pvm {
            c.push(' ');
            c.push_str(PVM_CMDLINE);
        }
        c.push_str(" reboot=k");
        if flavor.kobako_extensions() {
            c.push_str(" kobako.bootmark=1");
        }
        c
    }

    /// [`Self::config_file`] for `flavor`: Firecracker's has none of kobako's extensions (no
    /// drive `image_format`, no `serial` section: its console is its standard output) and
    /// refuses what Firecracker cannot run ([`Flavor::check`]).
    pub fn config_file_for(
        flavor: Flavor,
        cfg: &VmConfig,
        dir: &Path,
        pvm: bool,
    ) -> Result<serde_json::Value> {
        flavor.check(cfg)?;
        let mut v = Self::config_file(cfg, dir, pvm)?;
        if flavor.kobako_extensions() {
            return Ok(v);
        }
        v["boot-source"]["boot_args"] = Self::cmdline_for(flavor, cfg, pvm).into();
        if let Some(o) = v.as_object_mut() {
            o.remove("serial");
        }
        if let Some(drives) = v["drives"].as_array_mut() {
            for d in drives {
                if let Some(o) = d.as_object_mut() {
                    o.remove("image_format");
                }
            }
        }
        Ok(v)
    }

    /// The Firecracker-format configuration file of a VM: kernel and initramfs or root disk,
    /// extra disks (raw or qcow2: the VMM reads the format from the file), NICs on their taps
    /// (opened in the VM's network namespace, which the supervisor enters), the vsock device
    /// for the agent channel, an entropy device, and the console socket.
    pub fn config_file(cfg: &VmConfig, dir: &Path, pvm: bool) -> Result<serde_json::Value> {
        let check_format = |what: &str, format: &str| -> Result<()> {
            if format == "raw" || format == "qcow2" {
                Ok(())
            } else {
                Err(RuntimeError::Invalid(format!(
                    "{what}: format {format:?} is not supported by the vmm runtime (raw or \
                     qcow2), or use --runtime qemu"
                )))
            }
        };
        let mut boot = serde_json::json!({
            "kernel_image_path": cfg.kernel,
            "boot_args": Self::cmdline(cfg, pvm),
        });
        let mut drives = Vec::new();
        match &cfg.root {
            Root::Initramfs { path } => boot["initrd_path"] = serde_json::json!(path),
            Root::Disk {
                path,
                format,
                read_only,
            } => {
                check_format("root disk", format)?;
                drives.push(serde_json::json!({
                    "drive_id": "root",
                    "path_on_host": path,
                    "is_root_device": true,
                    "is_read_only": read_only,
                    // Never probed: a guest-written raw disk must stay raw.
                    "image_format": format,
                }));
            }
        }
        // Drive and interface ids sort in the guest's order (the VMM keeps them by id).
        for (i, d) in cfg.extra_disks.iter().enumerate() {
            check_format(&format!("disk {}", d.path.display()), &d.format)?;
            drives.push(serde_json::json!({
                "drive_id": format!("disk{:02}", i + 1),
                "path_on_host": d.path,
                "is_root_device": false,
                "is_read_only": d.read_only,
                "image_format": d.format,
            }));
        }
        let nics: Vec<_> = cfg
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::json!({
                    "iface_id": format!("net{i:02}"),
                    "host_dev_name": n.tap,
                    "guest_mac": n.mac,
                })
            })
            .collect();
        Ok(serde_json::json!({
            "boot-source": boot,
            "machine-config": {
                "vcpu_count": cfg.vcpus,
                "mem_size_mib": cfg.memory_mib,
            },
            "drives": drives,
            "network-interfaces": nics,
            "vsock": {
                "guest_cid": GUEST_CID,
                "uds_path": dir.join(VSOCK_SOCKET),
            },
            "entropy": {},
            "serial": { "serial_out_path": format!("unix:{}", dir.join(CONSOLE_SOCKET).display()) },
        }))
    }

    /// The `--snapshot-load` document restoring `cfg` (made by [`crate::Runtime::restore_config`]:
    /// `incoming` is the snapshot's VM state file, `memory.bin` beside it) in VM directory
    /// `dir`: the memory file mapped privately, the guest resumed at once, and the new VM's own
    /// host resources in place of the snapshot's: its taps (interface ids `net00`.. as
    /// [`Self::config_file`] names them), its vsock socket, its disks (the root overlay,
    /// private copies) and its console socket.
    pub fn restore_file(cfg: &VmConfig, dir: &Path) -> Result<serde_json::Value> {
        let Some(state) = &cfg.incoming else {
            return Err(RuntimeError::Invalid(format!(
                "VM '{}' is not a restore (no snapshot state file)",
                cfg.name
            )));
        };
        let memory = state.with_file_name(MEMORY_FILE);
        let mut drives = Vec::new();
        if let Root::Disk { path, .. } = &cfg.root {
            drives.push(serde_json::json!({"drive_id": "root", "path_on_host": path}));
        }
        for (i, d) in cfg.extra_disks.iter().enumerate() {
            drives.push(serde_json::json!({
                "drive_id": format!("disk{:02}", i + 1),
                "path_on_host": d.path,
            }));
        }
        let nics: Vec<_> = cfg
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| serde_json::json!({"iface_id": format!("net{i:02}"), "host_dev_name": n.tap}))
            .collect();
        let mut v = serde_json::json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": memory},
            "resume_vm": true,
            "vsock_override": {"uds_path": dir.join(VSOCK_SOCKET)},
            "serial": { "serial_out_path": format!("unix:{}", dir.join(CONSOLE_SOCKET).display()) },
        });
        if !nics.is_empty() {
            v["network_overrides"] = serde_json::Value::Array(nics);
        }
        if !drives.is_empty() {
            v["drive_overrides"] = serde_json::Value::Array(drives);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::cfg;
    use super::*;

    #[test]
    fn config_file_is_firecracker_format_with_bootmark_last() {
        let c = cfg(Root::Initramfs {
            path: "/i.cpio".into(),
        });
        let v = VmmRuntime::config_file(&c, Path::new("/run/x"), false).unwrap();
        assert_eq!(v["machine-config"]["vcpu_count"], 2);
        assert_eq!(v["machine-config"]["mem_size_mib"], 96);
        assert_eq!(v["boot-source"]["initrd_path"], "/i.cpio");
        assert_eq!(
            v["serial"]["serial_out_path"],
            "unix:/run/x/vmm/console.sock"
        );
        let args = v["boot-source"]["boot_args"].as_str().unwrap();
        assert!(
            args.ends_with("foo=bar reboot=k kobako.bootmark=1"),
            "{args}"
        );
        assert!(!args.contains("kobako_pvm"));
        let pvm = VmmRuntime::cmdline(&c, true);
        assert!(pvm.contains("kobako_pvm noxsave"), "{pvm}");
    }

    /// Firecracker's configuration: kobako's without its extensions, every section one of
    /// Firecracker's `--config-file` (its `VmmConfig`), every drive field one of its `Drive`.
    #[test]
    fn firecracker_gets_the_configuration_without_kobako_extensions() {
        let mut c = cfg(Root::Disk {
            path: "/d.raw".into(),
            format: "raw".into(),
            read_only: false,
        });
        c.nics = vec![crate::config::Nic {
            tap: "tap-a".into(),
            mac: "52:54:00:00:00:01".into(),
        }];
        let v = VmmRuntime::config_file_for(Flavor::Firecracker, &c, Path::new("/run/x"), true)
            .unwrap();
        const SECTIONS: &[&str] = &[
            "balloon",
            "drives",
            "boot-source",
            "cpu-config",
            "logger",
            "machine-config",
            "metrics",
            "mmds-config",
            "network-interfaces",
            "vsock",
            "entropy",
        ];
        for k in v.as_object().unwrap().keys() {
            assert!(SECTIONS.contains(&k.as_str()), "section {k}");
        }
        const DRIVE: &[&str] = &[
            "drive_id",
            "path_on_host",
            "is_root_device",
            "is_read_only",
            "partuuid",
            "cache_type",
            "rate_limiter",
            "io_engine",
            "socket",
        ];
        for k in v["drives"][0].as_object().unwrap().keys() {
            assert!(DRIVE.contains(&k.as_str()), "drive field {k}");
        }
        assert_eq!(v["vsock"]["uds_path"], "/run/x/vmm/vsock.sock");
        assert_eq!(v["network-interfaces"][0]["host_dev_name"], "tap-a");
        let args = v["boot-source"]["boot_args"].as_str().unwrap();
        assert!(args.ends_with(" reboot=k"), "{args}");
        assert!(
            args.contains("kobako_pvm") && !args.contains("bootmark"),
            "{args}"
        );
        // kobako-vmm's flavor is the document as before.
        let k = VmmRuntime::config_file_for(Flavor::Kobako, &c, Path::new("/run/x"), true).unwrap();
        assert_eq!(
            k,
            VmmRuntime::config_file(&c, Path::new("/run/x"), true).unwrap()
        );
        // A qcow2 disk is refused for Firecracker.
        c.root = Root::Disk {
            path: "/d.qcow2".into(),
            format: "qcow2".into(),
            read_only: false,
        };
        let e = VmmRuntime::config_file_for(Flavor::Firecracker, &c, Path::new("/x"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("raw images only"), "{e}");
    }

    #[test]
    fn disks_nics_and_vsock_are_wired() {
        let mut c = cfg(Root::Disk {
            path: "/d.qcow2".into(),
            format: "qcow2".into(),
            read_only: false,
        });
        c.extra_disks = vec![crate::config::Disk {
            path: "/seed.raw".into(),
            format: "raw".into(),
            read_only: true,
        }];
        c.nics = vec![
            crate::config::Nic {
                tap: "tap-a".into(),
                mac: "52:54:00:00:00:01".into(),
            },
            crate::config::Nic {
                tap: "tap-b".into(),
                mac: "52:54:00:00:00:02".into(),
            },
        ];
        let v = VmmRuntime::config_file(&c, Path::new("/run/x"), false).unwrap();
        assert!(v["boot-source"].get("initrd_path").is_none());
        let d = &v["drives"];
        assert_eq!(d[0]["drive_id"], "root");
        assert_eq!(d[0]["path_on_host"], "/d.qcow2");
        assert_eq!(d[0]["is_root_device"], true);
        assert_eq!(d[0]["is_read_only"], false);
        assert_eq!(d[1]["path_on_host"], "/seed.raw");
        assert_eq!(d[1]["is_read_only"], true);
        assert_eq!(
            (d[0]["image_format"].as_str(), d[1]["image_format"].as_str()),
            (Some("qcow2"), Some("raw"))
        );
        assert!(d[0]["drive_id"].as_str() > Some("") && d[1]["drive_id"] == "disk01");
        let n = &v["network-interfaces"];
        assert_eq!(n[0]["host_dev_name"], "tap-a");
        assert_eq!(n[1]["guest_mac"], "52:54:00:00:00:02");
        assert!(n[0]["iface_id"].as_str() < n[1]["iface_id"].as_str());
        assert_eq!(v["vsock"]["uds_path"], "/run/x/vmm/vsock.sock");
        assert_eq!(v["vsock"]["guest_cid"], 3);
        // The VMM's own parser takes the whole document (Firecracker's schema, no unknown field).
        let full: kobako_vmm::config::FullConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!((full.drives.len(), full.network_interfaces.len()), (2, 2));
        let args = v["boot-source"]["boot_args"].as_str().unwrap();
        assert!(args.contains("root=/dev/vda"), "{args}");

        c.extra_disks[0].format = "vmdk".into();
        let e = VmmRuntime::config_file(&c, Path::new("/x"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("raw or qcow2") && e.contains("--runtime qemu"),
            "{e}"
        );
    }
}
