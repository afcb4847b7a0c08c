//! Real-guest tests of `kobako vm ...`: QEMU microvm boots the default kernel and the tiny image;
//! assertions are what a user checks (exit codes, what the guest reports, what is left behind).
//!
//! Needs: the default kernel and the static agent (scripts/test.sh builds both), qemu-system-x86.
//! Each test uses its own `KOBAKO_RUN` directory so it can check that nothing is left behind.

mod common;

use common::*;
use std::process::Stdio;

#[test]
fn one_vcpu_128m_boots_reports_and_stops_clean() {
    let env = Env::new();
    let r = run_detached(&env, "t-basic", &["--vcpus", "1", "--memory", "128M"]);
    assert!(r["ready_ms"].as_u64().unwrap() > 0);
    assert_eq!(r["vcpus"], 1);

    let nproc = ok(&exec(&env, "t-basic", &["nproc"]));
    assert_eq!(nproc.trim(), "1");
    assert_memory_matches(mem_total_mib(&env, "t-basic"), 128);
    assert_eq!(ok(&exec(&env, "t-basic", &["hostname"])).trim(), "t-basic");

    let ls = ok(&env.run(&["vm", "ls", "--json"]));
    let ls: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(ls[0]["name"], "t-basic");
    assert_eq!(ls[0]["state"], "running");

    ok(&env.run(&["vm", "stop", "t-basic"]));
    env.assert_clean();
    // Stopping again names the problem.
    let o = env.run(&["vm", "stop", "t-basic"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no VM named 't-basic'"));
}

#[test]
fn two_vcpus_512m_and_64m() {
    let env = Env::new();
    run_detached(&env, "t-big", &["--vcpus", "2", "--memory", "512M"]);
    assert_eq!(ok(&exec(&env, "t-big", &["nproc"])).trim(), "2");
    assert_memory_matches(mem_total_mib(&env, "t-big"), 512);
    ok(&env.run(&["vm", "stop", "t-big"]));

    run_detached(&env, "t-small", &["--vcpus", "1", "--memory", "64M"]);
    assert_eq!(ok(&exec(&env, "t-small", &["nproc"])).trim(), "1");
    assert_memory_matches(mem_total_mib(&env, "t-small"), 64);
    ok(&env.run(&["vm", "stop", "t-small"]));
    env.assert_clean();
}

#[test]
fn exec_passes_exit_codes_and_streams() {
    let env = Env::new();
    run_detached(&env, "t-exec", &[]);
    let o = exec(
        &env,
        "t-exec",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");
    let o = exec(&env, "t-exec", &["sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(128 + 9));
    let o = exec(&env, "t-exec", &["/no/such/program"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("/no/such/program"),
        "{}",
        text(&o.stderr)
    );
    ok(&env.run(&["vm", "stop", "t-exec"]));
    env.assert_clean();
}

#[test]
fn poweroff_inside_a_detached_vm_cleans_up() {
    let env = Env::new();
    run_detached(&env, "t-off", &[]);
    // The exec may or may not see its own exit before the VM goes down.
    let _ = exec(&env, "t-off", &["poweroff"]);
    env.assert_clean();
}

#[test]
fn foreground_run_ends_with_the_guest_poweroff() {
    let env = Env::new();
    let mut child = env
        .cmd(&["vm", "run", "--name", "t-fg"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Typed into the serial console's shell, like a user would.
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"echo hello-from-console; poweroff\n")
            .unwrap();
        // Keep stdin open until the VM ends (closing it must not end the session).
        let out = child.wait_with_output_timeout(std::time::Duration::from_secs(120));
        drop(stdin);
        let out = out.expect("vm run did not end after poweroff");
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "stderr: {stderr}");
        assert!(stderr.contains("agent ready in"), "{stderr}");
        assert!(stderr.contains("guest poweroff"), "{stderr}");
        assert!(
            text(&out.stdout).contains("hello-from-console"),
            "console output: {}",
            text(&out.stdout)
        );
    }
    env.assert_clean();
}

#[test]
fn bad_input_gets_one_clear_error_and_nothing_runs() {
    let env = Env::new();
    let d = tempfile::tempdir().unwrap();
    let text_file = d.path().join("notes.txt");
    std::fs::write(&text_file, "not a kernel").unwrap();
    let text_file = text_file.to_str().unwrap();
    assert_fails_with(
        &env,
        &["vm", "run", "--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
    assert_fails_with(&env, &["vm", "run", "--kernel", text_file], "not a kernel");
    assert_fails_with(&env, &["vm", "run", "--memory", "0"], "--memory 0M");
    assert_fails_with(&env, &["vm", "run", "--memory", "lots"], "not a size");
    assert_fails_with(&env, &["vm", "run", "--vcpus", "0"], "at least 1 vCPU");
    assert_fails_with(&env, &["vm", "run", "--vcpus", "4096"], "this host has");
    assert_fails_with(
        &env,
        &["vm", "run", "--image", "nosuch"],
        "unknown image 'nosuch'",
    );
    assert_fails_with(&env, &["vm", "run", "--image", text_file], "not an image");
    assert_fails_with(
        &env,
        &["vm", "exec", "ghost", "--", "true"],
        "no VM named 'ghost'",
    );
}

#[test]
fn a_guest_that_never_becomes_ready_times_out_with_its_console() {
    let env = Env::new();
    let started = std::time::Instant::now();
    // init is a plain shell waiting on the console: the agent never starts.
    assert_fails_with(
        &env,
        &[
            "vm",
            "run",
            "--name",
            "t-hang",
            "--timeout",
            "8",
            "--cmdline",
            "rdinit=/bin/sh",
        ],
        "did not become ready within 8 s",
    );
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn a_guest_that_panics_is_reported_with_its_console() {
    let env = Env::new();
    // No init at that path: the kernel panics, resets, and QEMU exits.
    let o = env.run(&[
        "vm",
        "run",
        "--name",
        "t-panic",
        "--cmdline",
        "rdinit=/nonexistent init=/nonexistent",
    ]);
    let stderr = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("exited before its agent was ready"),
        "{stderr}"
    );
    assert!(stderr.contains("Kernel panic"), "{stderr}");
    env.assert_clean();
}

#[test]
fn a_running_guest_whose_kernel_panics_keeps_its_record_and_says_why() {
    let env = Env::new();
    run_detached(&env, "t-oops", &[]);
    // A guest user asks the kernel to panic when it runs out of memory, then fills a RAM-backed
    // filesystem: the kernel panics, resets, and QEMU exits (-no-reboot).
    let _ = exec(
        &env,
        "t-oops",
        &[
            "sh",
            "-c",
            "echo 1 > /proc/sys/vm/panic_on_oom && mkdir -p /mnt/f && \
             mount -t tmpfs -o size=100% none /mnt/f && cat /dev/zero > /mnt/f/fill; sleep 30",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let vm = loop {
        let ls: serde_json::Value =
            serde_json::from_str(&ok(&env.run(&["vm", "ls", "--json"]))).unwrap();
        let vm = ls
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "t-oops")
            .cloned();
        match vm {
            Some(v) if v["state"] == "exited" => break v,
            Some(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(300))
            }
            other => panic!("t-oops did not end listed with its reason: {other:?}"),
        }
    };
    let why = vm["exit"].as_str().unwrap_or_default();
    assert!(why.contains("guest kernel panic"), "reported: {vm}");
    assert!(why.contains("panic_on_oom"), "reported: {vm}");
    ok(&env.run(&["vm", "rm", "t-oops"]));
    env.assert_clean();
}

#[test]
fn reboot_inside_the_guest_restarts_the_vm() {
    let env = Env::new();
    run_detached(&env, "t-reboot", &[]);
    let boot_id = |env: &Env| {
        ok(&exec(
            env,
            "t-reboot",
            &["cat", "/proc/sys/kernel/random/boot_id"],
        ))
    };
    let first = boot_id(&env);
    let _ = exec(&env, "t-reboot", &["reboot"]);
    // The supervisor starts a new VM process; the agent becomes ready again.
    let mut second = String::new();
    for _ in 0..120 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let o = exec(
            &env,
            "t-reboot",
            &["cat", "/proc/sys/kernel/random/boot_id"],
        );
        if o.status.success() {
            second = text(&o.stdout);
            if second != first {
                break;
            }
        }
    }
    assert!(
        !second.is_empty() && second != first,
        "no new boot: {first} / {second}"
    );
    ok(&env.run(&["vm", "stop", "t-reboot"]));
    env.assert_clean();
}

#[test]
fn kobako_vmm_is_the_own_vmm() {
    let env = Env::new();
    let out = ok(&env.run(&["vmm", "--version"]));
    assert!(out.contains("kobako-vmm"), "{out}");
    // Its own argument errors, not clap's.
    let o = env.run(&["vmm", "--bogus"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--bogus"), "{}", text(&o.stderr));
}

#[test]
fn snapshot_and_restore_continue_the_guest_and_refuse_what_does_not_fit() {
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "snap-a", "--memory", "96M"]));
    ok(&env.run(&[
        "vm",
        "exec",
        "snap-a",
        "--",
        "sh",
        "-c",
        "echo kept > /root/f; (i=0; while true; do i=$((i+1)); echo $i > /root/n.new; mv /root/n.new /root/n; sleep 0.1; done) >/dev/null 2>&1 &",
    ]));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let snap = env.run.path().join("snap");
    let snap_s = snap.to_str().unwrap();
    let m = ok(&env.run(&["vm", "snapshot", "snap-a", snap_s, "--json"]));
    let m: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert_eq!(m["runtime"], "qemu");
    assert!(m["memory"]["size"].as_u64().unwrap() > 1 << 20);
    // The original continues.
    ok(&env.run(&["vm", "exec", "snap-a", "--", "true"]));
    let o = env.run(&["vm", "snapshot", "snap-a", snap_s]);
    assert!(text(&o.stderr).contains("exists"), "{}", text(&o.stderr));

    ok(&env.run(&["vm", "restore", snap_s, "--name", "snap-b", "--verify"]));
    assert_eq!(
        ok(&env.run(&["vm", "exec", "snap-b", "--", "cat", "/root/f"])).trim(),
        "kept"
    );
    let n1: u64 = ok(&env.run(&["vm", "exec", "snap-b", "--", "cat", "/root/n"]))
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let n2: u64 = ok(&env.run(&["vm", "exec", "snap-b", "--", "cat", "/root/n"]))
        .trim()
        .parse()
        .unwrap();
    assert!(n1 > 0 && n2 > n1, "restored counter: {n1} then {n2}");
    let o = env.run(&["vm", "restore", snap_s, "--name", "snap-b"]);
    assert!(
        text(&o.stderr).contains("already exists"),
        "{}",
        text(&o.stderr)
    );

    // Not a snapshot; a truncated memory file: refused with the reason, nothing started.
    let o = env.run(&[
        "vm",
        "restore",
        env.run.path().to_str().unwrap(),
        "--name",
        "snap-c",
    ]);
    assert!(
        text(&o.stderr).contains("not a kobako VM snapshot"),
        "{}",
        text(&o.stderr)
    );
    let mem = snap.join("memory.bin");
    let len = std::fs::metadata(&mem).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = env.run(&["vm", "restore", snap_s, "--name", "snap-c"]);
    assert!(
        text(&o.stderr).contains("bytes, the manifest says"),
        "{}",
        text(&o.stderr)
    );
    assert!(!env.leftovers().contains(&"snap-c".to_string()));

    ok(&env.run(&["vm", "stop", "snap-a"]));
    ok(&env.run(&["vm", "stop", "snap-b"]));
    env.assert_clean();
}

#[test]
fn functions_run_each_invocation_in_a_fresh_clone() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env("KOBAKO_STATE", state.path());
        c
    };
    let o = cmd(&[
        "fn",
        "deploy",
        "kbt-upper",
        "--memory",
        "96M",
        "--concurrency",
        "1",
        "--timeout",
        "3",
        "--run",
        "if [ \"$(cat /tmp/seen 2>/dev/null)\" ]; then echo dirty; fi; echo x > /tmp/seen; \
         tr a-z A-Z; echo \"$(hostname) $(cat /etc/machine-id)\"; \
         exit 0",
    ])
    .output()
    .unwrap();
    ok(&o);
    let invoke = |input: &str| {
        let mut c = cmd(&["fn", "invoke", "kbt-upper"]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut ch = c.spawn().unwrap();
        use std::io::Write;
        ch.stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        ch.wait_with_output().unwrap()
    };
    let a = invoke("hello\n");
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    let out_a = text(&a.stdout);
    assert!(out_a.starts_with("HELLO\n"), "{out_a}");
    // Every invocation starts from the deployed state (no /tmp/seen) with its own identity.
    let b = invoke("again\n");
    let out_b = text(&b.stdout);
    assert!(
        !out_b.contains("dirty"),
        "a clone saw the previous one's file: {out_b}"
    );
    let id = |s: &str| s.lines().nth(1).unwrap_or_default().to_string();
    assert_ne!(
        id(&out_a),
        id(&out_b),
        "two clones share hostname/machine-id"
    );
    // Three at once with one slot: all answer (one after the other).
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let mut c = cmd(&["fn", "invoke", "kbt-upper", "--json"]);
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for h in hs {
        let o = h.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
        assert_eq!(v["code"], 0, "{v}");
        assert!(v["timings"]["restore_ms"].as_u64().unwrap() > 0);
    }
    // A handler that runs too long is killed: status 124, the clone is gone.
    ok(&cmd(&[
        "fn",
        "deploy",
        "kbt-slow",
        "--memory",
        "96M",
        "--timeout",
        "1",
        "--run",
        "sleep 30",
    ])
    .output()
    .unwrap());
    let o = cmd(&["fn", "invoke", "kbt-slow"]).output().unwrap();
    assert_eq!(o.status.code(), Some(124), "{}", text(&o.stderr));
    let ls = ok(&cmd(&["fn", "ls", "--json"]).output().unwrap());
    assert!(ls.contains("kbt-upper") && ls.contains("kbt-slow"), "{ls}");
    let o = cmd(&["fn", "invoke", "nosuch"]).output().unwrap();
    assert!(
        text(&o.stderr).contains("no function 'nosuch'"),
        "{}",
        text(&o.stderr)
    );
    ok(&cmd(&["fn", "rm", "kbt-upper"]).output().unwrap());
    ok(&cmd(&["fn", "rm", "kbt-slow"]).output().unwrap());
    env.assert_clean();
}
