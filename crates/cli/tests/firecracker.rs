//! `--runtime firecracker`: the vmm runtime running another VMM that speaks Firecracker's API,
//! found as `firecracker` on PATH.
//!
//! Firecracker itself is not installed on these hosts, so the test puts a copy of kobako-vmm
//! named `firecracker` in a directory of its own on PATH: the runtime finds it there through
//! the ordinary lookup, the supervisor execs it inside kobako's jail with Firecracker's
//! command line and configuration (none of kobako-vmm's extensions), and the test checks the
//! process that runs is that file (`/proc/PID/exe`, its name), that it answers on the VM's API
//! socket with the configuration it was given, and that its serial console (its standard
//! output, as Firecracker's) reaches `console.log` and `console.sock`. It does not wait for the
//! guest to boot (minutes on a PVM host). Without Firecracker on PATH the runtime says so at
//! once, before anything is built or started.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A PATH holding nothing but an empty directory.
fn empty_path(env: &Env) -> PathBuf {
    let d = env.run.path().join("empty-bin");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn firecracker_missing_from_path_is_said_at_once_and_nothing_starts() {
    let env = Env::new();
    let path = empty_path(&env);
    let want = format!(
        "kobako: error: runtime firecracker: no `firecracker` on PATH (searched: {}); install \
         Firecracker or use --runtime vmm",
        path.display()
    );
    // By flag and by environment; the image does not exist either, and is never looked at: the
    // missing VMM is said first.
    for (args, env_runtime) in [
        (
            vec![
                "vm",
                "run",
                "-d",
                "--runtime",
                "firecracker",
                "--name",
                "fc-missing",
            ],
            None,
        ),
        (
            vec![
                "vm",
                "run",
                "-d",
                "--image",
                "no-such-image",
                "--name",
                "fc-missing",
            ],
            Some("firecracker"),
        ),
    ] {
        let t = Instant::now();
        let mut c = env.cmd(&args);
        c.env("PATH", &path);
        if let Some(r) = env_runtime {
            c.env("KOBAKO_RUNTIME", r);
        }
        let o = c.output().unwrap();
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim(), want);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        env.assert_clean();
    }
}

#[test]
fn vmm_bin_is_checked_before_anything_starts() {
    let env = Env::new();
    let missing = env.run.path().join("no-such-vmm");
    let not_exec = env.run.path().join("not-executable");
    std::fs::write(&not_exec, b"").unwrap();
    for (args, needle) in [
        (
            vec![
                "--runtime",
                "firecracker",
                "--vmm-bin",
                missing.to_str().unwrap(),
            ],
            format!("--vmm-bin {}: No such file", missing.display()),
        ),
        (
            vec!["--runtime", "vmm", "--vmm-bin", not_exec.to_str().unwrap()],
            format!("--vmm-bin {}: not an executable file", not_exec.display()),
        ),
        (
            vec!["--runtime", "qemu", "--vmm-bin", "/bin/true"],
            "--vmm-bin needs --runtime vmm or --runtime firecracker".into(),
        ),
        (
            vec!["--runtime", "firecrackers"],
            "--runtime firecrackers: use auto, qemu, vmm or firecracker".into(),
        ),
    ] {
        let mut a = vec!["vm", "run", "-d", "--name", "fc-bin"];
        a.extend(args);
        assert_fails_with(&env, &a, &needle);
        env.assert_clean();
    }
}

/// A stand-in VMM (a shell script, run by the supervisor in the jail like any VMM) that prints
/// a line and exits with `code` at once, without binding its API socket.
fn exiting_vmm(env: &Env, dir: &str, code: i32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = env.run.path().join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("firecracker");
    std::fs::write(
        &p,
        format!("#!/bin/sh\necho 'stand-in VMM ran'\nexit {code}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// How many times the supervisor started the VM process, from the tail of `supervisor.log`
/// that the failure reports (5 lines at most: the supervisor's quick-reboot limit).
fn starts(stderr: &str) -> usize {
    stderr.matches("kobako supervise: VM process").count()
}

/// The exit status of the VM process means what it means for the program that ran: 0 is the
/// guest's reset for Firecracker (the supervisor starts it again, up to its quick-reboot
/// limit) and a power-off for kobako-vmm (it ends); 80 is kobako-vmm's reset and nothing of
/// Firecracker's; the failure names the status the way that VMM does.
#[test]
fn exit_statuses_are_read_as_the_vmm_that_ran_means_them() {
    if !kvm_usable() {
        eprintln!("firecracker: SKIPPED: no usable /dev/kvm here (the runtime needs one)");
        return;
    }
    let env = Env::new();
    let run = |runtime: &str, vmm: &Path, name: &str| {
        let o = env.run(&[
            "vm",
            "run",
            "-d",
            "--runtime",
            runtime,
            "--vmm-bin",
            vmm.to_str().unwrap(),
            "--name",
            name,
            "--memory",
            "64M",
        ]);
        assert!(!o.status.success());
        env.assert_clean();
        text(&o.stderr)
    };
    let zero = exiting_vmm(&env, "exit0", 0);
    let e = run("firecracker", &zero, "fc-exit0");
    assert!(
        e.contains("status 0: the guest reset without announcing it")
            && e.contains("Firecracker exits 0 on a guest reset"),
        "{e}"
    );
    assert_eq!(
        starts(&e),
        5,
        "a reset starts it again, 5 quick ones at most: {e}"
    );
    // Its standard output is the console.
    assert!(e.contains("| stand-in VMM ran"), "{e}");
    let e = run("vmm", &zero, "vmm-exit0");
    assert!(e.contains("status 0: the guest powered off"), "{e}");
    assert_eq!(starts(&e), 1, "{e}");
    let eighty = exiting_vmm(&env, "exit80", 80);
    let e = run("vmm", &eighty, "vmm-exit80");
    assert!(e.contains("status 80: the guest reset"), "{e}");
    assert_eq!(starts(&e), 5, "{e}");
    let e = run("firecracker", &eighty, "fc-exit80");
    assert!(e.contains("VM process exited with status 80"), "{e}");
    assert!(!e.contains("reset"), "{e}");
    assert_eq!(starts(&e), 1, "{e}");
    let bad = exiting_vmm(&env, "exit153", 153);
    let e = run("firecracker", &bad, "fc-exit153");
    assert!(
        e.contains("status 153: the VMM refused its command line"),
        "{e}"
    );
}

/// kobako-vmm's executable, built (or found up to date) beside the kobako under test.
fn kobako_vmm() -> PathBuf {
    let kobako = Path::new(KOBAKO);
    let profile_dir = kobako.parent().unwrap();
    let mut c = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    c.args(["build", "-q", "-p", "kobako-vmm", "--bin", "kobako-vmm"])
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let status = c.status().unwrap();
    assert!(status.success(), "cargo build -p kobako-vmm: {status}");
    let vmm = profile_dir.join("kobako-vmm");
    assert!(vmm.is_file(), "{} missing", vmm.display());
    vmm
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a Firecracker API socket: (status, body).
fn api_get(sock: &Path, path: &str) -> (u16, serde_json::Value) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "API closed: {}", text(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let t = text(&buf);
        if let Some((head, body)) = t.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                break (head.to_string(), body[..len].to_string());
            }
        }
    };
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

use kobako_runtime::vmm::flavor::FIRECRACKER_FLAGS;

#[test]
fn firecracker_on_path_is_the_vm_process_and_gets_firecracker_configuration() {
    if !kvm_usable() {
        eprintln!("firecracker: SKIPPED: no usable /dev/kvm here (the runtime needs one)");
        return;
    }
    let env = Env::new();
    // `firecracker` on PATH: a copy of kobako-vmm (its own file, so /proc/PID/exe tells it
    // from kobako-vmm), first on PATH.
    let bin = env.run.path().join("fc-bin");
    std::fs::create_dir(&bin).unwrap();
    let fc = bin.join("firecracker");
    std::fs::copy(kobako_vmm(), &fc).unwrap();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    // On a PVM host only the PVM-tolerant kernel runs at all (scripts/test.sh builds it first);
    // it boots for minutes, which this test does not wait for. Elsewhere the default kernel.
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let kernel = std::env::var("KOBAKO_PVM_KERNEL")
        .unwrap_or_else(|_| format!("{}/kernel-pvm/vmlinux", kobako_image::cache::DEFAULT_ROOT));
    let name = "fc-path";
    let mut args = vec![
        "vm",
        "run",
        "-d",
        "--json",
        "--runtime",
        "firecracker",
        "--name",
        name,
        "--memory",
        "64M",
        "--timeout",
        "900",
        // The kernel's messages on the serial console from the start.
        "--cmdline",
        "loglevel=8",
    ];
    if pvm {
        assert!(
            Path::new(&kernel).exists(),
            "{kernel} missing: build it with crates/vmm/guest-pvm/build.sh"
        );
        args.extend(["--kernel", &kernel]);
    }
    let run = env
        .cmd(&args)
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let vm_dir = env.vms_dir().join(name);
    let pid: i32 = wait_for("the VM process", Duration::from_secs(60), || {
        let pid = std::fs::read_to_string(vm_dir.join("vm.pid")).ok()?;
        let pid = pid.trim().parse().ok()?;
        // Listening, not only bound: the socket file appears at bind(), before listen().
        std::os::unix::net::UnixStream::connect(vm_dir.join("vmm/api.sock"))
            .is_ok()
            .then_some(pid)
    });

    // The VM process is the file found on PATH, run under its name.
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    let ours = std::fs::metadata(&fc).unwrap();
    assert_eq!((exe.dev(), exe.ino()), (ours.dev(), ours.ino()));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "firecracker");
    // Jailed like kobako-vmm: not root.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid_line.split_whitespace().any(|u| u == "0"), "{uid_line}");

    // Firecracker's command line, nothing of kobako-vmm's own.
    let launch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm_dir.join("launch.json")).unwrap()).unwrap();
    let argv: Vec<String> = serde_json::from_value(launch["argv"].clone()).unwrap();
    assert_eq!(Path::new(&argv[0]), fc);
    for a in argv.iter().filter(|a| a.starts_with("--")) {
        assert!(FIRECRACKER_FLAGS.contains(&a.as_str()), "{a} in {argv:?}");
    }
    assert!(argv.contains(&"--config-file".to_string()), "{argv:?}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(text)
        .collect();
    assert_eq!(
        cmdline[1..],
        argv[1..],
        "the process runs the recorded argv"
    );
    assert_eq!(launch["runtime"], "firecracker");
    assert_eq!(launch["reset_exit_code"], 0);
    assert_eq!(launch["channel"]["boot_signal"], false);

    // It answers on the VM's API socket, with the configuration it was given: kobako's,
    // without kobako-vmm's extensions.
    let sock = vm_dir.join("vmm/api.sock");
    let (code, info) = api_get(&sock, "/");
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["id"], name);
    assert!(matches!(info["state"].as_str(), Some("Running")), "{info}");
    let (code, got) = api_get(&sock, "/vm/config");
    assert_eq!(code, 200, "{got}");
    let given: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm_dir.join("vmm.json")).unwrap()).unwrap();
    assert!(given.get("serial").is_none(), "{given}");
    let boot_args = given["boot-source"]["boot_args"].as_str().unwrap();
    assert!(!boot_args.contains("kobako.bootmark"), "{boot_args}");
    assert_eq!(got["boot-source"]["boot_args"], boot_args);
    assert_eq!(
        got["boot-source"]["kernel_image_path"],
        given["boot-source"]["kernel_image_path"]
    );
    assert_eq!(got["machine-config"]["mem_size_mib"], 64);
    assert_eq!(got["vsock"]["uds_path"], given["vsock"]["uds_path"]);
    assert!(got.get("serial").is_none(), "{got}");

    // Its serial console is its standard output: the supervisor keeps it in console.log and
    // serves it on console.sock.
    let mut console = std::os::unix::net::UnixStream::connect(vm_dir.join("console.sock")).unwrap();
    console
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut seen = Vec::new();
    let t = Instant::now();
    while !text(&seen).contains("Linux version") {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no kernel banner on console.sock: {:?}",
            text(&seen)
        );
        let mut buf = [0u8; 4096];
        if let Ok(n) = console.read(&mut buf) {
            assert!(n > 0, "console.sock closed");
            seen.extend_from_slice(&buf[..n]);
        }
        // The log has it from the start, whenever the client connected.
        if text(&std::fs::read(vm_dir.join("console.log")).unwrap()).contains("Linux version") {
            break;
        }
    }
    wait_for("the banner in console.log", Duration::from_secs(30), || {
        text(&std::fs::read(vm_dir.join("console.log")).unwrap())
            .contains("Linux version")
            .then_some(())
    });

    // `vm ls -o wide` names the runtime; `vm rm -f` ends it all.
    let ls = ok(&env.run(&["vm", "ls", "-o", "wide"]));
    assert!(ls.contains("firecracker"), "{ls}");
    // On a host whose KVM runs standard guests the guest may be up by now: `vm run` has then
    // finished; otherwise it still waits for the agent, and goes when the VM does.
    ok(&env.run(&["vm", "rm", "-f", name]));
    let out = run
        .wait_with_output_timeout(Duration::from_secs(60))
        .expect("vm run did not end with its VM");
    if !out.status.success() {
        assert!(text(&out.stderr).contains(name), "{}", text(&out.stderr));
    }
    env.assert_clean();
}
