//! Real-guest scenario tests on one two-paths lab (examples/two-paths.yaml, 4 tiny VMs) shared
//! by every case: the example scenarios pass, a deliberately failing run names the failed
//! assertion with what it expected, what it saw and when, faults are undone at the end and on
//! Ctrl-C, and bad files are refused before any step runs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const LAB: &str = "scn-paths";

struct Lab {
    env: Env,
    state: tempfile::TempDir,
}

impl Lab {
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.env.cmd(args);
        c.env("KOBAKO_STATE", self.state.path());
        c
    }
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().unwrap()
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.env.run.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// `scenario run FILE --lab scn-paths --json J`; the output and the report.
    fn scenario(&self, file: &Path, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
        let json = self.env.run.path().join("report.json");
        let _ = std::fs::remove_file(&json);
        let mut args = vec![
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--lab",
            LAB,
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let t = Instant::now();
        let o = self.run(&args);
        eprintln!(
            "scenario {} in {:.1} s:\n{}{}",
            file.display(),
            t.elapsed().as_secs_f64(),
            text(&o.stderr),
            text(&o.stdout)
        );
        let r = std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        (o, r)
    }
    /// The first hop from client.h to the server's service address.
    fn first_hop(&self) -> String {
        let o = self.run(&[
            "exec",
            &format!("{LAB}.client.h"),
            "--",
            "traceroute",
            "-n",
            "-m",
            "1",
            "-q",
            "1",
            "-w",
            "2",
            "10.2.0.10",
        ]);
        text(&o.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string()
    }
    /// Waits (20 s at most) until the first hop is `want`.
    fn wait_first_hop(&self, want: &str, why: &str) {
        let t = Instant::now();
        loop {
            let hop = self.first_hop();
            if hop == want {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{why}: first hop '{hop}', not {want}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    fn rtt(&self) -> Option<f64> {
        let o = self.run(&[
            "exec",
            &format!("{LAB}.client.h"),
            "--",
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            "10.2.0.10",
        ]);
        kobako_lab::scenario::parse_ping(&text(&o.stdout)).0
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["down", LAB]);
    }
}

/// `run() -> i32 { loop {} }` with a memory (hand-assembled).
const LOOP_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, 0x03,
    0x02, 0x01, 0x00, 0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x10, 0x02, 0x06, 0x6d, 0x65, 0x6d, 0x6f,
    0x72, 0x79, 0x02, 0x00, 0x03, 0x72, 0x75, 0x6e, 0x00, 0x00, 0x0a, 0x0b, 0x01, 0x09, 0x00, 0x03,
    0x40, 0x0c, 0x00, 0x0b, 0x41, 0x00, 0x0b,
];

/// A module importing `wasi_snapshot_preview1.fd_write` (hand-assembled).
const WASI_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x0d, 0x02, 0x60, 0x04, 0x7f, 0x7f, 0x7f,
    0x7f, 0x01, 0x7f, 0x60, 0x00, 0x01, 0x7f, 0x02, 0x23, 0x01, 0x16, 0x77, 0x61, 0x73, 0x69, 0x5f,
    0x73, 0x6e, 0x61, 0x70, 0x73, 0x68, 0x6f, 0x74, 0x5f, 0x70, 0x72, 0x65, 0x76, 0x69, 0x65, 0x77,
    0x31, 0x08, 0x66, 0x64, 0x5f, 0x77, 0x72, 0x69, 0x74, 0x65, 0x00, 0x00, 0x03, 0x02, 0x01, 0x01,
    0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x10, 0x02, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02,
    0x00, 0x03, 0x72, 0x75, 0x6e, 0x00, 0x01, 0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x00, 0x0b,
];

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/scenarios")
        .join(name)
}

fn step<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step '{name}' in {r}"))
}

#[test]
fn scenarios_on_a_two_path_lab() {
    let env = Env::new();
    let file = env.example_as("two-paths.yaml", LAB);
    let lab = Lab {
        env,
        state: tempfile::tempdir().unwrap(),
    };
    let out = ok(&lab.run(&["up", file.to_str().unwrap()]));
    assert!(out.contains("4 of 4 VMs ready"), "{out}");

    // ---- Bad input: refused with file, line and fix before any step runs (the cut in step 1
    // does not happen).
    let bad = lab.file(
        "bad.yaml",
        "name: bad\nsteps:\n  - link: { link: s1, state: down }\n  - rtt: { from: client.hh, to: 10.2.0.10 }\n  - impair: { link: s3, delay: 10ms }\n  - rtt: { from: client.h, to: 10.2.0.10 }\n    assert: [\"rtt_ms <> 5\"]\n",
    );
    let (o, _) = lab.scenario(&bad, &[]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("bad.yaml:7:") && err.contains("fix:"), "{err}");
    let o = lab.run(&[
        "scenario",
        "check",
        bad.to_str().unwrap(),
        "--lab-file",
        file.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    std::fs::write(
        &bad,
        "name: bad\nsteps:\n  - link: { link: s1, state: down }\n  - rtt: { from: client.hh, to: 10.2.0.10 }\n  - impair: { link: s3, delay: 10ms }\n",
    )
    .unwrap();
    let (o, _) = lab.scenario(&bad, &[]);
    assert!(!o.status.success());
    let err2 = text(&o.stderr);
    assert!(
        err2.contains("bad.yaml:4:")
            && err2.contains("no VM 'client.hh'")
            && err2.contains("client.h"),
        "{err2}"
    );
    assert!(
        err2.contains("bad.yaml:5:")
            && err2.contains("no link 's3'")
            && err2.contains("nothing was run"),
        "{err2}"
    );
    assert!(err.contains("bad.yaml:7:"), "{err}");
    lab.wait_first_hop("10.11.0.1", "after a refused scenario");

    // ---- The failover example: within 5 s of the cut, traffic flows via r2.
    let html = lab.env.run.path().join("failover.html");
    let junit = lab.env.run.path().join("failover.xml");
    let (o, r) = lab.scenario(
        &example("failover.yaml"),
        &[
            "--html",
            html.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    let out = ok(&o);
    assert!(
        out.contains("PASSED") && out.contains("11 passed, 0 failed"),
        "{out}"
    );
    let sw = step(&r, "within 5 s of the cut, traffic flows via r2");
    let took = sw["metrics"]["elapsed_ms"].as_u64().unwrap();
    eprintln!("failover: traffic via r2 {took} ms after the cut");
    assert!(took <= 5000, "{sw}");
    assert!(
        sw["observed"].as_str().unwrap().contains("10.12.0.1"),
        "{sw}"
    );
    let pings = step(&r, "ping during the cut");
    let samples = pings["samples"].as_array().unwrap();
    let lost = samples.iter().filter(|s| s["ok"] == false).count();
    eprintln!(
        "failover: {lost} of {} pings lost during the switch",
        samples.len()
    );
    assert!(
        samples.len() >= 6 && lost >= 1,
        "the cut lost no ping: {pings}"
    );
    let h = std::fs::read_to_string(&html).unwrap();
    assert!(
        h.contains("class=\"rtt\"") && h.contains("class=\"loss\"") && h.contains(">cut</text>"),
        "{h}"
    );
    let j = std::fs::read_to_string(&junit).unwrap();
    assert!(j.contains("tests=\"11\" failures=\"0\""), "{j}");
    lab.wait_first_hop("10.11.0.1", "not back on r1 after the run");

    // ---- The web SLO example: 200 ms more RTT and 5% loss, 90% of requests within 2 s.
    let (o, r) = lab.scenario(&example("web-slo.yaml"), &[]);
    let out = ok(&o);
    assert!(out.contains("PASSED"), "{out}");
    let rtt = step(&r, "the RTT shows the delay")["metrics"]["rtt_ms"]
        .as_f64()
        .unwrap();
    let slo = step(&r, "SLO under impairment");
    let n = slo["samples"].as_array().unwrap().len();
    eprintln!(
        "web-slo: rtt {rtt} ms under impairment; SLO {} over {n} requests",
        slo["metrics"]["pass_pct"]
    );
    assert!(rtt >= 195.0, "{r}");
    assert!(n >= 30, "{slo}");
    let after = lab.rtt().expect("no reply after web-slo");
    assert!(after < 100.0, "impairment left behind: {after} ms");

    // ---- A deliberately failing run: the report names the assertion, expected, observed, when.
    let failing = lab.file(
        "failing.yaml",
        r#"name: stays-on-r1
steps:
  - name: cut
    link: { link: s1, state: down }
  - name: still via r1 two seconds after the cut
    path: { from: client.h, to: 10.2.0.10 }
    after: 4s
    expect: { via: 10.11.0.1 }
    within: 2s
    since: cut
  - name: never reached
    sleep: 1s
"#,
    );
    let (o, r) = lab.scenario(&failing, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let out = text(&o.stdout);
    assert!(
        out.contains("FAILED")
            && out.contains("failed: 2 still via r1 two seconds after the cut at"),
        "{out}"
    );
    assert!(
        out.contains("expected: via 10.11.0.1, within 2s of 'cut'"),
        "{out}"
    );
    let f = &r["steps"][1];
    assert_eq!(f["status"], "failed");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("not within 2s: the route does not pass 10.11.0.1"),
        "{f}"
    );
    assert!(f["started_ms"].as_u64().unwrap() >= 4000, "{f}");
    assert_eq!(r["steps"][2]["status"], "skipped");
    assert!(
        r["cleanup"][0]
            .as_str()
            .unwrap()
            .contains("link s1: back to up"),
        "{r}"
    );
    let t = Instant::now();
    while lab.first_hop() != "10.11.0.1" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "traffic not back on r1 after the failed run"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // ---- Partition, kill, throughput and the rate limit it measures; the killed VM is
    // restarted at the end.
    let faults = lab.file(
        "faults.yaml",
        r#"name: faults
steps:
  - name: fast
    throughput: { from: client.h, to: server.h, address: 10.2.0.10, size: 2M }
    expect: { min_mbps: 4 }
  - impair: { link: s1, rate: 2mbit }
  - name: limited
    throughput: { from: client.h, to: server.h, address: 10.2.0.10, size: 1M }
    expect: { max_mbps: 2.5 }
  - clear: s1
  - name: server cut off
    partition: [server.h]
  - name: nobody reaches the server
    reach: { vms: [client.h, core.r1, server.h] }
    expect: { reach: { client.h: [core.r1], core.r1: [client.h], server.h: [] } }
  - heal: all
  - kill: core.r2
  - name: r2 is gone, the rest is back
    reach: { vms: [client.h, core.r1, core.r2, server.h] }
    expect: { reach: { client.h: [core.r1], core.r1: [client.h, server.h], server.h: [core.r1] } }
"#,
    );
    let (o, r) = lab.scenario(&faults, &[]);
    let out = ok(&o);
    assert!(out.contains("PASSED"), "{out}");
    let fast = step(&r, "fast")["metrics"]["mbps"].as_f64().unwrap();
    let limited = step(&r, "limited")["metrics"]["mbps"].as_f64().unwrap();
    eprintln!("throughput: {fast} Mbit/s unlimited, {limited} Mbit/s at rate 2mbit");
    assert!(
        r["cleanup"].to_string().contains("restarted core.r2"),
        "{r}"
    );
    ok(&lab.run(&["exec", &format!("{LAB}.core.r2"), "--", "true"]));

    // ---- WASM steps. The example module (Rust, checked in built) measures, puts 100 ms on
    // c1, checks the round trip grew, clears it, checks it is back.
    let (o, r) = lab.scenario(&example("wasm-delay-probe.yaml"), &[]);
    let out = ok(&o);
    assert!(out.contains("PASSED"), "{out}");
    let w = step(&r, "delay on c1 shows up and goes away");
    let num = |k: &str| -> f64 { w["metrics"]["vars"][k].as_str().unwrap().parse().unwrap() };
    let (base, delayed, restored) = (num("baseline_ms"), num("delayed_ms"), num("restored_ms"));
    eprintln!("wasm step: rtt {base} ms, {delayed} ms with 100 ms on c1, {restored} ms cleared");
    assert!(delayed >= base + 190.0 && restored < 100.0, "{w}");
    assert!(
        w["metrics"]["calls"]
            .to_string()
            .contains("impair c1: delay 100 ms"),
        "{w}"
    );
    // c1 answers directly (client.h ─c1─ core.r1) and without delay.
    let c1_rtt = || {
        let o = lab.run(&[
            "exec",
            &format!("{LAB}.client.h"),
            "--",
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            "10.11.0.1",
        ]);
        kobako_lab::scenario::parse_ping(&text(&o.stdout)).0
    };
    assert!(c1_rtt().expect("c1 cut") < 100.0);

    // A module that loops forever: stopped at its deadline and reported; the lab untouched
    // (the cut after it is skipped, c1 still answers).
    std::fs::write(lab.env.run.path().join("loop.wasm"), LOOP_WASM).unwrap();
    let spin = lab.file(
        "spin.yaml",
        "name: spin\nsteps:\n  - name: spins\n    wasm: { module: loop.wasm, timeout: 2s, fuel: 1000000000000 }\n  - name: never\n    link: { link: c1, state: down }\n",
    );
    let t = Instant::now();
    let (o, r) = lab.scenario(&spin, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    let s = step(&r, "spins");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("deadline of 2s passed"),
        "{s}"
    );
    assert_eq!(step(&r, "never")["status"], "skipped");
    // The same with fuel as the limit.
    let spin = lab.file(
        "spin.yaml",
        "name: spin\nsteps:\n  - name: spins\n    wasm: { module: loop.wasm, fuel: 20000000 }\n",
    );
    let (o, r) = lab.scenario(&spin, &[]);
    assert_eq!(o.status.code(), Some(1));
    let s = step(&r, "spins");
    assert!(
        s["message"].as_str().unwrap().contains("used all its fuel"),
        "{s}"
    );
    assert!(c1_rtt().expect("c1 touched by a stopped module") < 100.0);

    // A module that asks for the host (WASI) is refused before any step runs: the cut in step 1
    // does not happen.
    std::fs::write(lab.env.run.path().join("wasi.wasm"), WASI_WASM).unwrap();
    let wasi = lab.file(
        "wasi.yaml",
        "name: wasi\nsteps:\n  - link: { link: c1, state: down }\n  - wasm:\n      module: wasi.wasm\n",
    );
    let (o, _) = lab.scenario(&wasi, &[]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("wasi.yaml:5:")
            && err.contains("wasi_snapshot_preview1.fd_write")
            && err.contains("no WASI"),
        "{err}"
    );
    assert!(c1_rtt().expect("c1 cut by a refused scenario") < 100.0);

    // ---- restore: a checkpoint taken before a change, restored by a step, brings the old
    // state back (the guest's file from before the checkpoint, not the later one).
    let mark = |what: &str| {
        ok(&lab.run(&[
            "exec",
            &format!("{LAB}.client.h"),
            "--",
            "sh",
            "-c",
            &format!("echo {what} > /tmp/kb-mark"),
        ]))
    };
    mark("before");
    ok(&lab.run(&["checkpoint", LAB, "scn-stage1"]));
    mark("after");
    let back = lab.file(
        "restore.yaml",
        "name: back\nsteps:\n  - name: back to stage1\n    restore: scn-stage1\n  - name: the old mark\n    exec: { vm: client.h, cmd: cat /tmp/kb-mark }\n    expect: { stdout_contains: before }\n",
    );
    let (o, r) = lab.scenario(&back, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(step(&r, "back to stage1")["status"], "passed", "{r}");
    assert_eq!(step(&r, "the old mark")["status"], "passed", "{r}");
    ok(&lab.run(&["checkpoint", LAB, "scn-stage1", "--delete"]));

    // ---- Ctrl-C: the run stops, the fault it made is undone, the exit status says so.
    let sigint = lab.file(
        "sigint.yaml",
        "name: sigint\nsteps:\n  - impair: { link: c1, delay: 150ms }\n  - sleep: 60s\n",
    );
    let child = lab
        .cmd(&["scenario", "run", sigint.to_str().unwrap(), "--lab", LAB])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child
        .wait_with_output_timeout(Duration::from_secs(30))
        .expect("scenario did not stop on SIGINT");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("cleanup: link c1: back to up"),
        "{err}"
    );
    let after = lab.rtt().expect("no reply after Ctrl-C");
    assert!(
        after < 100.0,
        "impairment left behind after Ctrl-C: {after} ms"
    );

    ok(&lab.run(&["down", LAB]));
    lab.env.assert_clean();
}
