//! Snapshots of the vmm runtime: taking one (pause, `PUT /snapshot/create`, take the files
//! out of the VMM's work directory, copy the disks, resume, manifest) and checking one
//! against this host before a restore.

use std::path::Path;
use std::time::Duration;

use super::api::{api_call, instance_state};
use super::{VmmRuntime, MEMORY_FILE, STATE_FILE, WORK_DIR};
use crate::config::VmConfig;
use crate::vmdir::VmDir;
use crate::{Result, RuntimeError};

impl VmmRuntime {
    /// Pause, `PUT /snapshot/create`, copy the writable disks, resume (unless `leave_paused`),
    /// then the manifest.
    pub(super) async fn take(
        &self,
        vm: &VmDir,
        cfg: &VmConfig,
        dest: &Path,
        leave_paused: bool,
    ) -> Result<crate::snapshot::Manifest> {
        let was_running = instance_state(vm).as_deref() == Some("Running");
        let t0 = std::time::Instant::now();
        if was_running {
            self.api(vm, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#))?;
        }
        // The VMM writes its files where its jail lets it, its work directory (the same path
        // inside and out); kobako takes them out into `dest` without trusting that directory.
        let staged = |f: &str| vm.file(WORK_DIR).join(format!("snapshot.{f}"));
        let body = serde_json::json!({
            "snapshot_type": "Full",
            "snapshot_path": staged(STATE_FILE),
            "mem_file_path": staged(MEMORY_FILE),
        })
        .to_string();
        let jail = vm.launch().ok().and_then(|l| l.jail);
        let result = {
            let (vm, dest, cfg) = (vm.clone(), dest.to_path_buf(), cfg.clone());
            let staged = [staged(STATE_FILE), staged(MEMORY_FILE)];
            // Writing the memory file takes a while for large guests: off the async threads.
            tokio::task::spawn_blocking(move || {
                for f in &staged {
                    let _ = std::fs::remove_file(f);
                }
                // The staged memory counts against the VM's own memory limit while it exists.
                let _raised = jail
                    .as_ref()
                    .map(|j| crate::jail::raise_memory(&j.cgroup, u64::from(cfg.memory_mib)));
                let made = api_call(
                    &vm,
                    "PUT",
                    "/snapshot/create",
                    Some(&body),
                    Duration::from_secs(300),
                )
                .and_then(|_| {
                    crate::jail::take_out(&staged[0], &dest.join(STATE_FILE))?;
                    crate::jail::take_out(&staged[1], &dest.join(MEMORY_FILE))
                });
                for f in &staged {
                    let _ = std::fs::remove_file(f);
                }
                made?;
                // The VMM flushed the block devices first: the copies are consistent.
                crate::snapshot::copy_disks(&cfg, &dest)
            })
            .await
            .unwrap_or_else(|e| Err(RuntimeError::Invalid(format!("snapshot task: {e}"))))
        };
        let paused_ms = t0.elapsed().as_millis() as u64;
        if was_running && !leave_paused {
            self.api(vm, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))?;
        }
        let (root, extra) = result?;
        crate::snapshot::write_manifest(
            vm,
            cfg,
            dest,
            crate::snapshot::Saved {
                runtime: "vmm",
                qemu_version: String::new(),
                memory: MEMORY_FILE,
                vmstate: Some(STATE_FILE),
                ram: None,
                root,
                extra,
                paused_ms,
            },
        )
    }
}

/// Reads and checks a vmm snapshot against this host (see [`VmmRuntime::restore_config`]).
pub fn load(dir: &Path, verify: bool) -> Result<crate::snapshot::Manifest> {
    let ours = env!("CARGO_PKG_VERSION");
    crate::snapshot::load_for(dir, "vmm", verify, |m| {
        if m.kobako_version != ours {
            Some(format!(
                "made by kobako {}, this is kobako {ours} (the VMM's state format goes with the \
                 version): take a new snapshot",
                m.kobako_version
            ))
        } else if m.vmstate.is_none() {
            Some(format!(
                "its VM state file ({STATE_FILE}) is not in the manifest"
            ))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::cfg;
    use super::*;
    use crate::config::Root;
    use crate::vmdir::write_json;
    use crate::Runtime;

    /// A VM of the vmm runtime as the snapshot code sees it: a kernel, a qcow2 root and a
    /// private writable raw disk in `vm/`, one NIC.
    fn vm_files(d: &Path) -> VmConfig {
        std::fs::create_dir_all(d.join("vm")).unwrap();
        std::fs::write(d.join("vmlinux"), b"not really a kernel").unwrap();
        let root = d.join("vm/root.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&root)
            .arg("16M")
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::write(d.join("vm/data.raw"), vec![7u8; 4096]).unwrap();
        let mut c = cfg(Root::Disk {
            path: root,
            format: "qcow2".into(),
            read_only: false,
        });
        c.name = "orig".into();
        c.kernel = d.join("vmlinux");
        c.owned_paths = vec![d.join("vm")];
        c.extra_disks = vec![crate::config::Disk {
            path: d.join("vm/data.raw"),
            format: "raw".into(),
            read_only: false,
        }];
        c.nics = vec![crate::config::Nic {
            tap: "tap-orig".into(),
            mac: "52:54:00:00:00:01".into(),
        }];
        c
    }

    /// What `VmmRuntime::snapshot` writes after the VMM saved its two files: the disk copies
    /// and the manifest (through the shared snapshot code).
    fn fake_snapshot(d: &Path, c: &VmConfig) -> (PathBuf, crate::snapshot::Manifest) {
        let snap = d.join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join(STATE_FILE), b"KOBAKO-VMSTATE...").unwrap();
        let mem = std::fs::File::create(snap.join(MEMORY_FILE)).unwrap();
        mem.set_len(u64::from(c.memory_mib) << 20).unwrap();
        let (root, extra) = crate::snapshot::copy_disks(c, &snap).unwrap();
        let vm = VmDir {
            name: c.name.clone(),
            path: d.join("run/orig"),
        };
        let m = crate::snapshot::write_manifest(
            &vm,
            c,
            &snap,
            crate::snapshot::Saved {
                runtime: "vmm",
                qemu_version: String::new(),
                memory: MEMORY_FILE,
                vmstate: Some(STATE_FILE),
                ram: None,
                root,
                extra,
                paused_ms: 3,
            },
        )
        .unwrap();
        (snap, m)
    }

    #[test]
    fn vmm_snapshot_manifest_and_restore_document() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let c = vm_files(d);
        let (snap, m) = fake_snapshot(d, &c);
        assert_eq!((m.runtime.as_str(), m.qemu_version.as_str()), ("vmm", ""));
        assert_eq!(m.memory.size, 96 << 20);
        assert_eq!(m.vmstate.as_ref().unwrap().file, STATE_FILE);
        assert_eq!(m.root.as_ref().unwrap().file, "root.qcow2");
        assert_eq!(m.extra.len(), 1);
        assert_eq!((m.extra[0].0, m.extra[0].1.file.as_str()), (0, "disk0.raw"));
        assert_eq!(m.kernel_size, 19);
        // The manifest on disk reads back, and older manifests (QEMU's, before vmstate) too.
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(snap.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(on_disk["vmstate"]["file"], STATE_FILE);
        let mut old = on_disk.clone();
        old.as_object_mut().unwrap().remove("vmstate");
        old["qemu_version"] = "QEMU emulator version 7.2.19".into();
        let old: crate::snapshot::Manifest = serde_json::from_value(old).unwrap();
        assert!(old.vmstate.is_none());
        let mut no_qemu = on_disk;
        no_qemu.as_object_mut().unwrap().remove("qemu_version");
        assert!(serde_json::from_value::<crate::snapshot::Manifest>(no_qemu).is_ok());

        let rt = VmmRuntime::new("/usr/bin/kobako".into());
        let overlay = d.join("overlays/copy");
        let r = rt.restore_config(&snap, "copy", &overlay, true).unwrap();
        assert_eq!(r.name, "copy");
        assert_eq!(r.incoming.as_deref(), Some(snap.join(STATE_FILE).as_path()));
        assert_eq!(r.owned_paths, vec![overlay.clone()]);
        let Root::Disk {
            path,
            format,
            read_only,
        } = &r.root
        else {
            panic!("{:?}", r.root)
        };
        assert_eq!(
            (path, format.as_str(), read_only),
            (&overlay.join("root.qcow2"), "qcow2", &false)
        );
        // A new overlay on the snapshot's copy: the snapshot itself is never written.
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output", "json"])
            .arg(path)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            info["backing-filename"].as_str(),
            Some(snap.join("root.qcow2").to_str().unwrap())
        );
        // The writable private disk is the new VM's own copy (the restored device writes to it).
        assert_eq!(r.extra_disks[0].path, overlay.join("disk0.raw"));
        assert!(!r.extra_disks[0].read_only);
        assert_eq!(
            std::fs::read(&r.extra_disks[0].path).unwrap(),
            vec![7u8; 4096]
        );

        let doc = VmmRuntime::restore_file(&r, Path::new("/run/kobako/vms/copy")).unwrap();
        assert_eq!(
            doc["snapshot_path"],
            snap.join(STATE_FILE).to_str().unwrap()
        );
        assert_eq!(doc["mem_backend"]["backend_type"], "File");
        assert_eq!(
            doc["mem_backend"]["backend_path"],
            snap.join(MEMORY_FILE).to_str().unwrap()
        );
        assert_eq!(doc["resume_vm"], true);
        assert_eq!(doc["network_overrides"][0]["iface_id"], "net00");
        assert_eq!(doc["network_overrides"][0]["host_dev_name"], "tap-orig");
        assert_eq!(
            doc["vsock_override"]["uds_path"],
            "/run/kobako/vms/copy/vmm/vsock.sock"
        );
        assert_eq!(
            doc["serial"]["serial_out_path"],
            "unix:/run/kobako/vms/copy/vmm/console.sock"
        );
        assert_eq!(doc["drive_overrides"][0]["drive_id"], "root");
        assert_eq!(
            doc["drive_overrides"][0]["path_on_host"],
            overlay.join("root.qcow2").to_str().unwrap()
        );
        assert_eq!(doc["drive_overrides"][1]["drive_id"], "disk01");
        // The VMM's own parser takes the document (no unknown field) as a File-backed load.
        let parsed: kobako_vmm::config::SnapshotLoadParams =
            serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(parsed.memory_file().unwrap(), snap.join(MEMORY_FILE));
        assert_eq!(
            (parsed.drive_overrides.len(), parsed.network_overrides.len()),
            (2, 1)
        );
        // The ids are the ones the boot configuration gave the devices.
        let fc = VmmRuntime::config_file(&r, Path::new("/run/kobako/vms/copy"), false).unwrap();
        assert_eq!(
            fc["drives"][1]["drive_id"],
            doc["drive_overrides"][1]["drive_id"]
        );
        assert_eq!(
            fc["network-interfaces"][0]["iface_id"],
            doc["network_overrides"][0]["iface_id"]
        );
        // A VM that is no restore has no such document.
        let e = VmmRuntime::restore_file(&c, Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a restore"), "{e}");
    }

    #[test]
    fn vmm_snapshots_are_refused_with_the_reason() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let c = vm_files(d);
        let (snap, m) = fake_snapshot(d, &c);
        let rt = VmmRuntime::new("/usr/bin/kobako".into());
        let refused = |verify: bool| {
            let e = rt
                .restore_config(&snap, "copy", &d.join("ov"), verify)
                .unwrap_err()
                .to_string();
            assert!(!d.join("ov").exists(), "overlay left behind after: {e}");
            e
        };
        let edit = |f: &dyn Fn(&mut crate::snapshot::Manifest)| {
            let mut m2 = m.clone();
            f(&mut m2);
            write_json(&snap.join("manifest.json"), &m2).unwrap();
        };
        assert!(load(&snap, true).is_ok());

        // Another runtime's snapshot, both ways.
        edit(&|m| m.runtime = "qemu".into());
        let e = refused(false);
        assert!(
            e.contains("made by the 'qemu' runtime") && e.contains("--runtime qemu"),
            "{e}"
        );
        edit(&|_| {});
        let e = crate::snapshot::load(Path::new("/usr/bin/qemu-system-x86_64"), &snap, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("made by the 'vmm' runtime"), "{e}");

        // Another kobako (the VMM's state format).
        edit(&|m| m.kobako_version = "0.0.1-other".into());
        let e = refused(false);
        assert!(
            e.contains("made by kobako 0.0.1-other") && e.contains("take a new snapshot"),
            "{e}"
        );
        edit(&|_| {});

        // The kernel changed: size, then (same size) content with verify.
        std::fs::write(&c.kernel, b"not really a kernel!").unwrap();
        let e = refused(false);
        assert!(e.contains("kernel") && e.contains("changed"), "{e}");
        std::fs::write(&c.kernel, b"NOT really a kernel").unwrap();
        let e = refused(true);
        assert!(e.contains("changed"), "{e}");
        std::fs::write(&c.kernel, b"not really a kernel").unwrap();

        // A truncated memory file.
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .open(snap.join(MEMORY_FILE))
            .unwrap();
        mem.set_len(1 << 20).unwrap();
        let e = refused(false);
        assert!(
            e.contains("memory.bin has 1048576 bytes") && e.contains("truncated"),
            "{e}"
        );
        mem.set_len(96 << 20).unwrap();

        // A corrupted state file: found by verify only.
        std::fs::write(snap.join(STATE_FILE), b"KOBAKO-VMSTATE..!").unwrap();
        assert!(load(&snap, false).is_ok());
        let e = refused(true);
        assert!(e.contains("vmstate.bin does not match its checksum"), "{e}");

        // A missing state file, a manifest without one, no manifest at all.
        std::fs::remove_file(snap.join(STATE_FILE)).unwrap();
        let e = refused(false);
        assert!(
            e.contains("vmstate.bin") && e.contains("No such file"),
            "{e}"
        );
        edit(&|m| m.vmstate = None);
        let e = refused(false);
        assert!(
            e.contains("state file (vmstate.bin) is not in the manifest"),
            "{e}"
        );
        let e = rt
            .restore_config(d, "copy", &d.join("ov"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a kobako VM snapshot"), "{e}");
    }
}
