//! `vm snapshot` and `vm restore` of a VM on the own VMM (`--runtime vmm`), through the whole
//! runtime: supervisor, `PUT /snapshot/create`, the manifest, `kobako vmm --snapshot-load
//! restore.json`, and the agent reached again over vsock by the new VM's supervisor.
//!
//! On this PVM host the boot alone takes minutes (every guest kernel instruction is emulated;
//! the PVM-tolerant kernel from `crates/vmm/guest-pvm/build.sh`, `KOBAKO_PVM_KERNEL` overrides),
//! so the test is `#[ignore]`d from the parallel suite and `scripts/test.sh` runs it in the
//! background after `crates/vmm/tests/linux_pvm.rs`, on PVM hosts:
//! `cargo test -p kobako --test vmm_snapshot -- --ignored --nocapture`. On hosts whose KVM runs
//! standard guests it uses the default kernel and takes seconds. Without `/dev/kvm` it says so
//! and passes.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn exec_ok(env: &Env, vm: &str, argv: &[&str]) -> Option<String> {
    let mut args = vec!["vm", "exec", vm, "--"];
    args.extend_from_slice(argv);
    let o = env.run(&args);
    o.status.success().then(|| text(&o.stdout))
}

#[test]
#[ignore = "minutes on a PVM host (the boot); run by hand, see the file's docs"]
fn vmm_vm_snapshot_and_restore_continue_the_guest() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("vmm_snapshot: SKIPPED: no usable /dev/kvm here (the vmm runtime needs one)");
        return;
    }
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let kernel = std::env::var("KOBAKO_PVM_KERNEL")
        .unwrap_or_else(|_| format!("{}/kernel-pvm/vmlinux", kobako_image::cache::DEFAULT_ROOT));
    let env = Env::new();
    let mut args = vec![
        "vm",
        "run",
        "-d",
        "--runtime",
        "vmm",
        "--name",
        "vsnap-a",
        "--memory",
        "64M",
        "--timeout",
        "1500",
    ];
    if pvm {
        assert!(
            std::path::Path::new(&kernel).exists(),
            "{kernel} missing: build it with crates/vmm/guest-pvm/build.sh"
        );
        args.extend(["--kernel", &kernel]);
    }
    let t0 = Instant::now();
    ok(&env.run(&args));
    // `vm run` returns on the boot signal; the agent may take longer on PVM.
    let deadline = Instant::now() + Duration::from_secs(900);
    while exec_ok(&env, "vsnap-a", &["true"]).is_none() {
        assert!(Instant::now() < deadline, "no agent in vsnap-a");
        std::thread::sleep(Duration::from_secs(2));
    }
    let boot_s = t0.elapsed().as_secs_f64();
    let jail = assert_jailed(&env, "vsnap-a");
    exec_ok(
        &env,
        "vsnap-a",
        &[
            "sh",
            "-c",
            "echo kept > /tmp/f; (i=0; while :; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 1; done) \
             </dev/null >/dev/null 2>&1 &",
        ],
    )
    .expect("exec in vsnap-a");
    std::thread::sleep(Duration::from_secs(3));

    let snap = env.run.path().join("snap");
    let snap_s = snap.to_str().unwrap();
    let t1 = Instant::now();
    let m = ok(&env.run(&["vm", "snapshot", "vsnap-a", snap_s, "--json"]));
    let snap_time = t1.elapsed().as_secs_f64();
    let m: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert_eq!(m["runtime"], "vmm");
    assert_eq!(m["memory"]["size"], 64u64 << 20);
    assert_eq!(m["vmstate"]["file"], "vmstate.bin");
    // The original continues.
    assert_eq!(
        exec_ok(&env, "vsnap-a", &["cat", "/tmp/f"]).as_deref(),
        Some("kept\n")
    );

    let t2 = Instant::now();
    ok(&env.run(&["vm", "restore", snap_s, "--name", "vsnap-b", "--verify"]));
    let restore_s = t2.elapsed().as_secs_f64();
    let restore_doc = std::fs::read_to_string(env.vms_dir().join("vsnap-b/restore.json")).unwrap();
    assert!(
        restore_doc.contains("vsnap-b/vmm/vsock.sock"),
        "{restore_doc}"
    );
    assert_eq!(
        exec_ok(&env, "vsnap-b", &["cat", "/tmp/f"]).as_deref(),
        Some("kept\n")
    );
    let n = |vm: &str| -> u64 {
        exec_ok(&env, vm, &["cat", "/tmp/n"])
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let n1 = n("vsnap-b");
    std::thread::sleep(Duration::from_secs(3));
    let n2 = n("vsnap-b");
    assert!(n1 > 0 && n2 > n1, "restored counter: {n1} then {n2}");
    let ls = ok(&env.run(&["vm", "ls", "--json"]));
    assert!(ls.contains("vsnap-a") && ls.contains("vsnap-b"), "{ls}");
    println!(
        "vmm runtime: cold boot to exec {boot_s:.1} s; snapshot {snap_time:.2} s; restore to agent \
         ready {restore_s:.2} s (ratio {:.4}); counter {n1} -> {n2}",
        restore_s / boot_s
    );
    // A VMM that put a symlink in place of its API socket (say, to another service's socket)
    // gets no connection from kobako, which is root: it refuses what is not a socket.
    let decoy_path = env.run.path().join("decoy.sock");
    let decoy = std::os::unix::net::UnixListener::bind(&decoy_path).unwrap();
    decoy.set_nonblocking(true).unwrap();
    let api = env.vms_dir().join("vsnap-a/vmm/api.sock");
    std::fs::remove_file(&api).unwrap();
    std::os::unix::fs::symlink(&decoy_path, &api).unwrap();
    let o = env.run(&["vm", "pause", "vsnap-a"]);
    assert!(
        !o.status.success(),
        "pause through a symlinked API socket succeeded"
    );
    assert!(
        text(&o.stderr).contains("not a socket"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        decoy.accept().is_err(),
        "kobako connected to the socket the symlink named"
    );
    ok(&env.run(&["vm", "stop", "vsnap-b"]));
    // Stop falls back to SIGKILL when the API does not answer.
    ok(&env.run(&["vm", "stop", "vsnap-a"]));
    // Nothing of the jail is left: its uid is free, its cgroups and root directory are gone.
    assert!(
        !std::path::Path::new(&format!("/run/kobako/jail-uids/{}", jail.uid)).exists(),
        "uid {} still registered",
        jail.uid
    );
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory")
            .join(&jail.cgroup)
            .exists()
            && !std::path::Path::new("/sys/fs/cgroup")
                .join(&jail.cgroup)
                .exists(),
        "cgroup {} left",
        jail.cgroup
    );
    env.assert_clean();
}

struct JailSeen {
    uid: u32,
    cgroup: String,
}

/// The VMM process of `vm` as the host sees it: its own uid, no capabilities, no new
/// privileges, seccomp filtering, its own cgroup, and a root holding its work directory but
/// not the VM directory's other files, nor /etc or kobako's state.
fn assert_jailed(env: &Env, vm: &str) -> JailSeen {
    let dir = env.vms_dir().join(vm);
    let pid: i32 = std::fs::read_to_string(dir.join("vm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("no {k} in /proc/{pid}/status"))
            .trim()
            .to_string()
    };
    let uid: u32 = field("Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (900_000..965_536).contains(&uid),
        "kobako vmm runs as uid {uid}"
    );
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("CapBnd"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "kobako vmm's seccomp filter");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cgroup = format!("kobako/{vm}.{uid}");
    assert!(cg.contains(&format!("/{cgroup}")), "{cg}");
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    let inside = |p: &std::path::Path| root.join(p.strip_prefix("/").unwrap());
    assert!(
        inside(&dir.join("vmm/api.sock")).exists(),
        "its work directory"
    );
    assert!(inside(&dir.join("vmm.json")).exists(), "its configuration");
    for hidden in [
        dir.join("vm.pid"),
        dir.join("agent.sock"),
        "/etc/passwd".into(),
        "/var/lib/kobako".into(),
    ] {
        assert!(
            !inside(&hidden).exists(),
            "{} visible in the jail",
            hidden.display()
        );
    }
    JailSeen { uid, cgroup }
}
