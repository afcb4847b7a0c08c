//! Virtio devices reached by a guest through real KVM exits: a tiny guest driver
//! (`guests/virtio.S`) negotiates with the virtio-mmio transport of the entropy device, sets up
//! a queue in its RAM, notifies through the QueueNotify register (a KVM ioeventfd), and sees
//! the buffer filled by the device on the VMM's event loop and InterruptStatus raised.

mod common;

use common::*;
use kobako_vmm::builder::ExtraDevices;
use kobako_vmm::config::{BootSource, EntropyConfig, MachineConfig, SerialConfig, VmResources};

fn virtio_guest(mem: u64, mmio: u64) -> Vec<u8> {
    let mut g = guests::VIRTIO.to_vec();
    g[8..16].copy_from_slice(&mem.to_le_bytes());
    g[16..24].copy_from_slice(&mmio.to_le_bytes());
    g
}

#[test]
fn guest_drives_virtio_rng_through_kvm_exits() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(
        dir.path(),
        "kernel",
        &elf(&virtio_guest(0x30_0000, 0xd000_0000), false),
    );
    let serial = dir.path().join("serial.log");
    let mut res = VmResources::default();
    res.set_machine_config(MachineConfig {
        vcpu_count: 1,
        mem_size_mib: 64,
        ..Default::default()
    })
    .unwrap();
    res.set_boot_source(BootSource {
        kernel_image_path: kernel,
        initrd_path: None,
        boot_args: Some("console=ttyS0".into()),
    })
    .unwrap();
    res.entropy = Some(EntropyConfig::default());
    res.serial = Some(SerialConfig {
        serial_out_path: Some(serial.clone()),
        rate_limiter: None,
    });
    let code = kobako_vmm::run_vm(res, ExtraDevices::default(), false, "virtio");
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(out, "virtio-mmio v2 entropy device\nVIRTIO RNG OK\n");
    assert_eq!(code, kobako_vmm::EXIT_GUEST_RESET);
}

#[test]
fn virtio_rng_in_the_vmm_process_with_seccomp() {
    // The same guest in a `kobako-vmm` process from a config file (Firecracker's `entropy`
    // section), seccomp on: the event loop's device work stays inside its allow-list.
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(
        dir.path(),
        "vmlinux",
        &elf(&virtio_guest(0x30_0000, 0xd000_0000), false),
    );
    let cfg = write(
        dir.path(),
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
                "entropy": {{"rate_limiter": {{"bandwidth": {{"size": 4096, "refill_time": 100}}}}}}}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let out = std::process::Command::new(vmm_bin())
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(kobako_vmm::EXIT_GUEST_RESET),
        "stdout {stdout} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("VIRTIO RNG OK\n"), "{stdout}");
}

#[test]
fn drive_patch_after_boot_swaps_image_and_limiter() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let disk1 = write(dir.path(), "a.raw", &vec![1u8; 1 << 20]);
    let disk2 = write(dir.path(), "b.raw", &vec![2u8; 2 << 20]);
    let _vmm = spawn_api(&sock, &["--id", "patch"]);
    let ok = |r: (u16, String)| assert_eq!(r.0, 204, "{}", r.1);
    ok(http(
        &sock,
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path": "{}"}}"#,
            kernel.display()
        )),
    ));
    ok(http(
        &sock,
        "PUT",
        "/serial",
        Some(r#"{"serial_out_path": "none"}"#),
    ));
    ok(http(
        &sock,
        "PUT",
        "/drives/data",
        Some(&format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}"#,
            disk1.display()
        )),
    ));
    ok(http(&sock, "PUT", "/entropy", Some("{}")));
    // PATCH before boot is refused, as in Firecracker.
    assert_eq!(
        http(
            &sock,
            "PATCH",
            "/drives/data",
            Some(r#"{"drive_id": "data"}"#)
        )
        .0,
        400
    );
    ok(http(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    ));
    ok(http(
        &sock,
        "PATCH",
        "/drives/data",
        Some(&format!(
            r#"{{"drive_id": "data", "path_on_host": "{}",
                 "rate_limiter": {{"bandwidth": {{"size": 1048576, "refill_time": 1000}}}}}}"#,
            disk2.display()
        )),
    ));
    let r = http(
        &sock,
        "PATCH",
        "/drives/data",
        Some(r#"{"drive_id": "data", "path_on_host": "/nonexistent/disk"}"#),
    );
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(r.1.contains("/nonexistent/disk"), "{}", r.1);
    let r = http(
        &sock,
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id": "nope"}"#),
    );
    assert_eq!(r.0, 400, "{}", r.1);
    let (_, body) = http(&sock, "GET", "/vm/config", None);
    let full: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        full["drives"][0]["path_on_host"],
        disk2.display().to_string()
    );
    assert_eq!(
        full["drives"][0]["rate_limiter"]["bandwidth"]["size"],
        1048576
    );
    assert!(full["entropy"].is_object(), "{full}");
    // Entropy is pre-boot only.
    assert_eq!(http(&sock, "PUT", "/entropy", Some("{}")).0, 400);
}

#[test]
fn vsock_host_side_in_the_vmm_process_with_seccomp() {
    // `PUT /vsock` wired: the VMM (seccomp on) listens on uds_path, accepts host connections
    // and reads their CONNECT line on its event loop. The ticker guest has no vsock driver, so
    // the connection waits for the guest (no `OK`); the host gives up, a garbage line is
    // refused, and the VMM keeps running inside its filters throughout.
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let sock = dir.path().join("api.sock");
    let uds = dir.path().join("v.sock");
    let mut child = spawn_api(&sock, &[]);
    let body = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(http(&sock, "PUT", "/boot-source", Some(&body)).0, 204);
    let v = format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display());
    assert_eq!(http(&sock, "PUT", "/vsock", Some(&v)).0, 204);
    assert!(
        !uds.exists(),
        "the device (and its socket) exists from InstanceStart on"
    );
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(http(&sock, "PUT", "/actions", Some(start)).0, 204);
    let (_, cfg) = http(&sock, "GET", "/vm/config", None);
    assert!(cfg.contains("\"guest_cid\":3"), "{cfg}");

    let mut waiting = std::os::unix::net::UnixStream::connect(&uds).unwrap();
    waiting.write_all(b"CONNECT 52\n").unwrap();
    waiting
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 16];
    let e = waiting.read(&mut b).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::WouldBlock,
        "no OK without a guest driver"
    );
    let mut junk = std::os::unix::net::UnixStream::connect(&uds).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    junk.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // Closed (a reset when the VMM closed it with our unread "\r\n" still queued).
    match junk.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        r => panic!("a garbage line must close the connection: {r:?}"),
    }
    drop(waiting);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(child.try_wait().unwrap().is_none(), "VMM still running");
    assert_eq!(http(&sock, "GET", "/", None).0, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}
