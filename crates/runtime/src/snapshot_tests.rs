//! Unit tests of `snapshot.rs`.

use super::*;
use crate::config::MemoryFile;

fn manifest(config: VmConfig, ram: Option<SnapFile>) -> Manifest {
    let f = |file: &str| SnapFile {
        file: file.into(),
        size: 0,
        sha256: String::new(),
    };
    Manifest {
        kind: "kobako-vm-snapshot".into(),
        format: 1,
        runtime: "qemu".into(),
        qemu_version: String::new(),
        kobako_version: String::new(),
        created_ms: 0,
        vm: "v".into(),
        config,
        kernel_size: 0,
        kernel_sha256: String::new(),
        memory: f("memory.bin"),
        vmstate: None,
        ram,
        root: None,
        extra: Vec::new(),
        paused_ms: 0,
    }
}

/// QEMU's stream names RAM blocks after the backend: every generation of restore keeps
/// the name the first VM had (a plain VM: none; a clone: `ram`).
#[test]
fn restores_name_ram_as_the_saved_vm_did() {
    let snap = Path::new("/snap");
    let over = Path::new("/nonexistent-overlay");
    let plain = crate::config::tests::cfg();
    let r = restore_config(snap, &manifest(plain.clone(), None), "r", over).unwrap();
    assert_eq!((r.memory_file, r.named_ram), (None, false));

    // A warm snapshot (RAM as ram.bin): its clones map the file.
    let ram = SnapFile {
        file: RAM_FILE.into(),
        size: 0,
        sha256: String::new(),
    };
    let mut warm = plain.clone();
    warm.memory_file = Some(MemoryFile {
        path: "/w/build-ram.bin".into(),
        shared: true,
    });
    let clone = restore_config(snap, &manifest(warm, Some(ram)), "c", over).unwrap();
    assert_eq!(
        clone.memory_file,
        Some(MemoryFile {
            path: snap.join(RAM_FILE),
            shared: false
        })
    );
    assert!(!clone.named_ram);

    // A checkpoint of the clone (RAM in the stream): an anonymous backend named `ram`,
    // and so on for a checkpoint of that restore.
    let again = restore_config(snap, &manifest(clone, None), "a", over).unwrap();
    assert_eq!((again.memory_file.is_none(), again.named_ram), (true, true));
    let third = restore_config(snap, &manifest(again, None), "t", over).unwrap();
    assert!(third.named_ram);
}
