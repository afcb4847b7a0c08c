//! The `kobako-vmm` process driven over its Firecracker-compatible API socket (seccomp on),
//! with tiny guests: Firecracker's getting-started sequence, error cases, pause/resume,
//! `--config-file --no-api`, the console socket.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use kobako_vmm::api::http::{MAX_CONNECTIONS, REQUEST_TIMEOUT};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

fn assert_fault(r: (u16, String), needle: &str) {
    assert_eq!(r.0, 400, "body: {}", r.1);
    let v = json(&r.1);
    let msg = v["fault_message"].as_str().expect("fault_message");
    assert!(
        msg.contains(needle),
        "fault_message {msg:?} does not contain {needle:?}"
    );
}

#[test]
fn getting_started_sequence_boots_and_reports_boot_time() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::PVH32, true));
    let rootfs = write(dir.path(), "rootfs.ext4", &[0u8; 4096]);
    let sock = dir.path().join("firecracker.socket");
    let log = dir.path().join("fc.log");
    let metrics = dir.path().join("metrics.json");
    let mut child = spawn_api(&sock, &[]);

    // The requests of Firecracker's getting-started guide, paths changed.
    let r = http(
        &sock,
        "PUT",
        "/logger",
        Some(&format!(
            r#"{{"log_path": "{}", "level": "Info", "show_level": true, "show_log_origin": true}}"#,
            log.display()
        )),
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let r = http(
        &sock,
        "PUT",
        "/metrics",
        Some(&format!(r#"{{"metrics_path": "{}"}}"#, metrics.display())),
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let r = http(
        &sock,
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}}"#,
            kernel.display()
        )),
    );
    assert_eq!(r, (204, String::new()));
    let r = http(
        &sock,
        "PUT",
        "/drives/rootfs",
        Some(&format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}"#,
            rootfs.display()
        )),
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let r = http(
        &sock,
        "PUT",
        "/network-interfaces/net1",
        Some(r#"{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}"#),
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let r = http(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 1024}"#),
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let r = http(&sock, "GET", "/", None);
    assert_eq!(json(&r.1)["state"], "Not started");
    let r = http(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(r.0, 204, "{}", r.1);

    // The guest prints, signals boot complete and resets through the i8042.
    let code = wait_exit(&mut child, 30);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, kobako_vmm::EXIT_GUEST_RESET, "stderr: {err}");
    assert!(
        // The root drive (a virtio-blk device at the first MMIO slot) is on the command line.
        out.contains(
            "PVH OK cmdline=console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw virtio_mmio.device=4K@0xd0000000:5"
        ),
        "stdout: {out:?}"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("Guest-boot-time ="), "log: {log}");
    assert!(log.contains("first KVM_RUN"), "log: {log}");
    // Metrics are flushed on exit, with the boot time.
    let m = std::fs::read_to_string(&metrics).unwrap();
    let last = json(m.lines().last().unwrap());
    assert!(last["boot_time"]["wall_us"].as_u64().unwrap() > 0);
    assert!(last["vcpu"]["exit_io"].as_u64().unwrap() > 10);
    assert!(!sock.exists(), "API socket removed on exit");
}

#[test]
fn bad_input_gets_400_and_vmm_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let junk = write(dir.path(), "junk", b"this is not a kernel, just some bytes");
    let serial = dir.path().join("serial.out");
    let sock = dir.path().join("api.sock");
    let mut child = spawn_api(&sock, &["--id", "errors"]);

    // Pre-boot errors.
    assert_fault(
        http(
            &sock,
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#),
        ),
        "The kernel file cannot be opened",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/boot-source",
            Some(&format!(r#"{{"kernel_image_path": "{}"}}"#, junk.display())),
        ),
        "neither an ELF vmlinux nor a bzImage",
    );
    for (body, needle) in [
        (
            r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
            "number of vCPUs",
        ),
        (
            r#"{"vcpu_count": 33, "mem_size_mib": 128}"#,
            "number of vCPUs",
        ),
        (r#"{"vcpu_count": 1, "mem_size_mib": 0}"#, "memory size"),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 1099511627776}"#,
            "larger than this host's memory",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "foo": 1}"#,
            "unknown field",
        ),
        (r#"{"vcpu_count": 1, "mem_size_mib": "#, "deserializing"),
        (r#"{"vcpu_count": -1, "mem_size_mib": 64}"#, "deserializing"),
    ] {
        assert_fault(http(&sock, "PUT", "/machine-config", Some(body)), needle);
    }
    assert_fault(
        http(
            &sock,
            "PATCH",
            "/machine-config",
            Some(r#"{"vcpu_count": 0}"#),
        ),
        "number of vCPUs",
    );
    assert_fault(
        http(&sock, "PUT", "/actions", Some("not json")),
        "deserializing",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Reboot"}"#),
        ),
        "unknown variant",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        ),
        "No kernel was configured",
    );
    assert_fault(
        http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
        "before starting",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        ),
        "before starting",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/drives/a",
            Some(r#"{"drive_id": "b", "path_on_host": "/dev/null", "is_root_device": false}"#),
        ),
        "does not match",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid": 2, "uds_path": "/tmp/v.sock"}"#),
        ),
        "reserved",
    );
    assert_fault(
        http(&sock, "GET", "/nope", None),
        "Invalid request method and/or path",
    );
    assert_fault(
        http(&sock, "DELETE", "/machine-config", None),
        "Invalid request",
    );

    // Nothing of the above changed the configuration.
    let (st, body) = http(&sock, "GET", "/machine-config", None);
    assert_eq!(st, 200);
    let mc = json(&body);
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );
    assert_eq!(mc["smt"], false);
    let (_, body) = http(&sock, "GET", "/vm/config", None);
    let full = json(&body);
    assert!(full.get("boot-source").is_none(), "{full}");
    assert_eq!(full["drives"], serde_json::json!([]));

    // A good configuration starts.
    assert_eq!(
        http(
            &sock,
            "PUT",
            "/boot-source",
            Some(&format!(
                r#"{{"kernel_image_path": "{}"}}"#,
                kernel.display()
            ))
        )
        .0,
        204
    );
    assert_eq!(
        http(
            &sock,
            "PATCH",
            "/machine-config",
            Some(r#"{"mem_size_mib": 64}"#)
        )
        .0,
        204
    );
    assert_eq!(
        http(
            &sock,
            "PUT",
            "/serial",
            Some(&format!(r#"{{"serial_out_path": "{}"}}"#, serial.display()))
        )
        .0,
        204
    );
    assert_eq!(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .0,
        204
    );
    let (_, body) = http(&sock, "GET", "/", None);
    let info = json(&body);
    assert_eq!(info["state"], "Running");
    assert_eq!(info["id"], "errors");

    // Post-boot errors.
    assert_fault(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        ),
        "already running",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/boot-source",
            Some(&format!(
                r#"{{"kernel_image_path": "{}"}}"#,
                kernel.display()
            )),
        ),
        "after starting",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 64}"#),
        ),
        "after starting",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/drives/x",
            Some(r#"{"drive_id": "x", "path_on_host": "/dev/null", "is_root_device": false}"#),
        ),
        "after starting",
    );

    // Still running and consistent.
    let (_, body) = http(&sock, "GET", "/vm/config", None);
    let full = json(&body);
    assert_eq!(full["machine-config"]["mem_size_mib"], 64);
    assert_eq!(
        full["boot-source"]["kernel_image_path"],
        kernel.display().to_string()
    );
    assert_eq!(http(&sock, "GET", "/version", None).0, 200);
    assert!(child.try_wait().unwrap().is_none(), "VMM exited");

    // The ticker guest signals boot complete first thing.
    let mut resp = (0, String::new());
    assert!(
        wait_for(20, || {
            resp = http(&sock, "GET", "/kobako/boot-time", None);
            resp.0 == 200
        }),
        "{resp:?}"
    );
    let (_, body) = resp;
    let bt = json(&body);
    assert!(bt["wall_us"].as_u64().unwrap() > 0 && bt["cpu_us"].as_u64().unwrap() > 0);

    // Every thread of the VMM runs under a seccomp filter (Seccomp: 2 = filter mode).
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap();
    let mut modes = vec![];
    for t in tasks {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let name = status.lines().next().unwrap().to_string();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap()
            .trim()
            .to_string();
        modes.push((name, mode));
    }
    assert!(modes.len() >= 3, "{modes:?}");
    assert!(modes.iter().all(|(_, m)| m == "2"), "{modes:?}");

    // Pause stops guest progress; resume restarts it.
    let size = || std::fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
    assert!(wait_for(20, || size() > 3), "guest never printed");
    assert_eq!(
        http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    assert_eq!(json(&http(&sock, "GET", "/", None).1)["state"], "Paused");
    let paused_at = size();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(size(), paused_at, "guest progressed while paused");
    assert_eq!(
        http(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );
    assert_eq!(json(&http(&sock, "GET", "/", None).1)["state"], "Running");
    assert!(wait_for(20, || size() > paused_at), "guest did not resume");

    // Ctrl-Alt-Del reaches the i8042 (this guest ignores it and keeps running).
    assert_eq!(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#)
        )
        .0,
        204
    );
    assert!(child.try_wait().unwrap().is_none(), "VMM exited");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn failed_instance_start_leaves_vmm_usable() {
    let dir = tempfile::tempdir().unwrap();
    let good = elf(guests::PVH32, true);
    let kernel = write(dir.path(), "vmlinux", &good);
    let sock = dir.path().join("api.sock");
    let console = dir.path().join("console.sock");
    let mut child = spawn_api(&sock, &[]);
    let body = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(http(&sock, "PUT", "/boot-source", Some(&body)).0, 204);
    let serial = format!(r#"{{"serial_out_path": "unix:{}"}}"#, console.display());
    assert_eq!(http(&sock, "PUT", "/serial", Some(&serial)).0, 204);
    // The kernel turns bad after it was accepted: an ELF whose entry is below 1 MiB.
    let mut bad = good.clone();
    bad[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
    std::fs::write(&kernel, &bad).unwrap();
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_fault(
        http(&sock, "PUT", "/actions", Some(start)),
        "Cannot load the kernel",
    );
    assert_eq!(
        json(&http(&sock, "GET", "/", None).1)["state"],
        "Not started"
    );
    assert!(!console.exists(), "console socket left behind");
    // Fixed, it starts; the guest prints to the console socket and resets.
    std::fs::write(&kernel, &good).unwrap();
    assert_eq!(http(&sock, "PUT", "/actions", Some(start)).0, 204);
    let code = wait_exit(&mut child, 30);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, kobako_vmm::EXIT_GUEST_RESET, "stderr: {err}");
}

#[test]
fn config_file_without_api() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::PVH32, true));
    let cfg = write(
        dir.path(),
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "from-config-file"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}}}}"#,
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
    assert_eq!(out.status.code(), Some(kobako_vmm::EXIT_GUEST_RESET));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PVH OK cmdline=from-config-file\n"));

    // A bad config file is exit code 152; bad flags 153.
    let bad = write(
        dir.path(),
        "bad.json",
        br#"{"machine-config": {"vcpu_count": 0, "mem_size_mib": 64}}"#,
    );
    let st = std::process::Command::new(vmm_bin())
        .args(["--no-api", "--config-file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(kobako_vmm::EXIT_BAD_CONFIGURATION));
    let st = std::process::Command::new(vmm_bin())
        .args(["--no-api"])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(kobako_vmm::EXIT_ARG_PARSING));
}

#[test]
fn triple_fault_process_exit_code_with_seccomp() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TRIPLE, false));
    let cfg = write(
        dir.path(),
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let st = std::process::Command::new(vmm_bin())
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        st.status.code(),
        Some(kobako_vmm::EXIT_TRIPLE_FAULT),
        "stderr: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
fn emulation_failure_process_exit_code_with_seccomp() {
    // On PVM hosts `cmpxchg16b` is an emulation failure: the vCPU thread reads the registers
    // for the report (KVM_GET_REGS, allowed by its filter) and the process exits 82.
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::CX16, false));
    let cfg = write(
        dir.path(),
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let out = std::process::Command::new(vmm_bin())
        .args(["--no-api", "--level", "Error", "--config-file"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if kobako_vmm::arch::cpuid::host_is_pvm() {
        assert_eq!(
            out.status.code(),
            Some(kobako_vmm::EXIT_EMULATION_FAILURE),
            "{err}"
        );
        assert!(
            err.contains("KVM_EXIT_INTERNAL_ERROR (suberror 1: emulation failure)"),
            "{err}"
        );
        assert!(err.contains("at rip 0x10000f"), "{err}");
    } else {
        assert_eq!(
            out.status.code(),
            Some(kobako_vmm::EXIT_GUEST_RESET),
            "{err}"
        );
    }
}

#[test]
fn no_seccomp_switch_leaves_threads_unfiltered() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let sock = dir.path().join("api.sock");
    let mut child = spawn_api(&sock, &["--no-seccomp"]);
    let body = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(http(&sock, "PUT", "/boot-source", Some(&body)).0, 204);
    let serial = r#"{"serial_out_path": "none"}"#;
    assert_eq!(http(&sock, "PUT", "/serial", Some(serial)).0, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(http(&sock, "PUT", "/actions", Some(start)).0, 204);
    for t in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert!(status.contains("Seccomp:\t0"), "{status}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn console_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let sock = dir.path().join("api.sock");
    let console = dir.path().join("console.sock");
    let mut child = spawn_api(&sock, &[]);
    assert_eq!(
        http(
            &sock,
            "PUT",
            "/boot-source",
            Some(&format!(
                r#"{{"kernel_image_path": "{}"}}"#,
                kernel.display()
            ))
        )
        .0,
        204
    );
    assert_eq!(
        http(
            &sock,
            "PUT",
            "/serial",
            Some(&format!(
                r#"{{"serial_out_path": "unix:{}"}}"#,
                console.display()
            ))
        )
        .0,
        204
    );
    assert_eq!(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .0,
        204
    );
    let mut c = UnixStream::connect(&console).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 8];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"........");
    // Input from the client goes to the guest's UART (the ticker ignores it, but the VMM
    // must survive it) and the stream keeps flowing.
    use std::io::Write;
    c.write_all(b"hello\n").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"........");
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn pause_timeout_keeps_state_consistent() {
    // A guest that writes console output as fast as it can, to a stdout pipe nobody reads:
    // once the pipe is full the vCPU blocks in write() and cannot acknowledge a pause.
    let mut fast = guests::TICKER.to_vec();
    let delay = fast
        .windows(5)
        .position(|w| w == [0xb9, 0x20, 0x4e, 0x00, 0x00]) // mov $20000, %ecx
        .expect("delay constant in the ticker guest");
    fast[delay + 1..delay + 5].copy_from_slice(&1u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(&fast, false));
    let sock = dir.path().join("api.sock");
    let mut child = spawn_api(&sock, &[]);
    let body = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(http(&sock, "PUT", "/boot-source", Some(&body)).0, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(http(&sock, "PUT", "/actions", Some(start)).0, 204);
    // Give the guest time to fill the pipe (64 KiB of dots).
    std::thread::sleep(Duration::from_secs(3));
    let r = http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    if r.0 == 204 {
        // The pipe did not fill up in time on this host; nothing to check.
        eprintln!("pipe not full yet; pause succeeded");
        return;
    }
    assert_fault(r, "Timed out waiting for the vCPUs");
    assert_eq!(json(&http(&sock, "GET", "/", None).1)["state"], "Running");
    // Drain the pipe: the vCPU runs again, takes the queued Pause and Resume, keeps running.
    let mut out = child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut total = 0usize;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    assert_eq!(
        http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    assert_eq!(json(&http(&sock, "GET", "/", None).1)["state"], "Paused");
    assert_eq!(
        http(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(drain.join().unwrap() >= 4096);
}

#[test]
fn config_file_with_api_starts_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let cfg = write(
        dir.path(),
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "machine-config": {{"vcpu_count": 2, "mem_size_mib": 96}},
                "serial": {{"serial_out_path": "none"}},
                "balloon": null, "mmds-config": null}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let sock = dir.path().join("api.sock");
    let cfg_arg = cfg.display().to_string();
    let mut child = spawn_api(&sock, &["--config-file", &cfg_arg]);
    assert_eq!(json(&http(&sock, "GET", "/", None).1)["state"], "Running");
    let full = json(&http(&sock, "GET", "/vm/config", None).1);
    assert_eq!(full["machine-config"]["vcpu_count"], 2);
    assert_eq!(full["machine-config"]["mem_size_mib"], 96);
    assert_fault(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        ),
        "already running",
    );
    assert!(child.try_wait().unwrap().is_none());

    // Sections kobako-vmm does not implement are refused unless null.
    let bad = write(
        dir.path(),
        "hotplug.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "memory-hotplug": {{"total_size_mib": 1024}}}}"#,
            kernel.display()
        )
        .as_bytes(),
    );
    let out = std::process::Command::new(vmm_bin())
        .args(["--no-api", "--config-file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(kobako_vmm::EXIT_BAD_CONFIGURATION));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("\"memory-hotplug\" section is not supported"));
}

#[test]
fn expect_100_continue_and_keep_alive() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let _child = spawn_api(&sock, &[]);
    let s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let body = r#"{"vcpu_count": 2, "mem_size_mib": 256}"#;
    // curl sends bodies over 1 KiB like this: headers first, body after "100 Continue".
    write!(
        w,
        "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "\r\n");
    w.write_all(body.as_bytes()).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 204 No Content\r\n");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    // Same connection, next request.
    w.write_all(b"GET /machine-config HTTP/1.1\r\n\r\n")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK\r\n");
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut buf = vec![0u8; len];
    std::io::Read::read_exact(&mut r, &mut buf).unwrap();
    let mc = json(std::str::from_utf8(&buf).unwrap());
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(2), Some(256))
    );
}

/// Resident set of a process, from /proc/PID/status (KiB).
fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sends raw bytes on a fresh connection and returns what comes back until EOF (or a reset:
/// a server that answers and closes before reading everything makes the next read fail).
fn raw_exchange(sock: &std::path::Path, bytes: &[u8]) -> String {
    use std::io::Write;
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_alive_and_answering(child: &mut Vmm, sock: &std::path::Path) {
    assert_eq!(child.try_wait().unwrap(), None, "the VMM exited");
    let r = http(sock, "GET", "/", None);
    assert_eq!(r.0, 200, "{}", r.1);
    let r = http(sock, "GET", "/machine-config", None);
    assert_eq!(r.0, 200, "{}", r.1);
}

#[test]
fn long_request_echoed_in_errors_does_not_kill_the_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = spawn_api(&sock, &[]);
    for len in [300, 4_000, 24_000, 50_000] {
        let long = "a".repeat(len);
        // The event loop echoes the path it could not open; serde echoes the bad string.
        for (path, body) in [
            (
                "/logger",
                format!(r#"{{"log_path": "/{long}", "level": "Warning"}}"#),
            ),
            (
                "/machine-config",
                format!(r#"{{"vcpu_count": "{long}", "mem_size_mib": 128}}"#),
            ),
            (
                "/metrics",
                format!(r#"{{"metrics_path": "/nonexistent/{long}"}}"#),
            ),
        ] {
            if body.len() > 51_200 {
                continue;
            }
            let r = http(&sock, "PUT", path, Some(&body));
            assert_eq!(
                r.0,
                400,
                "PUT {path} with a {len}-char value: {}",
                &r.1[..r.1.len().min(300)]
            );
            let msg = json(&r.1)["fault_message"].as_str().unwrap().to_string();
            assert!(
                msg.chars().count() <= 640,
                "PUT {path}: a {}-char fault_message echoes the request",
                msg.len()
            );
            assert_eq!(
                child.try_wait().unwrap(),
                None,
                "the VMM exited after PUT {path} ({len} chars)"
            );
        }
        // A long path: echoed in "Invalid request method and/or path" or refused as too long.
        let resp = raw_exchange(
            &sock,
            format!("GET /{long} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.1 414"),
            "{}",
            &resp[..resp.len().min(300)]
        );
        assert!(
            resp.len() <= 1_000,
            "a {}-byte answer echoes the path",
            resp.len()
        );
        assert_eq!(
            child.try_wait().unwrap(),
            None,
            "the VMM exited after a {len}-char path"
        );
    }
    assert_alive_and_answering(&mut child, &sock);
}

/// The API's answer to a client beyond its connection limit: 503 and a fault_message saying
/// why, then the close.
fn assert_busy(resp: &str) {
    assert!(resp.starts_with("HTTP/1.1 503 "), "{resp:?}");
    assert!(resp.contains("Connection: close\r\n"), "{resp:?}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let msg = json(body)["fault_message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains(&format!("at most {MAX_CONNECTIONS}")),
        "{resp:?}"
    );
}

#[test]
fn the_connection_limit_counts_only_connections_their_clients_hold() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = spawn_api(&sock, &[]);
    // Clients that connect and close at once (as spawn_api's probe did) hold no slot.
    for _ in 0..2 * MAX_CONNECTIONS {
        drop(UnixStream::connect(&sock).unwrap());
    }
    let mut held: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    // Exactly MAX_CONNECTIONS held: the next client is refused, every time.
    for _ in 0..3 {
        assert_busy(&raw_exchange(
            &sock,
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        ));
    }
    // A held connection is still served.
    let mut first = held.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    first.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp:?}");
    // Its slot (closed by the server after that answer) is free for the very next client,
    // then the limit holds again.
    drop(first);
    held.push(UnixStream::connect(&sock).unwrap());
    assert_busy(&raw_exchange(
        &sock,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ));
    // One held connection closed by its client: the next client is answered at once.
    drop(held.pop());
    let r = http(&sock, "GET", "/", None);
    assert_eq!(r.0, 200, "{}", r.1);
    drop(held);
    assert_alive_and_answering(&mut child, &sock);
}

#[test]
fn a_request_stalled_midway_is_answered_408_after_the_request_timeout() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = spawn_api(&sock, &[]);
    // An idle keep-alive connection (no request under way) is not timed.
    let mut idle = UnixStream::connect(&sock).unwrap();
    let mut slow = UnixStream::connect(&sock).unwrap();
    slow.set_read_timeout(Some(REQUEST_TIMEOUT + Duration::from_secs(20)))
        .unwrap();
    let t0 = std::time::Instant::now();
    slow.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"vcpu")
        .unwrap();
    let mut resp = String::new();
    slow.read_to_string(&mut resp).unwrap();
    let took = t0.elapsed();
    assert!(resp.starts_with("HTTP/1.1 408 "), "{resp:?}");
    assert!(resp.contains("Connection: close\r\n"), "{resp:?}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(
        json(body)["fault_message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("within {} s", REQUEST_TIMEOUT.as_secs()))),
        "{resp:?}"
    );
    // Timed from its first byte: not before REQUEST_TIMEOUT, and not much after.
    assert!(took >= REQUEST_TIMEOUT, "{took:?}");
    assert!(took < REQUEST_TIMEOUT + Duration::from_secs(5), "{took:?}");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.write_all(b"GET /machine-config HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    idle.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp:?}");
    // The stalled request was never applied.
    assert!(resp.contains("\"vcpu_count\":1"), "{resp:?}");
    assert_alive_and_answering(&mut child, &sock);
}

#[test]
fn two_thousand_held_api_connections_do_not_kill_the_vmm() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = spawn_api(&sock, &[]);
    let pid = child.id();
    let rss_before = vm_rss_kib(pid);
    let mut held = Vec::new();
    for i in 0..2000 {
        let mut s = UnixStream::connect(&sock).unwrap();
        // Half of them start a request and never finish it.
        if i % 2 == 0 {
            let _ = s.write_all(
                b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40000\r\n\r\n{\"vcpu_count\": ",
            );
        }
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "the VMM exited with 2000 connections open"
    );
    // While they are held, a new client is told the API is busy instead of waiting forever
    // (spawn_api's probe connection, closed before the flood, does not count).
    assert_busy(&raw_exchange(
        &sock,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ));
    let rss_flood = vm_rss_kib(pid);
    // Once they are closed, the very next client is answered: no retry needed.
    drop(held);
    let r = http(&sock, "GET", "/", None);
    assert_eq!(r.0, 200, "{}", r.1);
    assert_alive_and_answering(&mut child, &sock);
    let rss_after = vm_rss_kib(pid);
    eprintln!("VMM RSS: before {rss_before} KiB, flood {rss_flood} KiB, after {rss_after} KiB");
    assert!(
        rss_flood < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_flood} KiB"
    );
}

#[test]
fn unsupported_options_are_refused_at_put_and_harmless_ones_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let metrics = dir.path().join("metrics.json");
    let mut child = spawn_api(&sock, &["--id", "opts"]);
    let config = || json(&http(&sock, "GET", "/vm/config", None).1);
    let before = config();

    // Snapshot load options first (a load is allowed only before any configuration). Each
    // is refused before the (missing) files are read; the VMM stays "Not started".
    let load = |extra: &str| {
        http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(&format!(
                r#"{{"snapshot_path": "/nonexistent/state", "mem_backend": {{"backend_type": "File", "backend_path": "/nonexistent/mem"}}{extra}}}"#
            )),
        )
    };
    assert_fault(
        load(r#", "clock_realtime": true"#),
        "clock_realtime is not supported",
    );
    assert_fault(
        load(r#", "huge_pages": "2M""#),
        "huge_pages \"2M\" on snapshot load is not supported",
    );
    assert_fault(load(r#", "huge_pages": "Transparent""#), "is not supported");
    assert_fault(load(r#", "huge_pages": "Bogus""#), "unknown variant");
    // Harmless ones are accepted: the load gets as far as the missing state file.
    for extra in [
        r#", "clock_realtime": false, "huge_pages": "Snapshot""#,
        r#", "huge_pages": "None""#,
        r#", "track_dirty_pages": true, "enable_diff_snapshots": true"#,
    ] {
        let r = load(extra);
        assert_eq!(r.0, 400);
        assert!(r.1.contains("/nonexistent/state"), "{extra}: {}", r.1);
    }
    assert_eq!(
        json(&http(&sock, "GET", "/", None).1)["state"],
        "Not started"
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/snapshot/create",
            Some(
                r#"{"snapshot_type": "Diff", "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#,
            ),
        ),
        "Diff snapshots are not supported",
    );

    // cpu_template: only Firecracker's names parse, and only "None" is accepted.
    let mc =
        |t: &str| format!(r#"{{"vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "{t}"}}"#);
    assert_fault(
        http(&sock, "PUT", "/machine-config", Some(&mc("Bogus"))),
        "unknown variant",
    );
    for t in ["T2", "C3", "T2S", "T2CL", "T2A", "V1N1"] {
        assert_fault(
            http(&sock, "PUT", "/machine-config", Some(&mc(t))),
            &format!("CPU template {t} is not supported"),
        );
        assert_fault(
            http(
                &sock,
                "PATCH",
                "/machine-config",
                Some(&format!(r#"{{"cpu_template": "{t}"}}"#)),
            ),
            "is not supported",
        );
    }
    assert_eq!(
        config(),
        before,
        "a refused template changed the configuration"
    );
    assert_eq!(
        http(&sock, "PUT", "/machine-config", Some(&mc("None"))).0,
        204
    );
    let m = json(&http(&sock, "GET", "/machine-config", None).1);
    assert_eq!(
        (m["vcpu_count"].as_u64(), m.get("cpu_template")),
        (Some(2), None)
    );

    // vhost-user drives are refused at PUT, not at InstanceStart; so are unknown cache/io modes.
    let img = write(dir.path(), "disk.img", &[0u8; 4096]);
    for (body, needle) in [
        (
            r#"{"drive_id": "vu", "is_root_device": false, "socket": "/run/vhost.sock"}"#
                .to_string(),
            "vhost-user block devices (socket) are not supported",
        ),
        (
            format!(
                r#"{{"drive_id": "vu", "is_root_device": false, "path_on_host": "{}", "socket": "/run/vhost.sock"}}"#,
                img.display()
            ),
            "not both",
        ),
        (
            format!(
                r#"{{"drive_id": "vu", "is_root_device": false, "path_on_host": "{}", "cache_type": "Bogus"}}"#,
                img.display()
            ),
            "cache_type",
        ),
        (
            format!(
                r#"{{"drive_id": "vu", "is_root_device": false, "path_on_host": "{}", "io_engine": "Bogus"}}"#,
                img.display()
            ),
            "io_engine",
        ),
    ] {
        assert_fault(http(&sock, "PUT", "/drives/vu", Some(&body)), needle);
    }
    assert!(
        config()
            .get("drives")
            .is_none_or(|d| d.as_array().unwrap().is_empty()),
        "{}",
        config()
    );
    let r = http(
        &sock,
        "PUT",
        "/drives/vu",
        Some(&format!(
            r#"{{"drive_id": "vu", "is_root_device": false, "path_on_host": "{}", "cache_type": "Writeback", "io_engine": "Async"}}"#,
            img.display()
        )),
    );
    assert_eq!(r.0, 204, "{}", r.1);

    // Metrics: emit_id and properties are written on every line.
    let r = http(
        &sock,
        "PUT",
        "/metrics",
        Some(&format!(
            r#"{{"metrics_path": "{}", "emit_id": true, "properties": {{"lab": "l1", "node": "n"}}}}"#,
            metrics.display()
        )),
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let r = http(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let line = json(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    );
    assert_eq!(line["id"], "opts");
    assert_eq!(
        line["properties"],
        serde_json::json!({"lab": "l1", "node": "n"})
    );

    // Methods a path does not take and Firecracker endpoints not implemented: 400 (the only
    // error status Firecracker's API description declares), saying which.
    assert_fault(
        http(&sock, "DELETE", "/machine-config", None),
        "This path takes GET, PUT or PATCH.",
    );
    assert_fault(
        http(
            &sock,
            "PUT",
            "/hotplug/memory",
            Some(r#"{"total_size_mib": 1024}"#),
        ),
        "memory hotplug is not supported by kobako-vmm",
    );
    assert_alive_and_answering(&mut child, &sock);
}

#[test]
fn client_that_never_reads_its_answers_does_not_block_the_api() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = spawn_api(&sock, &[]);
    // Pipelined requests whose answers (~3 MB) fill the socket buffers: the client never reads.
    let mut stuck = UnixStream::connect(&sock).unwrap();
    stuck.set_nonblocking(true).unwrap();
    let req = b"GET /machine-config HTTP/1.1\r\n\r\n".repeat(20_000);
    let mut sent = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while sent < req.len() && std::time::Instant::now() < deadline {
        match stuck.write(&req[sent..]) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    // Another client is still answered, at once.
    let t = std::time::Instant::now();
    assert_alive_and_answering(&mut child, &sock);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    eprintln!(
        "sent {sent} bytes of pipelined requests; RSS {} KiB",
        vm_rss_kib(child.id())
    );
    drop(stuck);
    assert_alive_and_answering(&mut child, &sock);
}
