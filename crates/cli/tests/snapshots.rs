//! Real-guest tests of snapshots: warm clones for `up` (each clone its own identity), and what
//! kobako does with snapshots and checkpoints that do not fit or are damaged, and with a full
//! disk while checkpointing (clear errors, nothing half registered, running VMs untouched).

mod common;

use common::*;

/// One node of `n` tiny VMs on its node network.
fn node_lab(env: &Env, name: &str, n: usize) -> std::path::PathBuf {
    let mut y = format!(
        "name: {name}\ndefaults: {{ image: tiny, vcpus: 1, memory: 64M }}\nnodes:\n  n:\n    vms:\n"
    );
    for i in 0..n {
        y.push_str(&format!("      v{i}: {{}}\n"));
    }
    let p = env.run.path().join(format!("{name}.yaml"));
    std::fs::write(&p, y).unwrap();
    p
}

#[test]
fn ten_warm_clones_have_distinct_identities_and_work_as_lab_vms() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = node_lab(&env, "snap-ten", 10);
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "snap-ten",
    };
    let out = ok(&lab_cmd(
        &env,
        state.path(),
        &["up", p.to_str().unwrap(), "--json"],
    ));
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    let vms = reports[0]["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 10);
    for v in vms {
        assert_eq!(v["state"], "ready", "{v}");
        assert_eq!(v["warm"], true, "not cloned from the warm snapshot: {v}");
    }
    let mut seen: [Vec<String>; 4] = Default::default();
    for i in 0..10 {
        let vm = format!("snap-ten.n.v{i}");
        let out = ok(&lab_cmd(
            &env,
            state.path(),
            &[
                "exec",
                &vm,
                "--",
                "sh",
                "-c",
                "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; \
                 cat /etc/machine-id; cat /sys/class/net/eth0/address",
            ],
        ));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[1], format!("n-v{i}"), "hostname of {vm}");
        for (k, l) in lines.iter().enumerate() {
            seen[k].push(l.to_string());
        }
    }
    for (k, what) in ["first random bytes", "hostname", "machine-id", "MAC"]
        .iter()
        .enumerate()
    {
        let mut d = seen[k].clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 10, "{what} not distinct: {:?}", seen[k]);
    }
    // The MACs are the lab's (the controller found each interface by its MAC and gave it its
    // address), and the clones talk to each other on the node network.
    let addr = |v: &serde_json::Value| -> String {
        let a = v["addresses"][0].as_str().unwrap();
        a.split_once(':')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let last = addr(&vms[9]);
    let o = lab_cmd(
        &env,
        state.path(),
        &[
            "exec",
            "snap-ten.n.v0",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            &last,
        ],
    );
    assert!(o.status.success(), "v0 -> v9 ({last}): {}", text(&o.stdout));
    // The guest clock is the host's, not the snapshot's: it reads a time between the host's
    // before and after the command (the command itself can take seconds on a loaded host).
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = now();
    let guest: i64 = ok(&lab_cmd(
        &env,
        state.path(),
        &["exec", "snap-ten.n.v3", "--", "date", "+%s"],
    ))
    .trim()
    .parse()
    .unwrap();
    let after = now();
    assert!(
        guest >= before - 2 && guest <= after + 2,
        "guest clock {guest}, host {before}..{after}"
    );

    // The clones share the warm VM's memory: each maps the snapshot's `ram.bin` copy-on-write,
    // and the pages none of them wrote are in the host's memory once (their proportional share
    // of that mapping is a fraction of what each has resident).
    let (mut rss, mut pss) = (0u64, 0u64);
    for i in 0..10 {
        let pid =
            std::fs::read_to_string(env.vms_dir().join(format!("snap-ten.n.v{i}/vm.pid"))).unwrap();
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", pid.trim())).unwrap();
        let (r, p) = ram_mapping(&smaps).unwrap_or_else(|| {
            panic!("clone v{i} (pid {}) maps no snapshot ram.bin: it does not share the warm VM's memory", pid.trim())
        });
        rss += r;
        pss += p;
    }
    eprintln!("ten clones' snapshot RAM mapping: resident {rss} KiB, proportional {pss} KiB");
    assert!(
        rss > 10 * 1024 && pss * 2 < rss,
        "clones do not share their snapshot's pages: resident {rss} KiB, proportional {pss} KiB"
    );

    // `--cold` boots instead.
    ok(&lab_cmd(&env, state.path(), &["down", "snap-ten"]));
    let p2 = node_lab(&env, "snap-ten", 1);
    let out = ok(&lab_cmd(
        &env,
        state.path(),
        &["up", p2.to_str().unwrap(), "--json", "--cold"],
    ));
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reports[0]["vms"][0]["warm"], false);
    ok(&lab_cmd(&env, state.path(), &["down", "snap-ten"]));
    env.assert_clean();
}

/// Resident and proportional KiB of the mapping of a snapshot's `ram.bin` (or a clone's link to it) in a process's
/// `/proc/PID/smaps`.
fn ram_mapping(smaps: &str) -> Option<(u64, u64)> {
    let mut inside = false;
    let (mut rss, mut pss, mut found) = (0, 0, false);
    for l in smaps.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header line: "start-end perms offset dev inode path".
            inside = l.trim_end().ends_with("/ram.bin");
            found |= inside;
        } else if inside {
            let kib = |k: &str| -> Option<u64> {
                l.strip_prefix(k)?.split_whitespace().next()?.parse().ok()
            };
            if let Some(v) = kib("Rss:") {
                rss += v;
            }
            if let Some(v) = kib("Pss:") {
                pss += v;
            }
        }
    }
    found.then_some((rss, pss))
}

fn edit_manifest(snap: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = snap.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Flips bytes in the middle of a file (same size: only a checksum can tell).
fn corrupt(p: &std::path::Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut b = [0u8; 64];
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.read_exact(&mut b).unwrap();
    for x in &mut b {
        *x ^= 0xa5;
    }
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&b).unwrap();
}

#[test]
fn restore_refuses_other_versions_kernels_formats_and_corrupt_memory() {
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "snap-src", "--memory", "64M"]));
    let snap = env.run.path().join("snap");
    ok(&env.run(&["vm", "snapshot", "snap-src", snap.to_str().unwrap()]));
    type Spoil = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "another QEMU",
            Box::new(|d| {
                edit_manifest(d, |m| {
                    m["qemu_version"] = "QEMU emulator version 1.0".into()
                })
            }),
            "made with 'QEMU emulator version 1.0'",
        ),
        (
            "another kernel",
            Box::new(|d| edit_manifest(d, |m| m["kernel_size"] = 12345.into())),
            "changed since the snapshot",
        ),
        (
            "another format",
            Box::new(|d| edit_manifest(d, |m| m["format"] = 99.into())),
            "unknown kind/format",
        ),
        (
            "an unknown runtime",
            Box::new(|d| edit_manifest(d, |m| m["runtime"] = "cloud-hypervisor".into())),
            "made by the 'cloud-hypervisor' runtime",
        ),
        (
            // A runtime kobako knows that takes no snapshots: refused with the reason.
            "the firecracker runtime",
            Box::new(|d| edit_manifest(d, |m| m["runtime"] = "firecracker".into())),
            "the firecracker runtime does not take or restore snapshots",
        ),
        (
            // Restored by the runtime it names, which finds no VMM state in it.
            "another runtime",
            Box::new(|d| edit_manifest(d, |m| m["runtime"] = "vmm".into())),
            "its VM state file (vmstate.bin) is not in the manifest",
        ),
        (
            "a corrupt memory file",
            Box::new(|d| corrupt(&d.join("memory.bin"))),
            "memory.bin does not match its checksum",
        ),
    ];
    for (i, (what, spoil, needle)) in cases.iter().enumerate() {
        let d = env.run.path().join(format!("bad{i}"));
        copy_dir(&snap, &d);
        spoil(&d);
        let o = env.run(&[
            "vm",
            "restore",
            d.to_str().unwrap(),
            "--name",
            "snap-bad",
            "--verify",
        ]);
        assert!(!o.status.success(), "{what}: restored");
        assert!(
            text(&o.stderr).contains(needle),
            "{what}: {}",
            text(&o.stderr)
        );
        assert!(
            !env.leftovers().contains(&"snap-bad".to_string()),
            "{what}: a VM was left"
        );
    }
    // The source VM never noticed.
    ok(&env.run(&["vm", "exec", "snap-src", "--", "true"]));
    ok(&env.run(&["vm", "stop", "snap-src"]));
    env.assert_clean();
}

/// Unmounts a tmpfs when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn checkpoint_on_a_full_disk_and_a_corrupt_checkpoint_leave_the_lab_running() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = node_lab(&env, "snap-full", 2);
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "snap-full",
    };
    let run = |args: &[&str]| ok(&lab_cmd(&env, state.path(), args));
    run(&["up", p.to_str().unwrap()]);
    run(&[
        "exec",
        "snap-full.n.v0",
        "--",
        "sh",
        "-c",
        "(i=0; while true; do i=$((i+1)); echo $i > /root/count.new; mv /root/count.new /root/count; sleep 0.1; done) >/dev/null 2>&1 &",
    ]);
    let count = || -> u64 {
        run(&["exec", "snap-full.n.v0", "--", "cat", "/root/count"])
            .trim()
            .parse()
            .unwrap()
    };
    let pid = |vm: &str| std::fs::read_to_string(env.run.path().join(format!("vms/{vm}/vm.pid")));
    let pids = (
        pid("snap-full.n.v0").unwrap(),
        pid("snap-full.n.v1").unwrap(),
    );

    // A checkpoint directory with room for a few MiB (each VM's state is ~30 MiB).
    let cps = state.path().join("checkpoints");
    std::fs::create_dir_all(&cps).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&cps)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    let m = Mount(cps.clone());
    let o = lab_cmd(&env, state.path(), &["checkpoint", "snap-full", "full"]);
    assert!(!o.status.success(), "checkpoint on a full disk succeeded");
    let err = text(&o.stderr);
    assert!(err.contains("is full") && err.contains("MiB free"), "{err}");
    // Nothing registered, nothing half written left.
    assert_eq!(
        run(&["checkpoint", "snap-full", "--list", "--json"]).trim(),
        "[]"
    );
    let left: Vec<_> = walk(&cps);
    assert!(
        left.is_empty(),
        "files left in the checkpoint dir: {left:?}"
    );
    // Both VMs run on, unpaused, the same processes.
    let c1 = count();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(
        count() > c1,
        "the guest did not continue after the failed checkpoint"
    );
    assert_eq!(
        (
            pid("snap-full.n.v0").unwrap(),
            pid("snap-full.n.v1").unwrap()
        ),
        pids
    );
    drop(m);

    // A checkpoint whose memory file was damaged afterwards is refused before anything stops.
    run(&["checkpoint", "snap-full", "cp1"]);
    corrupt(&cps.join("snap-full/cp1/vms/snap-full.n.v1/memory.bin"));
    let o = lab_cmd(&env, state.path(), &["restore", "snap-full", "cp1"]);
    assert!(!o.status.success(), "a corrupt checkpoint was restored");
    let err = text(&o.stderr);
    assert!(
        err.contains("snap-full.n.v1") && err.contains("does not match its checksum"),
        "{err}"
    );
    assert_eq!(
        (
            pid("snap-full.n.v0").unwrap(),
            pid("snap-full.n.v1").unwrap()
        ),
        pids,
        "a refused restore touched the running VMs"
    );
    let c1 = count();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(count() > c1);
    assert!(run(&["ls"]).contains("ready"));
    run(&["down", "snap-full"]);
    env.assert_clean();
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
