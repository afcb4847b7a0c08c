//! Snapshots through the Firecracker API of real `kobako-vmm` processes on /dev/kvm (seccomp on),
//! with the `snapcount` guest: it drives the virtio-rng device in a loop and prints a counter
//! kept in a register and in RAM. A snapshot loaded into a new process must continue the
//! sequence exactly where the snapshot was taken: vCPU registers, RAM (mapped from the memory
//! file), the interrupt controllers and the device's ring positions all come back. Also the
//! refusals: bad state or memory files, wrong preconditions, a full disk.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const MEM_MIB: u64 = 64;

fn guest(delay: u64) -> Vec<u8> {
    let mut g = guests::SNAPCOUNT.to_vec();
    g[8..16].copy_from_slice(&0x30_0000u64.to_le_bytes());
    g[16..24].copy_from_slice(&0xd000_0000u64.to_le_bytes());
    g[24..32].copy_from_slice(&delay.to_le_bytes());
    g
}

fn ok(r: (u16, String)) {
    assert_eq!(r.0, 204, "{}", r.1);
}

fn fault(r: (u16, String), needle: &str) -> String {
    assert_eq!(r.0, 400, "expected a 400 naming {needle:?}, got {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.1).unwrap();
    let m = v["fault_message"].as_str().unwrap().to_string();
    assert!(m.contains(needle), "{m:?} does not contain {needle:?}");
    m
}

/// Configures and starts a snapcount VM on `sock` with its console in `serial`.
fn boot(dir: &Path, sock: &Path, serial: &Path) -> Vmm {
    let kernel = write(dir, "snapcount.elf", &elf(&guest(2_000), false));
    let vmm = spawn_api(sock, &[]);
    ok(http(
        sock,
        "PUT",
        "/machine-config",
        Some(&format!(
            r#"{{"vcpu_count": 1, "mem_size_mib": {MEM_MIB}}}"#
        )),
    ));
    ok(http(
        sock,
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path": "{}"}}"#,
            kernel.display()
        )),
    ));
    ok(http(sock, "PUT", "/entropy", Some("{}")));
    ok(http(
        sock,
        "PUT",
        "/serial",
        Some(&format!(r#"{{"serial_out_path": "{}"}}"#, serial.display())),
    ));
    ok(http(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    ));
    vmm
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The counter values of complete `n=XXXXXXXX` lines; panics on a BAD line.
fn counters(out: &str) -> Vec<u64> {
    assert!(!out.contains("BAD"), "the guest reported an error:\n{out}");
    out.lines()
        .filter_map(|l| l.strip_prefix("n="))
        .filter(|h| h.len() == 8)
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .collect()
}

fn lines_at_least(p: &Path, n: usize, secs: u64) -> bool {
    wait_for(secs, || counters(&read(p)).len() >= n)
}

fn take(sock: &Path, state: &Path, mem: &Path) -> (u16, String) {
    http(
        sock,
        "PUT",
        "/snapshot/create",
        Some(&format!(
            r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            state.display(),
            mem.display()
        )),
    )
}

fn load_body(state: &Path, mem: &Path, serial: &Path, resume: bool) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": {resume}, "serial": {{"serial_out_path": "{}"}}}}"#,
        state.display(),
        mem.display(),
        serial.display()
    )
}

fn sha(p: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap_or("")
        .to_string()
}

/// Disk blocks a file really uses (it is sparse).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

struct Snap {
    _dir: tempfile::TempDir,
    state: PathBuf,
    mem: PathBuf,
    /// The original's console up to the snapshot.
    before: String,
}

/// Boots the guest, lets it count, pauses, snapshots, checks the original resumes, kills it.
fn snapshot_of_counting_guest() -> Snap {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let serial = dir.path().join("a.serial");
    let mut a = boot(dir.path(), &sock, &serial);
    assert!(
        lines_at_least(&serial, 20, 60),
        "the guest never counted: {:?}",
        read(&serial)
    );
    ok(http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)));
    let before = read(&serial);
    let state = dir.path().join("vm.state");
    let mem = dir.path().join("vm.mem");
    // Refused while running; Diff refused.
    let t0 = Instant::now();
    ok(take(&sock, &state, &mem));
    eprintln!(
        "snapshot/create of a {MEM_MIB} MiB guest: {} ms, memory file {} KiB on disk, state file {} KiB",
        t0.elapsed().as_millis(),
        allocated(&mem) >> 10,
        std::fs::metadata(&state).unwrap().len() >> 10
    );
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), MEM_MIB << 20);
    assert!(
        allocated(&mem) < 4 << 20,
        "the memory file should be sparse, uses {} bytes",
        allocated(&mem)
    );
    assert_eq!(
        read(&serial),
        before,
        "the guest ran while paused for the snapshot"
    );
    // The original goes on.
    ok(http(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)));
    let n = counters(&before).len();
    assert!(
        lines_at_least(&serial, n + 5, 30),
        "the original did not continue"
    );
    let _ = a.kill();
    let _ = a.wait();
    Snap {
        _dir: dir,
        state,
        mem,
        before,
    }
}

#[test]
fn restored_guest_continues_counting_in_new_processes() {
    let s = snapshot_of_counting_guest();
    let last = *counters(&s.before).last().unwrap();
    let mem_sum = sha(&s.mem);
    // Two processes from the same snapshot: each continues from the snapshot's point.
    for name in ["b", "c"] {
        let dir = s.state.parent().unwrap();
        let sock = dir.join(format!("{name}.sock"));
        let serial = dir.join(format!("{name}.serial"));
        let _vmm = spawn_api(&sock, &[]);
        let t0 = Instant::now();
        ok(http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(&load_body(&s.state, &s.mem, &serial, true)),
        ));
        let load_ms = t0.elapsed().as_millis();
        assert!(
            lines_at_least(&serial, 10, 30),
            "restored guest {name} printed {:?}",
            read(&serial)
        );
        // The original's partial last line (if the pause cut one) continues in the copy.
        let joined = format!("{}{}", s.before, read(&serial));
        let seq = counters(&joined);
        for w in seq.windows(2) {
            assert_eq!(w[1], w[0] + 1, "the sequence broke: {seq:?}");
        }
        assert!(seq.len() >= counters(&s.before).len() + 10);
        let first_new = counters(&read(&serial))[0];
        assert!(
            first_new == last + 1 || first_new == last + 2,
            "copy {name} went on at {first_new}, the snapshot was at {last}"
        );
        eprintln!("snapshot/load {name}: {load_ms} ms to a running guest, continued at n={first_new:#x} (snapshot at {last:#x})");
        let info: serde_json::Value =
            serde_json::from_str(&http(&sock, "GET", "/", None).1).unwrap();
        assert_eq!(info["state"], "Running");
        let cfg: serde_json::Value =
            serde_json::from_str(&http(&sock, "GET", "/vm/config", None).1).unwrap();
        assert_eq!(cfg["machine-config"]["mem_size_mib"], MEM_MIB);
        assert!(cfg["entropy"].is_object(), "{cfg}");
        // Boot time of a restored VM: when the load completed.
        assert_eq!(http(&sock, "GET", "/kobako/boot-time", None).0, 200);
        // Snapshot of the copy works too (a restored VM is a normal VM).
        ok(http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)));
        ok(take(
            &sock,
            &dir.join(format!("{name}.state")),
            &dir.join(format!("{name}.mem")),
        ));
    }
    assert_eq!(
        sha(&s.mem),
        mem_sum,
        "a load must never write the memory file"
    );

    // Loaded paused, then resumed; and through --snapshot-load with --no-api.
    let dir = s.state.parent().unwrap();
    let sock = dir.join("d.sock");
    let serial = dir.join("d.serial");
    let _d = spawn_api(&sock, &[]);
    ok(http(
        &sock,
        "PUT",
        "/snapshot/load",
        Some(&load_body(&s.state, &s.mem, &serial, false)),
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert!(counters(&read(&serial)).is_empty(), "a paused load ran");
    let info: serde_json::Value = serde_json::from_str(&http(&sock, "GET", "/", None).1).unwrap();
    assert_eq!(info["state"], "Paused");
    ok(http(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)));
    assert!(lines_at_least(&serial, 5, 30));

    let body = dir.join("load.json");
    let serial_e = dir.join("e.serial");
    std::fs::write(&body, load_body(&s.state, &s.mem, &serial_e, true)).unwrap();
    let mut e = Vmm(std::process::Command::new(vmm_bin())
        .args(["--no-api", "--snapshot-load"])
        .arg(&body)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    assert!(
        lines_at_least(&serial_e, 5, 30),
        "--snapshot-load did not run the guest: {:?}",
        read(&serial_e)
    );
    assert!(e.try_wait().unwrap().is_none());
}

#[test]
fn bad_snapshots_and_requests_are_refused_and_change_nothing() {
    let s = snapshot_of_counting_guest();
    let dir = s.state.parent().unwrap().to_path_buf();
    let serial = dir.join("x.serial");

    // Preconditions of create, on a live VM.
    let sock = dir.join("live.sock");
    let live_serial = dir.join("live.serial");
    let _live = boot(&dir, &sock, &live_serial);
    assert!(lines_at_least(&live_serial, 3, 60));
    fault(
        take(&sock, &dir.join("r.state"), &dir.join("r.mem")),
        "must be paused",
    );
    ok(http(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)));
    fault(
        http(
            &sock,
            "PUT",
            "/snapshot/create",
            Some(&format!(
                r#"{{"snapshot_type": "Diff", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                dir.join("d.state").display(),
                dir.join("d.mem").display()
            )),
        ),
        "Diff snapshots are not supported",
    );
    let m = fault(
        take(
            &sock,
            &dir.join("no/such/dir/s"),
            &dir.join("no/such/dir/m"),
        ),
        "no/such/dir",
    );
    assert!(m.contains("nothing was kept"), "{m}");
    // A full disk: a 64 KiB tmpfs cannot hold the guest's written pages.
    let small = dir.join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success();
    assert!(mounted, "cannot mount a small tmpfs (tests run as root)");
    let r = take(&sock, &small.join("s"), &small.join("m"));
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    let _ = std::process::Command::new("umount").arg(&small).status();
    let m = fault(r, "No space left on device");
    assert!(m.contains("free space or choose another path"), "{m}");
    assert!(left.is_empty(), "a failed snapshot left files: {left:?}");
    // The VM is still paused and whole: it resumes and counts on.
    let n = counters(&read(&live_serial)).len();
    ok(http(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)));
    assert!(lines_at_least(&live_serial, n + 3, 30));

    // Loads refused, each in the same fresh process, which then still loads a good snapshot.
    let sock = dir.join("fresh.sock");
    let _fresh = spawn_api(&sock, &[]);
    let load = |state: &Path, mem: &Path| {
        http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(&load_body(state, mem, &serial, true)),
        )
    };
    // Truncated memory.
    let short = dir.join("short.mem");
    std::fs::copy(&s.mem, &short).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len((MEM_MIB << 20) / 2)
        .unwrap();
    fault(
        load(&s.state, &short),
        "truncated or belongs to another snapshot",
    );
    // Corrupted state.
    let bad = dir.join("bad.state");
    let mut bytes = std::fs::read(&s.state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&bad, &bytes).unwrap();
    fault(load(&bad, &s.mem), "checksum mismatch");
    // Cut short.
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    fault(load(&bad, &s.mem), "truncated");
    // Not a snapshot at all / missing.
    fault(load(&s.mem, &s.mem), "bad magic");
    fault(load(&dir.join("missing.state"), &s.mem), "No such file");
    fault(load(&s.state, &dir.join("missing.mem")), "No such file");
    // Another state format (as a future kobako-vmm would write).
    let mut other = std::fs::read(&s.state).unwrap();
    other[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&bad, &other).unwrap();
    fault(load(&bad, &s.mem), "state format 99");
    // Unsupported memory backend, unknown override names, diff tracking.
    fault(
        http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(&format!(
                r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "Uffd", "backend_path": "/x"}}}}"#,
                s.state.display()
            )),
        ),
        "\"Uffd\" is not supported",
    );
    fault(
        http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(&format!(
                r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "network_overrides": [{{"iface_id": "eth9", "host_dev_name": "tap9"}}]}}"#,
                s.state.display(),
                s.mem.display()
            )),
        ),
        "does not have (it has: none)",
    );
    fault(
        http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(&format!(
                r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "clock_realtime": true}}"#,
                s.state.display(),
                s.mem.display()
            )),
        ),
        "clock_realtime is not supported",
    );
    fault(
        http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(&format!(
                r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "huge_pages": "Transparent"}}"#,
                s.state.display(),
                s.mem.display()
            )),
        ),
        "huge_pages \"Transparent\" on snapshot load is not supported",
    );
    // After all that, the same process loads the good snapshot and runs it.
    ok(load(&s.state, &s.mem));
    assert!(lines_at_least(&serial, 5, 30), "{:?}", read(&serial));
    // A second load into a started VMM is refused.
    fault(load(&s.state, &s.mem), "new kobako-vmm process");

    // Load into a configured VMM is refused.
    let sock = dir.join("conf.sock");
    let _conf = spawn_api(&sock, &[]);
    ok(http(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 32}"#),
    ));
    fault(
        http(
            &sock,
            "PUT",
            "/snapshot/load",
            Some(&load_body(&s.state, &s.mem, &serial, true)),
        ),
        "only allowed before the microVM is configured",
    );

    // --snapshot-load with a bad snapshot: exit 152 and the reason on stderr.
    let body = dir.join("bad-load.json");
    std::fs::write(&body, load_body(&s.state, &short, &serial, true)).unwrap();
    let out = std::process::Command::new(vmm_bin())
        .args(["--no-api", "--snapshot-load"])
        .arg(&body)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(152));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated or belongs to another snapshot"),
        "{err}"
    );
}
