//! The jail around every VM process (issue 18), checked from the host the way an operator
//! would: `/proc/<pid>/{status,root,cgroup,ns,mountinfo}` of the QEMU process, a QMP attempt to
//! open a host file, a VM pushed over its memory limit, and what is left once the VM is gone
//! (after `stop`, and after its supervisor was killed with -9).
//!
//! Needs: the default kernel and the tiny image (scripts/test.sh builds both), qemu-system-x86,
//! root, cgroup v1 (memory, cpu, pids) or v2.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const UID_BASE: u32 = 900_000;
const UID_END: u32 = 965_536;

fn vm_pid(env: &Env, name: &str) -> i32 {
    std::fs::read_to_string(env.vms_dir().join(name).join("vm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The value of a `Key:\tvalue` line of /proc/<pid>/status.
fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Every live process on the host running as `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        // A zombie holds nothing (no memory, files or mounts): reaping it is init's job.
        if s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
        {
            continue;
        }
        let real = s
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next().map(str::to_string));
        if real.as_deref() == Some(uid.to_string().as_str()) {
            out.push(pid);
        }
    }
    out
}

/// The VM's cgroup path in the memory hierarchy (v1) or the unified one (v2), from
/// /proc/<pid>/cgroup, and the directory it is at.
fn memory_cgroup(pid: i32) -> (String, PathBuf) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for l in s.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrl, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if ctrl.split(',').any(|c| c == "memory") {
            return (
                path.into(),
                Path::new("/sys/fs/cgroup/memory").join(&path[1..]),
            );
        }
    }
    let v2 = s.lines().find(|l| l.starts_with("0::")).unwrap()[3..].to_string();
    let dir = Path::new("/sys/fs/cgroup").join(&v2[1..]);
    (v2, dir)
}

fn knob(dir: &Path, v1: &str, v2: &str) -> String {
    std::fs::read_to_string(dir.join(v1))
        .or_else(|_| std::fs::read_to_string(dir.join(v2)))
        .unwrap()
        .trim()
        .to_string()
}

/// One QMP command on the VM's monitor socket; returns the answer line.
fn qmp(env: &Env, name: &str, cmd: &str) -> String {
    let s = UnixStream::connect(env.vms_dir().join(name).join("qmp.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    w.write_all(cmd.as_bytes()).unwrap();
    w.write_all(b"\n").unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if !line.contains("\"event\"") {
            return line;
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn registry_holds(uid: u32) -> bool {
    Path::new("/run/kobako/jail-uids")
        .join(uid.to_string())
        .exists()
}

#[test]
fn qemu_runs_as_its_own_uid_in_its_own_namespaces_root_and_cgroup() {
    let env = Env::new();
    run_detached(&env, "j-basic", &["--vcpus", "1", "--memory", "128M"]);
    let pid = vm_pid(&env, "j-basic");

    // Who it runs as: one uid/gid from the jail's range, no groups, no capabilities at all.
    let uids: Vec<u32> = status_field(pid, "Uid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    let uid = uids[0];
    assert!((UID_BASE..UID_END).contains(&uid), "uid {uid}");
    assert!(
        uids.iter().all(|u| *u == uid),
        "real/effective/saved/fs uids: {uids:?}"
    );
    let gids: Vec<u32> = status_field(pid, "Gid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(gids.iter().all(|g| *g == uid), "gids {gids:?}");
    assert_eq!(status_field(pid, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // QEMU's own seccomp filter (-sandbox on,...) is in force.
    assert_eq!(status_field(pid, "Seccomp"), "2");
    // Its own PID namespace, where it is PID 1.
    let nspid_line = status_field(pid, "NSpid");
    let nspid: Vec<&str> = nspid_line.split_whitespace().collect();
    assert_eq!(nspid.len(), 2, "NSpid {nspid:?}");
    assert_eq!(nspid[1], "1");
    for ns in ["mnt", "pid"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    // The same core-size limit as before the jail.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");

    // What it sees: a root holding /usr, /dev, /proc and the VM's own files, nothing else.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    for must_not in ["etc", "root", "home", "srv", "boot"] {
        assert!(
            !top.contains(&must_not.to_string()),
            "/{must_not} in the jail: {top:?}"
        );
    }
    assert!(top.contains(&"usr".to_string()) && top.contains(&"dev".to_string()));
    assert!(!root.join("etc/shadow").exists());
    assert!(
        !root.join("var/lib/kobako").exists(),
        "the server's state is visible"
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.vms_dir().join("j-basic/config.json")).unwrap(),
    )
    .unwrap();
    let kernel = cfg["kernel"].as_str().unwrap();
    assert!(
        root.join(&kernel[1..]).is_file(),
        "the kernel is not in the jail"
    );
    // Nothing of the VM directory (pid files, launch.json) is inside: its sockets and log
    // are descriptors the supervisor handed over.
    assert!(!root.join(env.vms_dir().strip_prefix("/").unwrap()).exists());
    let mut dev: Vec<String> = std::fs::read_dir(root.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dev.sort();
    dev.retain(|d| d != "kvm");
    assert_eq!(dev, ["full", "net", "null", "random", "urandom", "zero"]);
    // Its root is read-only, /usr too.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    for mp in ["/", "/usr"] {
        let line = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(mp))
            .unwrap_or_else(|| panic!("no {mp} mount:\n{mounts}"));
        let opts = line.split_whitespace().nth(5).unwrap();
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "{mp} is writable: {line}"
        );
    }

    // Its cgroup: the guest's memory plus the documented overhead, CPU from its vCPUs, pids.
    let (cg, dir) = memory_cgroup(pid);
    assert!(cg.starts_with("/kobako/j-basic."), "cgroup {cg}");
    let limit: u64 = knob(&dir, "memory.limit_in_bytes", "memory.max")
        .parse()
        .unwrap();
    // 384 MiB under TCG (its translation cache), 256 MiB under KVM.
    let tcg = std::fs::read_to_string(env.vms_dir().join("j-basic/launch.json"))
        .unwrap()
        .contains("tcg,");
    let overhead = if tcg { 384 } else { 256 };
    assert_eq!(limit, (128 + overhead) << 20, "memory limit");
    if Path::new("/sys/fs/cgroup/pids").is_dir() {
        let pids = Path::new("/sys/fs/cgroup/pids").join(&cg[1..]);
        assert_eq!(knob(&pids, "pids.max", "pids.max"), "512");
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(&cg[1..]);
        assert_eq!(knob(&cpu, "cpu.cfs_quota_us", "-"), "150000");
    }

    // The attack of the issue: through QMP, ask QEMU to open a host file. A world-readable
    // file, so only the jail stands in the way.
    let secret = std::env::temp_dir().join(format!("kobako-jail-secret-{}", std::process::id()));
    std::fs::write(&secret, "host secret\n").unwrap();
    let answer = qmp(
        &env,
        "j-basic",
        &format!(
            r#"{{"execute":"human-monitor-command","arguments":{{"command-line":"drive_add 0 if=none,id=stolen,file={},format=raw,readonly=on"}}}}"#,
            secret.display()
        ),
    );
    assert!(
        answer.contains("Could not open") || answer.contains("No such file"),
        "QEMU opened a host file: {answer}"
    );
    let _ = std::fs::remove_file(&secret);

    // And the VM works as before.
    assert_eq!(
        ok(&exec(&env, "j-basic", &["echo", "inside"])).trim(),
        "inside"
    );

    ok(&env.run(&["vm", "stop", "j-basic"]));
    env.assert_clean();
    assert!(!registry_holds(uid), "uid {uid} still held");
    assert!(processes_of(uid).is_empty());
    assert!(!dir.exists(), "cgroup {} left", dir.display());
    assert!(!env.run.path().join("jail/j-basic").exists());
}

#[test]
fn killing_the_supervisor_leaves_no_jail_behind() {
    let env = Env::new();
    run_detached(&env, "j-kill", &["--memory", "128M"]);
    let pid = vm_pid(&env, "j-kill");
    let uid: u32 = status_field(pid, "Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (_, dir) = memory_cgroup(pid);
    let sup: i32 = std::fs::read_to_string(env.vms_dir().join("j-kill/supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the supervisor pid the VM directory records.
    assert_eq!(unsafe { libc::kill(sup, libc::SIGKILL) }, 0);
    // The VM process dies with it (and with it its mount and PID namespaces).
    wait_until(
        "the jailed processes to end",
        Duration::from_secs(10),
        || processes_of(uid).is_empty(),
    );
    // `vm rm` of the dead VM takes back the rest: the uid, the cgroups, the jail's root.
    ok(&env.run(&["vm", "rm", "j-kill"]));
    env.assert_clean();
    assert!(!registry_holds(uid), "uid {uid} still held");
    assert!(!dir.exists(), "cgroup {} left", dir.display());
    assert!(!env.run.path().join("jail/j-kill").exists());
}

#[test]
fn a_vm_over_its_memory_limit_is_killed_and_reported_while_others_keep_running() {
    let env = Env::new();
    run_detached(&env, "j-calm", &["--memory", "128M"]);
    // A VM allowed nothing above its 256 MiB of RAM: QEMU's own memory plus the guest filling
    // its RAM take it over.
    let out = env
        .cmd(&[
            "vm", "run", "-d", "--json", "--name", "j-hog", "--memory", "256M",
        ])
        .env("KOBAKO_JAIL_OVERHEAD_MIB", "0")
        .output()
        .unwrap();
    ok(&out);
    let pid = vm_pid(&env, "j-hog");
    let (_, dir) = memory_cgroup(pid);
    assert_eq!(
        knob(&dir, "memory.limit_in_bytes", "memory.max")
            .parse::<u64>()
            .unwrap(),
        256 << 20
    );
    // The guest writes 220 MiB into a RAM-backed filesystem.
    let _ = exec(
        &env,
        "j-hog",
        &[
            "sh",
            "-c",
            "mkdir -p /mnt/f && mount -t tmpfs -o size=230m none /mnt/f && \
             dd if=/dev/zero of=/mnt/f/fill bs=1M count=220; sleep 30",
        ],
    );
    wait_until("j-hog to be killed", Duration::from_secs(60), || {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_err()
    });
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&env.run(&["vm", "ls", "--json"]))).unwrap();
    let hog = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "j-hog")
        .expect("j-hog is listed with why it ended");
    assert_eq!(hog["state"], "exited");
    let why = hog["exit"].as_str().unwrap_or_default();
    assert!(why.contains("memory limit of 256 MiB"), "reported: {hog}");
    // The other VM did not notice.
    assert_eq!(ok(&exec(&env, "j-calm", &["echo", "fine"])).trim(), "fine");
    ok(&env.run(&["vm", "rm", "j-hog"]));
    ok(&env.run(&["vm", "stop", "j-calm"]));
    env.assert_clean();
    assert!(!dir.exists(), "cgroup {} left", dir.display());
}
