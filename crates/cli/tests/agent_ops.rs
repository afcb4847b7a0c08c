//! Real-guest tests of the agent's operations: exec (concurrency, TTY, users, timeouts), file
//! copy (integrity, errors, interrupted transfers), network configuration on a real tap in a
//! test namespace, supervised services.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use kobako_agent::proto::{ExecRequest, IfaceConfig, NetConfig, Restart, RouteConfig, ServiceSpec};
use kobako_runtime::agent::AgentClient;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(env: &Env, name: &str) -> AgentClient {
    let sock = env.run.path().join("vms").join(name).join("agent.sock");
    let c = AgentClient::connect(&sock).await.unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    c
}

fn sha256_file(p: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn hundred_concurrent_execs_all_complete() {
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "t-conc"]));
    rt().block_on(async {
        let c = std::sync::Arc::new(client(&env, "t-conc").await);
        let started = Instant::now();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.exec(ExecRequest {
                        argv: vec![
                            "sh".into(),
                            "-c".into(),
                            format!("echo n{i}; echo e{i} >&2"),
                        ],
                        ..Default::default()
                    })
                    .await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let o = t.await.unwrap().unwrap();
            assert_eq!(o.code, Some(0));
            assert_eq!(o.stdout_str(), format!("n{i}\n"));
            assert_eq!(String::from_utf8_lossy(&o.stderr), format!("e{i}\n"));
        }
        eprintln!("100 concurrent execs in {:?}", started.elapsed());
        // Round-trip latency of a trivial exec, for the issue note.
        let t = Instant::now();
        for _ in 0..20 {
            c.exec(ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        }
        eprintln!("exec round trip: {:?} per `true`", t.elapsed() / 20);
    });
    ok(&env.run(&["vm", "stop", "t-conc"]));
    env.assert_clean();
}

#[test]
fn exec_tty_user_stdin_and_timeout() {
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "t-tty"]));
    // A terminal: the command sees a pty.
    let o = env.run(&["exec", "-t", "t-tty", "--", "tty"]);
    assert!(text(&o.stdout).contains("/dev/pts/"), "{}", text(&o.stdout));
    // An interactive shell session fed from a pipe.
    let mut child = env
        .cmd(&["exec", "-i", "-t", "t-tty", "--", "/bin/sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"echo shell-$((6*7))\nexit 5\n").unwrap();
    }
    let out = child
        .wait_with_output_timeout(Duration::from_secs(60))
        .expect("interactive shell did not exit");
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stdout).contains("shell-42"),
        "{}",
        text(&out.stdout)
    );
    // Piped stdin without a terminal.
    let mut child = env
        .cmd(&["exec", "-i", "t-tty", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&[b'x'; 100_000]).unwrap();
    }
    let out = child
        .wait_with_output_timeout(Duration::from_secs(60))
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "100000");
    // Another user.
    let o = env.run(&["exec", "--user", "1000", "t-tty", "--", "id", "-u"]);
    assert_eq!(ok(&o).trim(), "1000");
    let o = env.run(&["exec", "--user", "nobody-here", "t-tty", "--", "id"]);
    assert!(text(&o.stderr).contains("no user 'nobody-here'"));
    // Timeout kills the command and says so.
    let t = Instant::now();
    let o = env.run(&["exec", "--timeout", "1", "t-tty", "--", "sleep", "30"]);
    assert_eq!(o.status.code(), Some(128 + 9));
    assert!(text(&o.stderr).contains("killed after 1 s"));
    assert!(t.elapsed() < Duration::from_secs(20));
    ok(&env.run(&["vm", "stop", "t-tty"]));
    env.assert_clean();
}

#[test]
fn copy_100_mib_in_and_out_and_directories() {
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "t-cp", "--memory", "512M"]));
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&big).unwrap();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..100 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&buf).unwrap();
        }
    }
    let want = sha256_file(&big);
    let t = Instant::now();
    ok(&env.run(&["cp", big.to_str().unwrap(), "t-cp:/tmp/"]));
    let up = t.elapsed();
    let guest_sum = ok(&env.run(&["exec", "t-cp", "--", "sha256sum", "/tmp/big.bin"]));
    assert!(
        guest_sum.starts_with(&want),
        "guest: {guest_sum} want {want}"
    );
    let back = d.path().join("back.bin");
    let t = Instant::now();
    ok(&env.run(&["cp", "t-cp:/tmp/big.bin", back.to_str().unwrap()]));
    let down = t.elapsed();
    assert_eq!(sha256_file(&back), want);
    eprintln!(
        "100 MiB copy: in {:.1} MiB/s, out {:.1} MiB/s",
        100.0 / up.as_secs_f64(),
        100.0 / down.as_secs_f64()
    );

    // Directories, both ways, with modes.
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha").unwrap();
    std::fs::write(tree.join("sub/deeper/b.sh"), "#!/bin/sh\necho beta\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tree.join("sub/deeper/b.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    ok(&env.run(&["cp", tree.to_str().unwrap(), "t-cp:/root"]));
    assert_eq!(
        ok(&env.run(&["exec", "t-cp", "--", "/root/tree/sub/deeper/b.sh"])),
        "beta\n"
    );
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    ok(&env.run(&["cp", "t-cp:/root/tree", out_dir.to_str().unwrap()]));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("tree/a.txt")).unwrap(),
        "alpha"
    );
    assert!(out_dir.join("tree/sub/deeper/b.sh").is_file());
    ok(&env.run(&["vm", "stop", "t-cp"]));
    env.assert_clean();
}

#[test]
fn copy_errors_are_clear_and_leave_no_partial_files() {
    let env = Env::new();
    // Room for the interrupted 200 MiB upload in /tmp (a tmpfs of half the RAM).
    ok(&env.run(&["vm", "run", "-d", "--name", "t-cperr", "--memory", "512M"]));
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f.bin");
    std::fs::write(&f, vec![7u8; 4 << 20]).unwrap();
    let fs = f.to_str().unwrap();

    let o = env.run(&["cp", fs, "t-cperr:/no/such/dir/"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("does not exist in the guest"),
        "{}",
        text(&o.stderr)
    );

    // A full disk: a 1 MiB tmpfs.
    ok(&env.run(&[
        "exec",
        "t-cperr",
        "--",
        "sh",
        "-c",
        "mkdir -p /small && mount -t tmpfs -o size=1m tmpfs /small",
    ]));
    let o = env.run(&["cp", fs, "t-cperr:/small/"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("disk is full"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        ok(&env.run(&["exec", "t-cperr", "--", "ls", "-A", "/small"])),
        ""
    );

    // Missing source in the guest; nothing created on the host.
    let o = env.run(&["cp", "t-cperr:/nope", d.path().to_str().unwrap()]);
    assert!(
        text(&o.stderr).contains("no such file"),
        "{}",
        text(&o.stderr)
    );
    assert!(!d.path().join("nope").exists());

    // The host goes away mid-upload: the guest removes the partial file.
    let big = d.path().join("big.bin");
    std::fs::write(&big, vec![1u8; 200 << 20]).unwrap();
    let mut child = env
        .cmd(&["cp", big.to_str().unwrap(), "t-cperr:/tmp/"])
        .spawn()
        .unwrap();
    // Kill the client once the partial file exists in the guest.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ls = ok(&env.run(&["exec", "t-cperr", "--", "ls", "-A", "/tmp"]));
        if ls.contains("kobako-part") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut leftover = String::new();
    for _ in 0..50 {
        leftover = ok(&env.run(&["exec", "t-cperr", "--", "ls", "-A", "/tmp"]));
        if leftover.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(leftover.trim(), "", "partial upload left in the guest");

    // The guest goes away mid-download: a clear error, no partial file on the host.
    ok(&env.run(&[
        "exec",
        "t-cperr",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/tmp/big",
        "bs=1M",
        "count=200",
    ]));
    let dl = d.path().join("dl");
    std::fs::create_dir(&dl).unwrap();
    let child = env
        .cmd(&["cp", "t-cperr:/tmp/big", dl.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the VM once data arrives in the host-side partial file (it is created before the
    // request is sent: killing at its mere existence could come before the download began).
    let deadline = Instant::now() + Duration::from_secs(60);
    let receiving = || {
        std::fs::read_dir(&dl)
            .unwrap()
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
    };
    while Instant::now() < deadline && !receiving() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = std::fs::read_to_string(env.run.path().join("vms/t-cperr/vm.pid")).unwrap();
    std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    let out = child
        .wait_with_output_timeout(Duration::from_secs(60))
        .expect("cp did not end after the VM died");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("closed during the download"), "{err}");
    assert_eq!(
        std::fs::read_dir(&dl).unwrap().count(),
        0,
        "partial download left on the host"
    );
    env.assert_clean();
    let o = env.run(&["exec", "t-cperr", "--", "true"]);
    assert!(text(&o.stderr).contains("no VM named 't-cperr'"));
}

#[test]
fn exec_on_a_stopped_vm_is_a_clear_error() {
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "t-gone"]));
    ok(&env.run(&["vm", "stop", "t-gone"]));
    let o = env.run(&["exec", "t-gone", "--", "true"]);
    assert!(text(&o.stderr).contains("no VM named 't-gone'"));
    env.assert_clean();
}

/// A test namespace with a tap, removed on drop.
struct TestNs(String);

impl TestNs {
    fn new(name: &str, tap: &str, host_cidr: &str) -> TestNs {
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .status();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "tuntap", "add", tap, "mode", "tap"]);
        ip(&["-n", name, "addr", "add", host_cidr, "dev", tap]);
        ip(&["-n", name, "link", "set", tap, "up"]);
        TestNs(name.into())
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn network_config_applies_on_a_real_tap() {
    let env = Env::new();
    let _ns = TestNs::new("kbt-agentnet", "kbtap0", "10.251.7.1/24");
    // `vm run` has no NIC flags yet (labs attach NICs); drive the runtime API directly.
    rt().block_on(async {
        use kobako_runtime::config::{Nic, VmConfig};
        use kobako_runtime::Runtime;
        // The runtime here runs in this process (its setter), the supervisor it starts is the
        // binary (the environment it inherits).
        std::env::set_var("KOBAKO_RUN", env.run.path());
        kobako_runtime::vmdir::set_run_root(env.run.path().to_path_buf());
        if let Some(p) = std::env::var_os("KOBAKO_CACHE") {
            kobako_image::cache::set_root(p.into());
        }
        if let Some(p) = std::env::var_os("KOBAKO_AGENT") {
            kobako_image::tiny::set_agent(p.into());
        }
        let kernel = kobako_image::kernel::cached().expect("default kernel built");
        let agent = kobako_image::tiny::find_agent().unwrap();
        let tiny = kobako_image::tiny::cached(&agent).expect("tiny image built");
        let cfg = VmConfig {
            name: "t-net".into(),
            kernel: kernel.vmlinux,
            kernel_kind: kobako_runtime::config::KernelKind::ElfPvh,
            root: kobako_runtime::config::Root::Initramfs {
                path: tiny.initramfs,
            },
            vcpus: 1,
            memory_mib: 128,
            extra_cmdline: String::new(),
            accel: kobako_runtime::host::detect_accel().accel,
            ready_timeout_secs: 60,
            owned_paths: vec![],
            extra_disks: vec![],
            nics: vec![Nic {
                tap: "kbtap0".into(),
                mac: "52:54:00:aa:bb:01".into(),
            }],
            netns: Some("kbt-agentnet".into()),
            incoming: None,
            cgroups: Vec::new(),
            memory_file: None,
            named_ram: false,
            free_page_reporting: false,
            shares: Vec::new(),
        };
        let rt = kobako_runtime::qemu::QemuRuntime::new(KOBAKO.into());
        let vm = rt.create(&cfg).await.unwrap();
        rt.start(&vm).await.unwrap();
        let (c, _) = kobako_runtime::wait_ready(&vm, Duration::from_secs(60))
            .await
            .unwrap();
        c.net_config(NetConfig {
            hostname: Some("netbox".into()),
            interfaces: vec![IfaceConfig {
                name: String::new(),
                mac: Some("52:54:00:aa:bb:01".into()),
                rename: Some("lan0".into()),
                addresses: vec!["10.251.7.2/24".into(), "fd00:7::2/64".into()],
                mtu: Some(1400),
                up: true,
            }],
            routes: vec![RouteConfig {
                dst: "10.99.0.0/16".into(),
                via: Some("10.251.7.1".into()),
                dev: None,
                metric: None,
            }],
            hosts: vec!["10.251.7.1 gateway".into()],
            dns: vec!["10.251.7.1".into()],
        })
        .await
        .unwrap();
        let sh = |cmd: &str| ExecRequest {
            argv: vec!["sh".into(), "-c".into(), cmd.into()],
            ..Default::default()
        };
        let addr = c.exec(sh("ip addr show lan0")).await.unwrap().stdout_str();
        assert!(addr.contains("10.251.7.2/24"), "{addr}");
        assert!(addr.contains("fd00:7::2/64"), "{addr}");
        assert!(addr.contains("mtu 1400"), "{addr}");
        let routes = c.exec(sh("ip route")).await.unwrap().stdout_str();
        assert!(routes.contains("10.99.0.0/16 via 10.251.7.1"), "{routes}");
        let ping = c.exec(sh("ping -c 2 -W 5 gateway")).await.unwrap();
        assert_eq!(ping.code, Some(0), "{}", ping.stdout_str());
        assert_eq!(
            c.exec(sh("hostname")).await.unwrap().stdout_str().trim(),
            "netbox"
        );
        // A bad address is refused with the item named; nothing else changes.
        let e = c
            .net_config(NetConfig {
                interfaces: vec![IfaceConfig {
                    name: "lan0".into(),
                    addresses: vec!["10.1.2.3/99".into()],
                    up: true,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("10.1.2.3/99"), "{e}");
        let e = c
            .net_config(NetConfig {
                interfaces: vec![IfaceConfig {
                    name: "eth9".into(),
                    up: true,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no interface 'eth9'"), "{e}");
        rt.stop(&vm, Duration::from_secs(10)).await.unwrap();
    });
    env.assert_clean();
}

#[test]
fn a_crashing_service_is_restarted_and_its_log_kept() {
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "t-svc"]));
    rt().block_on(async {
        let c = client(&env, "t-svc").await;
        c.set_services(vec![
            ServiceSpec {
                name: "crashy".into(),
                command: "echo started at $(cut -d' ' -f1 /proc/uptime); sleep 0.3; exit 3".into(),
                restart: Restart::Always,
                ..Default::default()
            },
            ServiceSpec {
                name: "steady".into(),
                command: "while true; do sleep 1; done".into(),
                restart: Restart::OnFailure,
                ..Default::default()
            },
        ])
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let crashy = loop {
            let st = c.service_status().await.unwrap();
            let crashy = st.iter().find(|s| s.name == "crashy").unwrap().clone();
            if crashy.restarts >= 2 || Instant::now() > deadline {
                break crashy;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(crashy.restarts >= 2, "{crashy:?}");
        assert_eq!(crashy.last_exit.as_deref(), Some("exited with status 3"));
        let st = c.service_status().await.unwrap();
        assert!(st.iter().find(|s| s.name == "steady").unwrap().running);
        let log = c.service_logs("crashy", 4096).await.unwrap();
        assert!(log.matches("started at").count() >= 2, "{log}");
        let e = c.service_logs("ghost", 10).await.unwrap_err();
        assert!(e.to_string().contains("no service 'ghost'"));
        // Removing a service stops it.
        c.set_services(vec![]).await.unwrap();
        assert!(c.service_status().await.unwrap().is_empty());
        let ps = c
            .exec(ExecRequest {
                argv: vec!["ps".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .stdout_str();
        assert!(!ps.contains("while true"), "{ps}");
    });
    ok(&env.run(&["vm", "stop", "t-svc"]));
    env.assert_clean();
}

#[test]
fn guest_out_of_memory_kills_the_hog_not_the_vm() {
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "t-oom", "--memory", "96M"]));
    // `sort` keeps its one endless line in memory until the OOM killer takes it.
    let o = env.run(&[
        "exec",
        "t-oom",
        "--",
        "sh",
        "-c",
        "head -c 400000000 /dev/zero | sort >/dev/null",
    ]);
    assert!(!o.status.success(), "the memory hog survived?");
    // The agent (PID 1) is still there, so is the VM.
    assert_eq!(
        ok(&env.run(&["exec", "t-oom", "--", "echo", "alive"])),
        "alive\n"
    );
    ok(&env.run(&["vm", "stop", "t-oom"]));
    env.assert_clean();
}
