//! Real-guest lab tests: `kobako up` of an example lab file, the network paths it declares (and
//! only those), `down` leaving nothing behind, `up` twice converging.

mod common;

use common::*;

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
fn three_networks_declared_paths_work_and_undeclared_do_not() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let file = env.example_as("three-networks.yaml", "kbt-paths");
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "kbt-paths",
    };
    let o = lab_cmd(&env, state.path(), &["up", file.to_str().unwrap()]);
    let out = ok(&o);
    assert!(out.contains("5 of 5 VMs ready"), "{out}");
    assert!(netns_exists("kb-kbt-paths"));

    let hosts = [
        ("a", "10.1.0.10"),
        ("b", "10.2.0.10"),
        ("c", "10.3.0.10"),
        ("island", "10.4.0.10"),
    ];
    let mut failures = Vec::new();
    for (from, _) in &hosts {
        for (to, ip) in &hosts {
            if from == to {
                continue;
            }
            // Declared: a, b and c reach each other through core.router; island reaches nobody.
            let declared = *from != "island" && *to != "island";
            let o = lab_cmd(
                &env,
                state.path(),
                &[
                    "exec",
                    &format!("kbt-paths.{from}.host"),
                    "--",
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "3",
                    ip,
                ],
            );
            if o.status.success() != declared {
                failures.push(format!(
                    "{from} -> {to} ({ip}): {} but should {}",
                    if o.status.success() {
                        "reachable"
                    } else {
                        "unreachable"
                    },
                    if declared { "be reachable" } else { "not be" }
                ));
            }
        }
    }
    // The router reaches every network it joins, not the island.
    for (ip, declared) in [
        ("10.1.0.10", true),
        ("10.3.0.10", true),
        ("10.4.0.10", false),
    ] {
        let o = lab_cmd(
            &env,
            state.path(),
            &[
                "exec",
                "kbt-paths.core.router",
                "--",
                "ping",
                "-c",
                "1",
                "-W",
                "3",
                ip,
            ],
        );
        if o.status.success() != declared {
            failures.push(format!("router -> {ip}: wrong reachability"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Interfaces carry the names and addresses of the lab file.
    let addr = ok(&lab_cmd(
        &env,
        state.path(),
        &["exec", "kbt-paths.core.router", "--", "ip", "-4", "addr"],
    ));
    for want in [
        "eth1",
        "10.1.0.1/24",
        "eth2",
        "10.2.0.1/24",
        "eth3",
        "10.3.0.1/24",
    ] {
        assert!(addr.contains(want), "{want} missing in {addr}");
    }

    // `up` again converges: nothing restarted, nothing duplicated.
    let pid_before =
        std::fs::read_to_string(env.run.path().join("vms/kbt-paths.a.host/vm.pid")).unwrap();
    let out = ok(&lab_cmd(
        &env,
        state.path(),
        &["up", file.to_str().unwrap()],
    ));
    assert!(out.contains("5 of 5 VMs ready"), "{out}");
    let pid_after =
        std::fs::read_to_string(env.run.path().join("vms/kbt-paths.a.host/vm.pid")).unwrap();
    assert_eq!(pid_before, pid_after, "up restarted a running VM");
    assert_eq!(env.leftovers().len(), 5);

    let ls = ok(&lab_cmd(&env, state.path(), &["ls", "--json"]));
    assert!(ls.contains("\"kbt-paths\""), "{ls}");

    // The example scenario for this lab passes (router paused: a and b cut apart, then back).
    let scn = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/scenarios/router-failure.yaml");
    let o = lab_cmd(
        &env,
        state.path(),
        &[
            "scenario",
            "run",
            scn.to_str().unwrap(),
            "--lab",
            "kbt-paths",
        ],
    );
    let out = ok(&o);
    assert!(out.contains("PASSED"), "{out}{}", text(&o.stderr));

    ok(&lab_cmd(&env, state.path(), &["down", "kbt-paths"]));
    env.assert_clean();
    assert!(!netns_exists("kb-kbt-paths"), "namespace left behind");
    let ls = ok(&lab_cmd(&env, state.path(), &["ls", "--json"]));
    assert_eq!(ls.trim(), "[]", "state left after down: {ls}");
    // Down twice: a clear error, nothing else.
    let o = lab_cmd(&env, state.path(), &["down", "kbt-paths"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("not up"), "{}", text(&o.stderr));
}

#[test]
fn a_bad_lab_file_starts_nothing() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = env.run.path().join("bad.yaml");
    std::fs::write(
        &p,
        "name: kbt-bad\nnodes:\n  web:\n    vms:\n      api: { memory: 10T }\nlinks:\n  - endpoints: [\"web.ap:eth1\", \"web.api:eth2\"]\n",
    )
    .unwrap();
    let o = lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
    assert!(!netns_exists("kb-kbt-bad"));
    env.assert_clean();
}

/// The shortest round trip of `ping -c N` from `vm` to `addr`, in ms (None: no reply). The
/// minimum, because the first echo also waits for ARP and TCG adds noise to the rest.
fn rtt_ms(env: &Env, state: &std::path::Path, vm: &str, addr: &str, n: &str) -> Option<f64> {
    let o = lab_cmd(
        env,
        state,
        &["exec", vm, "--", "ping", "-c", n, "-W", "3", addr],
    );
    let out = text(&o.stdout);
    eprintln!("ping {vm} -> {addr}: {out}{}", text(&o.stderr));
    // busybox: "round-trip min/avg/max = 0.263/0.301/0.340 ms"
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    let nums = line
        .split('=')
        .nth(1)?
        .trim()
        .split(' ')
        .next()?
        .to_string();
    nums.split('/').next()?.parse().ok()
}

fn netd_running(lab: &str) -> bool {
    let needle = format!("lab\0netd\0{lab}\0");
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&needle))
            .unwrap_or(false)
    })
}

/// A lab file of two tiny VMs `a.h` and `b.h` joined by link `ab` (`NET.1/30` and `NET.2/30`).
fn two_hosts(env: &Env, lab: &str, net: &str) -> std::path::PathBuf {
    let p = env.run.path().join(format!("{lab}.yaml"));
    std::fs::write(
        &p,
        format!(
            r#"name: {lab}
defaults: {{ image: tiny, memory: 96M }}
nodes:
  a:
    vms:
      h: {{ interfaces: {{ eth1: {{ addresses: [{net}.1/30] }} }} }}
  b:
    vms:
      h: {{ interfaces: {{ eth1: {{ addresses: [{net}.2/30] }} }} }}
links:
  - {{ name: ab, endpoints: ["a.h:eth1", "b.h:eth1"] }}
"#
        ),
    )
    .unwrap();
    p
}

#[test]
fn link_down_cuts_traffic_impair_changes_rtt_and_restart_reboots() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = two_hosts(&env, "kbt-link", "10.77.0");
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "kbt-link",
    };
    let out = ok(&lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]));
    assert!(out.contains("2 of 2 VMs ready"), "{out}");
    // `a.h` is NODE.VM of the one lab that has it.
    let base = rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "3").expect("link up: no ping");

    ok(&lab_cmd(
        &env,
        state.path(),
        &["link", "kbt-link/ab", "down"],
    ));
    assert!(
        rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "2").is_none(),
        "link down: ping still passes"
    );
    ok(&lab_cmd(
        &env,
        state.path(),
        &["link", "ab", "up", "--lab", "kbt-link"],
    ));
    assert!(
        rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "2").is_some(),
        "link healed: no ping"
    );
    let o = lab_cmd(&env, state.path(), &["link", "nosuch", "down"]);
    assert!(
        text(&o.stderr).contains("no link 'nosuch'"),
        "{}",
        text(&o.stderr)
    );

    // 100 ms each way: the round trip grows by 200 ms.
    ok(&lab_cmd(
        &env,
        state.path(),
        &["impair", "ab", "--delay", "100ms"],
    ));
    let slow = rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "3").expect("impaired: no ping");
    assert!(
        slow >= 200.0 && slow < base + 400.0,
        "delay 100ms: rtt {slow} ms (before {base} ms)"
    );
    let shown = ok(&lab_cmd(&env, state.path(), &["inspect", "kbt-link"]));
    assert!(shown.contains("delay 100ms"), "{shown}");
    let saved = ok(&lab_cmd(&env, state.path(), &["save", "kbt-link"]));
    assert!(saved.contains("100ms"), "save lost the impairment: {saved}");
    let graph = ok(&lab_cmd(
        &env,
        state.path(),
        &["graph", "kbt-link", "--format", "dot"],
    ));
    assert!(
        graph.contains("digraph") || graph.contains("graph"),
        "{graph}"
    );
    // Total loss: nothing passes.
    ok(&lab_cmd(
        &env,
        state.path(),
        &["impair", "kbt-link/ab", "--loss", "100%"],
    ));
    assert!(
        rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "2").is_none(),
        "100% loss: ping passes"
    );
    ok(&lab_cmd(&env, state.path(), &["impair", "ab", "--clear"]));
    let fast = rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "3").expect("cleared: no ping");
    assert!(
        fast < base + 100.0,
        "cleared: rtt {fast} ms (before {base} ms)"
    );
    let o = lab_cmd(&env, state.path(), &["impair", "ab", "--delay", "-5ms"]);
    assert!(!o.status.success());
    let o = lab_cmd(&env, state.path(), &["impair", "ab", "--loss", "150%"]);
    assert!(!o.status.success(), "150% loss accepted");

    // Capture the link while pinging across it: a valid pcapng with the echoes both ways.
    let pcap = env.run.path().join("ab.pcapng");
    let cap = env
        .cmd(&["capture", "ab", "-c", "4", "-w", pcap.to_str().unwrap()])
        .env("KOBAKO_STATE", state.path())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "3").is_some());
    let o = cap.wait_with_output().unwrap();
    assert!(o.status.success(), "capture failed: {}", text(&o.stderr));
    let t = std::process::Command::new("tshark")
        .args(["-r", pcap.to_str().unwrap(), "-Y", "icmp"])
        .output()
        .unwrap();
    let shown = text(&t.stdout);
    assert!(
        shown.contains("Echo (ping) request") && shown.contains("Echo (ping) reply"),
        "tshark: {shown}{}",
        text(&t.stderr)
    );

    // Restart one VM: a new VM process, configured again (the link still works).
    let pid = |env: &Env| {
        std::fs::read_to_string(env.run.path().join("vms/kbt-link.b.h/vm.pid")).unwrap()
    };
    let before = pid(&env);
    let out = ok(&lab_cmd(&env, state.path(), &["restart", "b.h"]));
    assert!(out.contains("2 of 2 VMs ready"), "{out}");
    assert_ne!(before, pid(&env), "restart kept the old VM process");
    assert!(rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "2").is_some());

    // Stop one VM (a crashed or switched-off host): its process ends, the lab is degraded and
    // says why, the peer cannot reach it; start boots it again, configured, reachable.
    let before = pid(&env);
    let out = ok(&lab_cmd(&env, state.path(), &["stop", "b.h"]));
    eprintln!("stop: {out}");
    assert!(out.contains("1 VM(s) of kbt-link/b.h stopped"), "{out}");
    let alive = |p: &str| std::path::Path::new(&format!("/proc/{}", p.trim())).exists();
    assert!(
        !alive(&before),
        "the stopped VM's process {before} still runs"
    );
    let ls = ok(&lab_cmd(&env, state.path(), &["ls"]));
    assert!(ls.contains("degraded"), "{ls}");
    let insp = ok(&lab_cmd(&env, state.path(), &["inspect", "kbt-link"]));
    assert!(insp.contains("stopped by"), "{insp}");
    assert!(rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "1").is_none());
    let out = ok(&lab_cmd(&env, state.path(), &["stop", "b.h"]));
    assert!(out.contains("already stopped"), "{out}");
    let o = lab_cmd(&env, state.path(), &["stop", "kbt-link"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("kobako down"),
        "{}",
        text(&o.stderr)
    );
    let out = ok(&lab_cmd(&env, state.path(), &["start", "b.h"]));
    eprintln!("start: {out}");
    assert!(out.contains("ready"), "{out}");
    assert_ne!(before, pid(&env));
    assert!(rtt_ms(&env, state.path(), "a.h", "10.77.0.2", "2").is_some());
    let ls = ok(&lab_cmd(&env, state.path(), &["ls"]));
    assert!(!ls.contains("degraded"), "{ls}");

    ok(&lab_cmd(&env, state.path(), &["down", "kbt-link"]));
    env.assert_clean();
    assert!(!netns_exists("kb-kbt-link"));
    assert!(!netd_running("kbt-link"), "net daemon left behind");
}

#[test]
fn published_port_answers_on_the_host_and_the_lab_cannot_reach_the_host() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = env.run.path().join("pub.yaml");
    std::fs::write(
        &p,
        r#"name: kbt-pub
defaults: { image: tiny, memory: 96M }
networks:
  lan: { subnet: 10.78.0.0/24 }
nodes:
  web:
    vms:
      srv:
        interfaces: { eth1: { network: lan } }
        files: { /www/index.html: { content: "hello from kbt-pub\n" } }
        run:
          - { name: httpd, command: "exec httpd -f -p 8080 -h /www" }
publish: ["18081:web.srv:8080/tcp"]
"#,
    )
    .unwrap();
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "kbt-pub",
    };
    let out = ok(&lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]));
    assert!(out.contains("1 of 1 VMs ready"), "{out}");
    // The host's own address (not loopback: DNAT is for traffic to a local address).
    let host_ip = std::process::Command::new("sh")
        .args([
            "-c",
            "ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'",
        ])
        .output()
        .unwrap();
    let host_ip = text(&host_ip.stdout).trim().to_string();
    assert!(!host_ip.is_empty(), "no host address");
    let mut body = String::new();
    for _ in 0..50 {
        let c = std::process::Command::new("curl")
            .args(["-s", "-m", "3", &format!("http://{host_ip}:18081/")])
            .output()
            .unwrap();
        body = text(&c.stdout);
        if body.contains("hello from kbt-pub") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        body.contains("hello from kbt-pub"),
        "published port: {body:?}"
    );
    // The lab cannot open connections to the host itself (here: a listener on the host).
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let o = lab_cmd(
        &env,
        state.path(),
        &[
            "exec",
            "web.srv",
            "--",
            "sh",
            "-c",
            &format!("echo x | nc -w 3 {host_ip} {port} && echo CONNECTED"),
        ],
    );
    assert!(
        !text(&o.stdout).contains("CONNECTED") && l.accept().is_err(),
        "the lab reached the host: {}",
        text(&o.stdout)
    );
    ok(&lab_cmd(&env, state.path(), &["down", "kbt-pub"]));
    env.assert_clean();
    assert!(!netns_exists("kb-kbt-pub"));
}

#[test]
fn a_vm_that_cannot_start_is_reported_and_the_rest_comes_up() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = env.run.path().join("partial.yaml");
    // A failure no offline check sees (`lab check` and `up` refuse unknown images before
    // anything starts): a qcow2 that names a backing file is refused only when its VM is
    // resolved.
    let disk = env.run.path().join("no-such-image.qcow2");
    let backing = env.run.path().join("backing.raw");
    std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&backing)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(
        &p,
        format!(
            "name: kbt-part\ndefaults: {{ image: tiny, memory: 96M }}\nnodes:\n  n:\n    vms:\n      good: {{}}\n      bad: {{ image: {} }}\n",
            disk.display()
        ),
    )
    .unwrap();
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "kbt-part",
    };
    let o = lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("1 of 2 VMs ready"), "{out}");
    assert!(
        out.contains("no-such-image"),
        "the reason is missing: {out}"
    );
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&lab_cmd(&env, state.path(), &["ls", "--json"]))).unwrap();
    assert_eq!(ls[0]["state"], "degraded");
    let inspect: serde_json::Value = serde_json::from_str(&ok(&lab_cmd(
        &env,
        state.path(),
        &["inspect", "kbt-part", "--json"],
    )))
    .unwrap();
    assert_eq!(inspect["vms"]["kbt-part.n.good"]["state"], "ready");
    assert_eq!(inspect["vms"]["kbt-part.n.bad"]["state"], "failed");
    assert!(inspect["vms"]["kbt-part.n.bad"]["reason"]
        .as_str()
        .unwrap()
        .contains("no-such-image"));
    // The good VM runs, nothing of the bad one exists.
    assert_eq!(env.leftovers(), vec!["kbt-part.n.good".to_string()]);
    ok(&lab_cmd(&env, state.path(), &["down", "kbt-part"]));
    env.assert_clean();
}

#[test]
fn an_unknown_image_is_found_by_lab_check_and_up_starts_nothing() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = env.run.path().join("frr.yaml");
    std::fs::write(
        &p,
        "name: kbt-frr\ndefaults: { image: tiny, memory: 96M }\nnodes:\n  n:\n    vms:\n      good: {}\n      r1: { image: frr }\n",
    )
    .unwrap();
    let o = lab_cmd(&env, state.path(), &["lab", "check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("nodes.n.vms.r1.image: unknown image 'frr'")
            && err.contains("kobako image build"),
        "{err}"
    );
    let o = lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("nothing was started"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        env.leftovers().is_empty(),
        "no VM booted: {:?}",
        env.leftovers()
    );
    assert!(!netns_exists("kb-kbt-frr"));
    // A good file passes, saying what it holds.
    let good = env.example_as("tiny-five.yaml", "kbt-chk");
    let out = ok(&lab_cmd(
        &env,
        state.path(),
        &["lab", "check", good.to_str().unwrap()],
    ));
    assert!(
        out.contains("lab kbt-chk: OK") && out.contains("5 VM(s)"),
        "{out}"
    );
}

#[test]
fn kill_during_up_then_up_converges_without_duplicates() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let file = env.example_as("tiny-five.yaml", "kbt-kill");
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "kbt-kill",
    };
    let mut child = env
        .cmd(&["up", file.to_str().unwrap()])
        .env("KOBAKO_STATE", state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while VMs are booting: some VM directories exist, not all agents are ready.
    let t0 = std::time::Instant::now();
    while env.leftovers().len() < 3 && t0.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    assert!(!env.leftovers().is_empty(), "killed before any VM started");

    let out = ok(&lab_cmd(
        &env,
        state.path(),
        &["up", file.to_str().unwrap()],
    ));
    assert!(out.contains("5 of 5 VMs ready"), "{out}");
    let qemus = env
        .processes()
        .into_iter()
        .filter(|p| p.contains("qemu-system"))
        .count();
    assert_eq!(
        qemus,
        5,
        "VM processes after converging: {:#?}",
        env.processes()
    );
    assert_eq!(env.leftovers().len(), 5);
    let ls = ok(&lab_cmd(&env, state.path(), &["ls", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(v[0]["state"], "ready", "{ls}");
    assert_eq!(v[0]["ready"], 5, "{ls}");

    ok(&lab_cmd(&env, state.path(), &["down", "kbt-kill"]));
    env.assert_clean();
    assert!(!netns_exists("kb-kbt-kill"));
}

#[test]
fn checkpoint_and_restore_bring_back_vm_state_and_link_impairments() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = two_hosts(&env, "kbt-cp", "10.79.0");
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "kbt-cp",
    };
    let run = |args: &[&str]| ok(&lab_cmd(&env, state.path(), args));
    run(&["up", p.to_str().unwrap()]);
    // A process counting in the guest, a file, an impaired link: the state to come back to.
    run(&[
        "exec",
        "a.h",
        "--",
        "sh",
        "-c",
        "echo stage1 > /root/stage; (i=0; while true; do i=$((i+1)); echo $i > /root/count.new; mv /root/count.new /root/count; sleep 0.2; done) >/dev/null 2>&1 &",
    ]);
    run(&["impair", "ab", "--delay", "50ms"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = run(&["checkpoint", "kbt-cp", "stage1"]);
    let _ = out;
    let count_at = |vm: &str| -> u64 {
        run(&["exec", vm, "--", "cat", "/root/count"])
            .trim()
            .parse()
            .unwrap()
    };
    let saved = count_at("a.h");
    // Move on: other file content, no impairment, link cut.
    run(&["exec", "a.h", "--", "sh", "-c", "echo stage2 > /root/stage"]);
    run(&["impair", "ab", "--clear"]);
    run(&["link", "ab", "down"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pid_before = std::fs::read_to_string(env.run.path().join("vms/kbt-cp.a.h/vm.pid")).unwrap();

    let out = run(&["restore", "kbt-cp", "stage1"]);
    assert!(out.contains("2 of 2 VMs ready"), "{out}");
    let pid_after = std::fs::read_to_string(env.run.path().join("vms/kbt-cp.a.h/vm.pid")).unwrap();
    assert_ne!(pid_before, pid_after, "restore kept the old VM process");
    assert_eq!(
        run(&["exec", "a.h", "--", "cat", "/root/stage"]).trim(),
        "stage1"
    );
    // The counter continues from (about) where the checkpoint caught it, not from 0 or later.
    let c = count_at("a.h");
    assert!(
        c >= saved.saturating_sub(2) && c < saved + 40,
        "counter {c} after restore, {saved} at checkpoint"
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(count_at("a.h") > c, "the counting process did not continue");
    // The guest clock follows the host's again.
    let guest: i64 = run(&["exec", "a.h", "--", "date", "+%s"])
        .trim()
        .parse()
        .unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest - host).abs() <= 3,
        "guest clock {guest}, host {host}"
    );
    // Link up again with the checkpoint's 50 ms each way.
    let rtt = rtt_ms(&env, state.path(), "a.h", "10.79.0.2", "3").expect("restored link: no ping");
    assert!(rtt >= 100.0, "restored impairment: rtt {rtt} ms");
    assert!(run(&["inspect", "kbt-cp"]).contains("delay 50ms"));

    // Listing, refusing a duplicate, deleting.
    let list = run(&["checkpoint", "kbt-cp", "--list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["name"], "stage1");
    assert_eq!(v[0]["vms"], 2);
    let o = lab_cmd(&env, state.path(), &["checkpoint", "kbt-cp", "stage1"]);
    assert!(
        text(&o.stderr).contains("already has a checkpoint"),
        "{}",
        text(&o.stderr)
    );
    let o = lab_cmd(&env, state.path(), &["restore", "kbt-cp", "nosuch"]);
    assert!(
        text(&o.stderr).contains("no checkpoint 'nosuch'"),
        "{}",
        text(&o.stderr)
    );
    run(&["checkpoint", "kbt-cp", "stage1", "--delete"]);
    assert_eq!(
        run(&["checkpoint", "kbt-cp", "--list", "--json"]).trim(),
        "[]"
    );

    run(&["down", "kbt-cp"]);
    env.assert_clean();
}

#[test]
fn scenarios_pass_fail_with_the_failed_assertion_and_undo_their_faults() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = two_hosts(&env, "kbt-scn", "10.81.0");
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "kbt-scn",
    };
    let run = |args: &[&str]| lab_cmd(&env, state.path(), args);
    ok(&run(&["up", p.to_str().unwrap()]));
    let good = env.run.path().join("good.yaml");
    std::fs::write(
        &good,
        r#"name: delay-and-cut
lab: kbt-scn
steps:
  - wait_ready: 60s
  - name: baseline
    rtt: { from: a.h, to: 10.81.0.2, count: 3 }
    expect: { max_loss: 0 }
  - impair: { link: ab, delay: 100ms }
  - name: delayed both ways
    rtt: { from: a.h, to: 10.81.0.2, count: 3 }
    expect: { min_ms: 195, max_loss: 0 }
  - link: { link: ab, state: down }
  - name: cut
    exec: { vm: a.h, cmd: "ping -c1 -W1 10.81.0.2" }
    expect: { exit: 1 }
"#,
    )
    .unwrap();
    let junit = env.run.path().join("junit.xml");
    let html = env.run.path().join("report.html");
    let o = run(&[
        "scenario",
        "run",
        good.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    let out = ok(&o);
    assert!(
        out.contains("PASSED") && out.contains("6 passed, 0 failed"),
        "{out}{}",
        text(&o.stderr)
    );
    let j = std::fs::read_to_string(&junit).unwrap();
    assert!(j.contains("tests=\"6\" failures=\"0\""), "{j}");
    assert!(std::fs::read_to_string(&html)
        .unwrap()
        .contains("<polyline"));
    // Faults undone: the link is up and unimpaired again.
    let rtt = rtt_ms(&env, state.path(), "a.h", "10.81.0.2", "3").expect("link not healed");
    assert!(rtt < 100.0, "impairment left behind: {rtt} ms");

    // A deliberately failing run: the report names the step, what was expected and seen, when.
    let bad = env.run.path().join("bad.yaml");
    std::fs::write(
        &bad,
        r#"name: too-slow
steps:
  - impair: { link: ab, delay: 100ms }
  - name: within 50 ms
    rtt: { from: a.h, to: 10.81.0.2, count: 2 }
    expect: { max_ms: 50 }
  - name: never reached
    sleep: 1s
"#,
    )
    .unwrap();
    let json = env.run.path().join("bad.json");
    let o = run(&[
        "scenario",
        "run",
        bad.to_str().unwrap(),
        "--lab",
        "kbt-scn",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    assert!(
        out.contains("FAILED") && out.contains("failed: 2 within 50 ms at"),
        "{out}"
    );
    assert!(out.contains("expected: rtt ≤ 50 ms"), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["steps"][1]["status"], "failed");
    assert!(r["steps"][1]["metrics"]["rtt_ms"].as_f64().unwrap() >= 190.0);
    assert_eq!(r["steps"][2]["status"], "skipped");
    assert!(r["cleanup"][0].as_str().unwrap().contains("link ab"), "{r}");
    let rtt = rtt_ms(&env, state.path(), "a.h", "10.81.0.2", "3").expect("link broken");
    assert!(
        rtt < 100.0,
        "impairment left behind after a failed run: {rtt} ms"
    );
    // A bad scenario file: located error, nothing run.
    std::fs::write(
        &bad,
        "name: x\nsteps:\n  - impair: { link: ab, dealy: 5ms }\n",
    )
    .unwrap();
    let o = run(&["scenario", "run", bad.to_str().unwrap(), "--lab", "kbt-scn"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("bad.yaml:3:"),
        "{}",
        text(&o.stderr)
    );

    ok(&run(&["down", "kbt-scn"]));
    env.assert_clean();
}
