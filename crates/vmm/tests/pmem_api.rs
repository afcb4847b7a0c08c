//! virtio-pmem over the API of a real `kobako-vmm` process (seccomp on): `PUT /pmem/{id}`
//! and `PATCH /pmem/{id}` with Firecracker's bodies, every refusal with its message and the
//! configuration unchanged after it, the config file's `pmem` list, and a tiny guest
//! (`guests/pmem.S`) that reads and writes the backing file through its KVM memory slot and
//! sends a FLUSH the device answers (read-write and read-only mappings, a second device in the
//! next region). Snapshots of a VM with a pmem device keep the file's path; a load whose file
//! changed size is refused. A Linux guest uses /dev/pmem0 in `linux_pvm.rs`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

fn fault(r: (u16, String), needle: &str) -> String {
    assert_eq!(r.0, 400, "{}", r.1);
    let v: Value = serde_json::from_str(&r.1).unwrap();
    let m = v["fault_message"].as_str().unwrap().to_string();
    assert!(m.contains(needle), "{m:?} lacks {needle:?}");
    m
}

fn get(sock: &Path, path: &str) -> Value {
    let (st, body) = http(sock, "GET", path, None);
    assert_eq!(st, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A file of `len` bytes (sparse) with `head` at offset 0.
fn backing(dir: &Path, name: &str, len: u64, head: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, head).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len)
        .unwrap();
    p
}

fn put(sock: &Path, id: &str, body: &Value) -> (u16, String) {
    http(sock, "PUT", &format!("/pmem/{id}"), Some(&body.to_string()))
}

#[test]
fn pmem_configuration_refusals_and_live_updates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = write(d, "vmlinux", &elf(guests::TICKER, false));
    let sock = d.join("api.sock");
    let _vmm = spawn_api(&sock, &["--id", "pmem"]);
    let mc = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;
    assert_eq!(http(&sock, "PUT", "/machine-config", Some(mc)).0, 204);
    let before = get(&sock, "/vm/config");
    assert!(before.get("pmem").is_none(), "{before}");

    // Every refusal names the problem and the fix, and changes nothing.
    let p0 = backing(d, "p0.img", 2 * MIB, b"");
    let missing = d.join("nope.img");
    let odd = backing(d, "odd.img", 3 * MIB, b"");
    let empty = backing(d, "empty.img", 0, b"");
    let cases: Vec<(String, Value, &str)> = vec![
        (
            "p0".into(),
            json!({"id": "p0", "path_on_host": missing}),
            "truncate -s 2M",
        ),
        (
            "p0".into(),
            json!({"id": "p0", "path_on_host": d}),
            "is not a regular file (it is a directory)",
        ),
        (
            "p0".into(),
            json!({"id": "p0", "path_on_host": "/dev/null"}),
            "is not a regular file (it is a character device)",
        ),
        (
            "p0".into(),
            json!({"id": "p0", "path_on_host": empty}),
            "is empty: its size must be a non-zero multiple of 2 MiB",
        ),
        (
            "p0".into(),
            json!({"id": "p0", "path_on_host": odd}),
            "not a multiple of 2 MiB (2097152 bytes): the guest maps pmem in 2 MiB pages; grow it with `truncate -s 4M",
        ),
        (
            "p1".into(),
            json!({"id": "p0", "path_on_host": p0}),
            "does not match the id from the body",
        ),
        (
            "p.x".into(),
            json!({"id": "p.x", "path_on_host": p0}),
            "must be 1-64 characters of [A-Za-z0-9_-]",
        ),
        ("p0".into(), json!({"id": "p0"}), "missing field `path_on_host`"),
        (
            "p0".into(),
            json!({"id": "p0", "path_on_host": p0, "size_mib": 2}),
            "unknown field `size_mib`",
        ),
        (
            "p0".into(),
            json!({"id": "p0", "path_on_host": p0, "read_only": "yes"}),
            "invalid type",
        ),
    ];
    for (id, body, needle) in &cases {
        fault(put(&sock, id, body), needle);
        assert_eq!(get(&sock, "/vm/config"), before, "changed by {body}");
    }
    fault(http(&sock, "PUT", "/pmem", Some("{}")), "Missing id");
    fault(
        http(&sock, "GET", "/pmem/p0", None),
        "This path takes PUT or PATCH.",
    );
    // A file the VMM may not write: read-only works, read-write says how to fix it (not
    // checkable as root, whom permissions do not stop).
    let ro_file = backing(d, "ro.img", 2 * MIB, b"");
    let mut perms = std::fs::metadata(&ro_file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&ro_file, perms).unwrap();
    if !running_as_root() {
        fault(
            put(&sock, "ro", &json!({"id": "ro", "path_on_host": ro_file})),
            "set \"read_only\": true to map it read-only",
        );
    }
    assert_eq!(get(&sock, "/vm/config"), before);

    // Accepted: Firecracker's defaults in GET /vm/config; the same id updates the device.
    assert_eq!(
        put(&sock, "p0", &json!({"id": "p0", "path_on_host": p0})).0,
        204
    );
    assert_eq!(
        get(&sock, "/vm/config")["pmem"],
        json!([{"id": "p0", "path_on_host": p0, "root_device": false, "read_only": false}])
    );
    let p0_root = json!({"id": "p0", "path_on_host": p0, "root_device": true, "read_only": false});
    assert_eq!(put(&sock, "p0", &p0_root).0, 204);
    assert_eq!(get(&sock, "/vm/config")["pmem"], json!([p0_root]));
    assert_eq!(
        put(
            &sock,
            "ro",
            &json!({"id": "ro", "path_on_host": ro_file, "read_only": true})
        )
        .0,
        204
    );
    let configured = get(&sock, "/vm/config");
    // One root device among pmem devices and drives; one file per device.
    let disk = backing(d, "disk.img", MIB, b"");
    let drive = |root: bool| {
        json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": root}).to_string()
    };
    fault(
        http(&sock, "PUT", "/drives/rootfs", Some(&drive(true))),
        "pmem device \"p0\" is the root device already",
    );
    let p1 = backing(d, "p1.img", 2 * MIB, b"");
    fault(
        put(
            &sock,
            "p1",
            &json!({"id": "p1", "path_on_host": p1, "root_device": true}),
        ),
        "A root device already exists: pmem device \"p0\" is the root device",
    );
    fault(
        put(&sock, "p1", &json!({"id": "p1", "path_on_host": p0})),
        "is already used by pmem device \"p0\"",
    );
    assert_eq!(get(&sock, "/vm/config"), configured);
    // Up to 8 devices.
    for i in 2..8 {
        let id = format!("p{i}");
        let f = backing(d, &format!("{id}.img"), 2 * MIB, b"");
        assert_eq!(
            put(&sock, &id, &json!({"id": id, "path_on_host": f})).0,
            204
        );
    }
    let full = get(&sock, "/vm/config");
    assert_eq!(full["pmem"].as_array().unwrap().len(), 8);
    fault(
        put(&sock, "p1", &json!({"id": "p1", "path_on_host": p1})),
        "Too many pmem devices: at most 8",
    );
    // Post-boot only.
    fault(
        http(
            &sock,
            "PATCH",
            "/pmem/p0",
            Some(r#"{"id": "p0", "rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#),
        ),
        "not supported before starting the microVM: PATCH /pmem",
    );
    assert_eq!(get(&sock, "/vm/config"), full);

    // A backing file that changed after PUT: InstanceStart says so and the VMM stays usable.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p0)
        .unwrap()
        .set_len(3 * MIB)
        .unwrap();
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(http(&sock, "PUT", "/boot-source", Some(&boot)).0, 204);
    fault(
        http(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
        ),
        "pmem device \"p0\": The pmem backing file",
    );
    assert_eq!(get(&sock, "/")["state"], "Not started");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p0)
        .unwrap()
        .set_len(2 * MIB)
        .unwrap();
    instance_start(&sock);
    assert!(wait_for(10, || get(&sock, "/")["state"] == "Running"));

    // After boot: PUT refused as the other pre-boot resources; PATCH reaches the device.
    fault(
        put(&sock, "p0", &json!({"id": "p0", "path_on_host": p0})),
        "not supported after starting the microVM: PUT /pmem",
    );
    let limiter = json!({"ops": {"size": 10, "refill_time": 100}});
    assert_eq!(
        http(
            &sock,
            "PATCH",
            "/pmem/p0",
            Some(&json!({"id": "p0", "rate_limiter": limiter}).to_string())
        )
        .0,
        204
    );
    let after = get(&sock, "/vm/config");
    assert_eq!(after["pmem"][0]["rate_limiter"], limiter);
    fault(
        http(&sock, "PATCH", "/pmem/nosuch", Some(r#"{"id": "nosuch"}"#)),
        "No pmem device \"nosuch\"",
    );
    fault(
        http(&sock, "PATCH", "/pmem/p0", Some(r#"{"id": "p1"}"#)),
        "does not match",
    );
    assert_eq!(get(&sock, "/vm/config"), after);
    assert_eq!(get(&sock, "/")["state"], "Running");
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn config_file_pmem_list() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = write(d, "vmlinux", &elf(guests::TICKER, false));
    let p = backing(d, "p.img", 2 * MIB, b"");
    let run = |pmem: Value| {
        let cfg = write(
            d,
            "vm.json",
            json!({
                "boot-source": {"kernel_image_path": kernel},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
                "pmem": pmem,
            })
            .to_string()
            .as_bytes(),
        );
        std::process::Command::new(vmm_bin())
            .args(["--no-api", "--config-file"])
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(json!([{"id": "a", "path_on_host": p}, {"id": "a", "path_on_host": p}]));
    assert_eq!(out.status.code(), Some(152));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("appears more than once"), "{err}");
    let out = run(json!([{"id": "a", "path_on_host": d.join("nope")}]));
    assert_eq!(out.status.code(), Some(152));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncate -s 2M"));

    // Accepted, and GET /vm/config gives it back.
    let cfg = write(
        d,
        "ok.json",
        json!({
            "boot-source": {"kernel_image_path": kernel},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
            "pmem": [{"id": "a", "path_on_host": p, "read_only": true}],
        })
        .to_string()
        .as_bytes(),
    );
    let sock = d.join("api.sock");
    let _vmm = spawn_api(&sock, &["--config-file", cfg.to_str().unwrap()]);
    assert!(wait_for(10, || get(&sock, "/")["state"] == "Running"));
    assert_eq!(
        get(&sock, "/vm/config")["pmem"],
        json!([{"id": "a", "path_on_host": p, "root_device": false, "read_only": true}])
    );
}

/// The pmem guest, talking to the device at `mmio`, expecting `marker` at offset 0.
fn pmem_guest(mmio: u64, marker: u64) -> Vec<u8> {
    let mut g = guests::PMEM.to_vec();
    g[8..16].copy_from_slice(&0x30_0000u64.to_le_bytes());
    g[16..24].copy_from_slice(&mmio.to_le_bytes());
    g[24..32].copy_from_slice(&marker.to_le_bytes());
    g
}

/// Runs the pmem guest in a `kobako-vmm` process (config file, seccomp on) with `pmem`
/// devices; returns (exit code, console, log).
fn run_guest(d: &Path, guest: &[u8], pmem: Value) -> (Option<i32>, String, String) {
    let kernel = write(d, "pmem-guest", &elf(guest, false));
    let log = d.join("vmm.log");
    let _ = std::fs::remove_file(&log);
    let cfg = write(
        d,
        "guest.json",
        json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
            "pmem": pmem,
        })
        .to_string()
        .as_bytes(),
    );
    let out = std::process::Command::new(vmm_bin())
        .args(["--no-api", "--level", "Info", "--log-path"])
        .arg(&log)
        .arg("--config-file")
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let log =
        std::fs::read_to_string(&log).unwrap_or_default() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), console, log)
}

fn qword_at(p: &Path, off: usize) -> u64 {
    let f = std::fs::read(p).unwrap();
    u64::from_le_bytes(f[off..off + 8].try_into().unwrap())
}

#[test]
fn guest_reads_writes_and_flushes_the_file_through_its_memory_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let marker: u64 = 0x4b4f_4241_4b4f_504d; // "MPOKABOK"
    let p = backing(d, "rw.img", 2 * MIB, &marker.to_le_bytes());
    let (code, console, log) = run_guest(
        d,
        &pmem_guest(0xd000_0000, marker),
        json!([{"id": "rw", "path_on_host": p}]),
    );
    assert_eq!(
        console, "virtio-pmem config ok\npmem read ok\npmem write kept\nPMEM FLUSH OK\n",
        "log:\n{log}"
    );
    assert_eq!(code, Some(kobako_vmm::EXIT_GUEST_RESET), "{log}");
    // The guest's store went through the KVM slot into the file.
    assert_eq!(qword_at(&p, 4096), !marker);
    assert_eq!(qword_at(&p, 0), marker);
    assert!(
        log.contains("pmem device \"rw\": 2 MiB at guest physical 0x100000000 (KVM slot 1)"),
        "{log}"
    );
}

#[test]
fn read_only_pmem_keeps_the_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let marker: u64 = 0x0123_4567_89ab_cdef;
    let p = backing(d, "ro.img", 2 * MIB, &marker.to_le_bytes());
    let before = std::fs::read(&p).unwrap();
    let (code, console, log) = run_guest(
        d,
        &pmem_guest(0xd000_0000, marker),
        json!([{"id": "ro", "path_on_host": p, "read_only": true}]),
    );
    assert_eq!(
        console, "virtio-pmem config ok\npmem read ok\npmem write dropped\nPMEM FLUSH OK\n",
        "log:\n{log}"
    );
    assert_eq!(code, Some(kobako_vmm::EXIT_GUEST_RESET), "{log}");
    assert!(std::fs::read(&p).unwrap() == before, "file changed");
    assert!(log.contains("read-only"), "{log}");
}

#[test]
fn second_pmem_device_is_in_the_next_region() {
    // Two devices: "a" (4 MiB) at 4 GiB, "b" at 4 GiB + 128 MiB, behind the second window.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ma, mb): (u64, u64) = (0xaaaa_aaaa_0000_0001, 0xbbbb_bbbb_0000_0002);
    let a = backing(d, "a.img", 4 * MIB, &ma.to_le_bytes());
    let b = backing(d, "b.img", 2 * MIB, &mb.to_le_bytes());
    let (code, console, log) = run_guest(
        d,
        &pmem_guest(0xd000_1000, mb),
        json!([{"id": "a", "path_on_host": a}, {"id": "b", "path_on_host": b}]),
    );
    assert_eq!(
        console, "virtio-pmem config ok\npmem read ok\npmem write kept\nPMEM FLUSH OK\n",
        "log:\n{log}"
    );
    assert_eq!(code, Some(kobako_vmm::EXIT_GUEST_RESET));
    assert_eq!(qword_at(&b, 4096), !mb);
    assert_eq!(qword_at(&a, 4096), 0, "the other device's file untouched");
    assert!(log.contains("pmem device \"a\": 4 MiB at guest physical 0x100000000 (KVM slot 1)"));
    assert!(log.contains("pmem device \"b\": 2 MiB at guest physical 0x108000000 (KVM slot 2)"));
}

#[test]
fn snapshot_keeps_the_pmem_file_and_refuses_a_resized_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = write(d, "vmlinux", &elf(guests::TICKER, false));
    let p = backing(d, "p.img", 2 * MIB, b"snapshot");
    let cfg = write(
        d,
        "vm.json",
        json!({
            "boot-source": {"kernel_image_path": kernel},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 16},
            "pmem": [{"id": "p", "path_on_host": p}],
            "serial": {"serial_out_path": d.join("a.serial")},
        })
        .to_string()
        .as_bytes(),
    );
    let sock = d.join("a.sock");
    let _a = spawn_api(&sock, &["--config-file", cfg.to_str().unwrap()]);
    assert!(wait_for(10, || get(&sock, "/")["state"] == "Running"));
    assert_eq!(
        http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let (state, mem) = (d.join("snap.state"), d.join("snap.mem"));
    let (st, body) = http(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(
            &json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem})
                .to_string(),
        ),
    );
    assert_eq!(st, 204, "{body}");
    let load = |name: &str| {
        let sock = d.join(format!("{name}.sock"));
        let vmm = spawn_api(&sock, &[]);
        let r = http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(
                &json!({
                    "snapshot_path": state,
                    "mem_backend": {"backend_type": "File", "backend_path": mem},
                    "resume_vm": true,
                    "serial": {"serial_out_path": d.join(format!("{name}.serial"))},
                })
                .to_string(),
            ),
        );
        (vmm, sock, r)
    };
    // The same file: loaded, running, the pmem device in its configuration.
    let (_b, sock_b, r) = load("b");
    assert_eq!(r.0, 204, "{}", r.1);
    assert_eq!(get(&sock_b, "/")["state"], "Running");
    assert_eq!(
        get(&sock_b, "/vm/config")["pmem"][0]["path_on_host"],
        json!(p)
    );
    assert!(wait_for(10, || std::fs::metadata(d.join("b.serial"))
        .is_ok_and(|m| m.len() > 0)));
    // The file resized: the guest would see another region; refused, nothing left running.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let (_c, sock_c, r) = load("c");
    let m = fault(
        r,
        "give every pmem backing file the size it had when the snapshot was taken",
    );
    assert!(
        m.contains("2097152 bytes") && m.contains("4194304 bytes"),
        "{m}"
    );
    assert_eq!(get(&sock_c, "/")["state"], "Not started");
}
