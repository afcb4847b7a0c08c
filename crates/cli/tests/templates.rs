//! Real-guest tests of the node templates shipped with kobako, through their example lab files:
//! - `web-stack`: an HTTP request from a client through the API, answered through the redis
//!   cache (the second request is a hit in redis' own stats), logged on the logger VM;
//! - `router-vpn-ids`: the router forwards between its networks, the WireGuard tunnel to the
//!   remote peer passes traffic, the IDS logs an alert for the test signature sent through the
//!   router.
//!
//! The images (`debian-web`, `debian-router`) are the recipes `kobako up` builds by itself when
//! they are missing or outdated, as for a newcomer; the first run on a machine builds them (a few
//! minutes each) and later runs reuse them. Labs are named `tpl-*` (namespaces are global); each
//! test has its own `KOBAKO_RUN` and state directory, and one lab runs at a time (2 CPUs, TCG).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;

/// One lab of Debian guests at a time.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// A test's lab: its file (an example under a `tpl-*` name), state directory and cleanup.
struct Lab {
    env: Env,
    state: tempfile::TempDir,
    name: String,
    file: PathBuf,
}

impl Lab {
    fn from_example(example: &str, name: &str) -> Lab {
        let env = Env::new();
        let file = env.example_as(example, name);
        Lab {
            env,
            state: tempfile::tempdir().unwrap(),
            name: name.to_string(),
            file,
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        self.env
            .cmd(args)
            .env("KOBAKO_STATE", self.state.path())
            .output()
            .unwrap()
    }

    /// `kobako up`, which must bring every VM up; returns its stdout.
    fn up(&self) -> String {
        let t = Instant::now();
        let o = self.cmd(&["up", self.file.to_str().unwrap()]);
        let out = ok(&o);
        eprintln!(
            "up {} in {:.1} s:\n{}{}",
            self.name,
            t.elapsed().as_secs_f64(),
            text(&o.stderr),
            out
        );
        out
    }

    /// `kobako exec <lab>.<vm> -- argv`.
    fn exec(&self, vm: &str, argv: &[&str]) -> Output {
        let target = format!("{}.{vm}", self.name);
        let mut args = vec!["exec", target.as_str(), "--"];
        args.extend_from_slice(argv);
        self.cmd(&args)
    }

    /// Run `argv` in `vm` until it succeeds (services start after `up` returns); its output.
    fn exec_until_ok(&self, vm: &str, argv: &[&str], within: Duration) -> String {
        until_ok(&format!("{vm}: {argv:?}"), within, || self.exec(vm, argv))
    }

    /// Wait until `file` in `vm` contains `needle`; the file's text.
    fn wait_for_text(&self, vm: &str, file: &str, needle: &str, within: Duration) -> String {
        let t = Instant::now();
        loop {
            let o = self.exec(vm, &["cat", file]);
            let s = text(&o.stdout);
            if s.contains(needle) {
                return s;
            }
            if t.elapsed() > within {
                panic!(
                    "{vm}:{file} has no '{needle}' after {within:?}; it holds:\n{s}{}",
                    text(&o.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn down(&self) {
        ok(&self.cmd(&["down", &self.name]));
        self.env.assert_clean();
        assert!(
            !Path::new("/run/netns")
                .join(format!("kb-{}", self.name))
                .exists(),
            "namespace kb-{} left behind",
            self.name
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failed test still takes its lab down (VMs, namespace); `down` of a lab that is not
        // up only says so.
        let _ = self.cmd(&["down", &self.name]);
    }
}

fn all_ready(out: &str, n: usize) {
    assert!(out.contains(&format!("{n} of {n} VMs ready")), "{out}");
}

/// `name:value` from `redis-cli info stats`.
fn redis_stat(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in redis stats:\n{info}"))
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn web_stack_answers_through_its_cache_and_logs_to_the_logger() {
    let _s = serial();
    let lab = Lab::from_example("web-stack.yaml", "tpl-web");
    all_ready(&lab.up(), 4);

    // `up` returned when the template's readiness checks passed (the API's /health, redis'
    // PING, rsyslog's ports): the API answers the client across the front network at once
    // (a few seconds allowed for the first ARP and route through the node).
    let url = |path: &str| format!("http://10.20.0.10:8080{path}");
    let t = Instant::now();
    let health = lab.exec_until_ok(
        "client.pc",
        &["wget", "-qO-", &url("/health")],
        Duration::from_secs(10),
    );
    eprintln!("API answering {:.1} s after up", t.elapsed().as_secs_f64());
    assert!(health.contains("\"status\": \"ok\""), "{health}");
    // Its services run confined by kobako's AppArmor profiles (enforce, the default).
    for (vm, prog, profile) in [
        ("web.api", "/opt/kobako/api.py", "kobako-web-api"),
        ("web.cache", "redis-server", "kobako-redis"),
    ] {
        let label = ok(&lab.exec(
            vm,
            &[
                "sh",
                "-c",
                &format!("cat /proc/$(pgrep -f {prog} | head -n 1)/attr/current"),
            ],
        ));
        assert_eq!(label.trim(), format!("{profile} (enforce)"), "{vm}");
    }

    let stats = || ok(&lab.exec("web.cache", &["redis-cli", "info", "stats"]));
    // Ready means ready: redis answers and rsyslog listens on UDP 514 (the API's log lines
    // would be lost otherwise) the moment `up` returned, without waiting here.
    let before = stats();
    ok(&lab.exec(
        "web.logger",
        &["sh", "-c", "grep -q ':0202 ' /proc/net/udp"],
    ));
    let key = format!("tpl-{}", std::process::id());
    let get = || -> serde_json::Value {
        let body = ok(&lab.exec(
            "client.pc",
            &["wget", "-qO-", &url(&format!("/item/{key}"))],
        ));
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let first = get();
    let second = get();
    let after = stats();

    // The value is the backend's (sha256 of the key); the first answer fills the cache, the
    // second comes from it, and redis counted exactly that.
    assert_eq!(first["value"], sha256_hex(&key), "{first}");
    assert_eq!(first["cache"], "miss", "{first}");
    assert_eq!(second["cache"], "hit", "{second}");
    assert_eq!(second["value"], first["value"]);
    assert_eq!(
        redis_stat(&after, "keyspace_hits"),
        redis_stat(&before, "keyspace_hits") + 1,
        "before:\n{before}\nafter:\n{after}"
    );
    assert_eq!(
        redis_stat(&after, "keyspace_misses"),
        redis_stat(&before, "keyspace_misses") + 1
    );
    // The cache VM holds the key the API wrote.
    let ttl = ok(&lab.exec("web.cache", &["redis-cli", "ttl", &format!("item:{key}")]));
    assert!(ttl.trim().parse::<i64>().is_ok_and(|t| t > 0), "ttl {ttl}");

    // The logger VM received the API's log lines over the node network (from the API's node
    // address), one per request.
    let api_ip = ok(&lab.exec("web.logger", &["getent", "hosts", "api"]));
    let api_ip = api_ip.split_whitespace().next().unwrap().to_string();
    let line = format!("GET /item/{key} 200 cache=hit");
    let log = lab.wait_for_text(
        "web.logger",
        "/var/log/kobako/remote.log",
        &line,
        Duration::from_secs(20),
    );
    let hit = log.lines().find(|l| l.contains(&line)).unwrap();
    assert!(hit.contains(&api_ip), "not from the API ({api_ip}): {hit}");
    assert!(hit.contains("kobako-api"), "{hit}");
    assert!(
        log.contains(&format!("GET /item/{key} 200 cache=miss")),
        "{log}"
    );

    lab.down();
}

#[test]
fn router_vpn_ids_forwards_tunnels_and_alerts() {
    let _s = serial();
    let lab = Lab::from_example("router-vpn-ids.yaml", "tpl-rvi");
    all_ready(&lab.up(), 6);

    // Forwarding: each side reaches the other through edge.router, one hop (TTL 64 - 1).
    for (from, to) in [("lan.pc", "10.30.0.100"), ("wan.host", "10.31.0.10")] {
        let out = lab.exec_until_ok(
            from,
            &["ping", "-c", "1", "-W", "3", to],
            Duration::from_secs(30),
        );
        assert!(
            out.contains("ttl=63"),
            "{from} -> {to} not routed once: {out}"
        );
    }

    // WireGuard: the remote peer reaches the VPN's tunnel address and back.
    lab.exec_until_ok(
        "remote.peer",
        &["ping", "-c", "1", "-W", "2", "10.99.0.1"],
        Duration::from_secs(45),
    );
    ok(&lab.exec("edge.vpn", &["ping", "-c", "2", "-W", "3", "10.99.0.2"]));
    let transfer = ok(&lab.exec("edge.vpn", &["wg", "show", "wg0", "transfer"]));
    // "<peer public key>\t<received bytes>\t<sent bytes>"
    let bytes: Vec<u64> = transfer
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        bytes.len() == 2 && bytes.iter().all(|b| *b > 0),
        "no tunnel traffic: {transfer}"
    );

    // IDS: suricata runs on the mirror port (its engine started before `up` returned: the
    // template's readiness check); nothing has alerted yet.
    let started = ok(&lab.exec("edge.ids", &["cat", "/var/log/kobako/suricata.log"]));
    assert!(started.contains("Engine started"), "{started}");
    let alerts = lab
        .exec("edge.ids", &["cat", "/var/log/suricata/fast.log"])
        .stdout;
    assert!(
        !text(&alerts).contains("KOBAKO test signature"),
        "alert before the test traffic: {}",
        text(&alerts)
    );
    // A plain page through the router, then the test signature's URI.
    let page = ok(&lab.exec("wan.host", &["wget", "-qO-", "http://10.31.0.10/"]));
    assert_eq!(page, "lan.pc says hello\n");
    // 404: lan.pc has no such page; the request itself is what the IDS must see.
    let _ = lab.exec(
        "wan.host",
        &["wget", "-qO-", "http://10.31.0.10/kobako-ids-test"],
    );
    let log = lab.wait_for_text(
        "edge.ids",
        "/var/log/suricata/fast.log",
        "KOBAKO test signature",
        Duration::from_secs(30),
    );
    let alert = log
        .lines()
        .find(|l| l.contains("KOBAKO test signature"))
        .unwrap();
    // The alert names the flow between the two hosts on either side of the router.
    assert!(
        alert.contains("10.30.0.100") && alert.contains("10.31.0.10"),
        "{alert}\n(suricata: {started})"
    );

    // The example scenario on the same lab: the alert fires again within 30 s of the request.
    let scn = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenarios/ids-alert.yaml");
    let json = lab.env.run.path().join("ids.json");
    let o = lab.cmd(&[
        "scenario",
        "run",
        scn.to_str().unwrap(),
        "--lab",
        &lab.name,
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = ok(&o);
    assert!(out.contains("PASSED"), "{out}{}", text(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    eprintln!(
        "ids-alert scenario: alert {} ms after the request",
        r["steps"][6]["metrics"]["elapsed_ms"]
    );

    lab.down();
}

#[test]
fn an_unknown_image_says_how_to_build_or_import_it() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let file = env.run.path().join("unknown.yaml");
    std::fs::write(
        &file,
        "name: tpl-unknown\nnodes:\n  n:\n    vms:\n      v: { image: tpl-no-such-image }\n",
    )
    .unwrap();
    let o = env
        .cmd(&["up", file.to_str().unwrap()])
        .env("KOBAKO_STATE", state.path())
        .output()
        .unwrap();
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(!o.status.success(), "{all}");
    for want in [
        "unknown image 'tpl-no-such-image'",
        "kobako image build debian --name tpl-no-such-image",
        "kobako image import",
        "debian-web, debian-router",
    ] {
        assert!(all.contains(want), "'{want}' missing in:\n{all}");
    }
    let _ = env
        .cmd(&["down", "tpl-unknown"])
        .env("KOBAKO_STATE", state.path())
        .output();
    env.assert_clean();

    // And a recipe name kobako does not know, with what it does know.
    let o = env.run(&["image", "build", "tpl-no-such-recipe"]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no image recipe named 'tpl-no-such-recipe'")
            && err.contains("debian-web, debian-router"),
        "{err}"
    );
}
