//! Scenarios: ordered fault-injection and check steps run against a running lab, with a report
//! a CI job can gate on.
//!
//! ```yaml
//! name: delay-budget
//! lab: web-stack                  # or --lab
//! steps:
//!   - wait_ready: 60s
//!   - name: baseline
//!     rtt: { from: client.pc, to: 10.20.0.10, count: 3 }
//!     expect: { max_ms: 50 }
//!   - impair: { link: ab, delay: 100ms, loss: 5% }
//!   - after: 1s                   # wait before this step
//!     exec: { vm: client.pc, cmd: "wget -qO- http://10.20.0.10:8080/health" }
//!     expect: { exit: 0, stdout_contains: ok }
//!   - link: { link: ab, state: down }
//!   - sleep: 2s
//! ```
//! Every step has exactly one action (see `ACTIONS`: faults, checks, measurements, groups), an
//! optional `name`, timing (`at`, `after`, `every`/`for`, `within`/`since`), `expect` and
//! `assert`. The file is checked like a lab file (line, column, path, fix), and its VM and link
//! names against the lab, before any step runs. Faults are undone at the end, on failure and on
//! Ctrl-C unless kept. The first failed step ends the run; the rest are reported as skipped.
//! README.md (Scenarios) documents the file; docs/ARCHITECTURE.md the design.

mod ctx;
mod model;
mod report;
mod run;
mod steps;
mod wasm;
mod wasm_run;

pub use ctx::{Ctx, Fault, Outcome};
pub use model::*;
pub use report::{Report, Sample, StepResult};
pub use run::{run, run_until};
pub use steps::{parse_http_status, parse_ping, parse_traceroute};
pub use wasm::WasmStep;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_is_parsed() {
        let busybox = "3 packets transmitted, 3 packets received, 0% packet loss\nround-trip min/avg/max = 0.263/0.301/0.340 ms\n";
        assert_eq!(parse_ping(busybox), (Some(0.301), Some(0.0)));
        let lost = "2 packets transmitted, 0 packets received, 100% packet loss\n";
        assert_eq!(parse_ping(lost), (None, Some(100.0)));
        let iputils = "3 packets transmitted, 3 received, 0% packet loss, time 2003ms\nrtt min/avg/max/mdev = 0.040/0.050/0.061/0.008 ms\n";
        assert_eq!(parse_ping(iputils), (Some(0.05), Some(0.0)));
    }

    #[test]
    fn steps_need_exactly_one_action_and_unknown_keys_are_located() {
        let e = load_str(
            "s.yaml",
            "name: x\nsteps:\n  - sleep: 1s\n    exec: { vm: a.b, cmd: \"true\" }\n  - {}\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("s.yaml:3:") && text.contains("exec, sleep"),
            "{text}"
        );
        assert!(
            text.contains("s.yaml:5:") && text.contains("none"),
            "{text}"
        );
        let e = load_str("s.yaml", "name: x\nsteps:\n  - slep: 1s\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("s.yaml:3:") && text.contains("slep"),
            "{text}"
        );
        let e = load_str("s.yaml", "name: x\nsteps:\n  - sleep: soon\n").unwrap_err();
        assert!(e.to_string().contains("s.yaml:3:"), "{e}");
        let ok = load_str(
            "s.yaml",
            "name: x\nlab: l\nsteps:\n  - impair: { link: ab, delay: 100ms, loss: 5% }\n  - rtt: { from: a.h, to: 10.0.0.2 }\n    expect: { min_ms: 190 }\n",
        )
        .unwrap();
        assert_eq!(ok.steps.len(), 2);
    }

    #[test]
    fn reports_render_junit_and_html() {
        let r = Report {
            scenario: "s<1>".into(),
            lab: "l".into(),
            passed: false,
            interrupted: None,
            started_ms: 0,
            duration_ms: 1000,
            steps: vec![
                StepResult {
                    index: 1,
                    id: "1".into(),
                    samples: Vec::new(),
                    name: "baseline".into(),
                    action: "rtt".into(),
                    status: "passed".into(),
                    started_ms: 0,
                    duration_ms: 400,
                    expected: Some("rtt ≤ 50 ms".into()),
                    observed: Some("rtt 1.0 ms".into()),
                    message: None,
                    metrics: serde_json::json!({"rtt_ms": 1.0}),
                },
                StepResult {
                    index: 2,
                    id: "2".into(),
                    samples: vec![Sample {
                        t_ms: 600,
                        ok: false,
                        metrics: serde_json::json!({"rtt_ms": 190.0, "loss_pct": 50.0}),
                    }],
                    name: "slow".into(),
                    action: "rtt".into(),
                    status: "failed".into(),
                    started_ms: 500,
                    duration_ms: 400,
                    expected: Some("rtt ≤ 50 ms".into()),
                    observed: Some("rtt 201.0 ms".into()),
                    message: Some("rtt ms 201.0 > 50".into()),
                    metrics: serde_json::json!({"rtt_ms": 201.0}),
                },
            ],
            cleanup: vec!["link ab: back to up".into()],
        };
        let j = r.junit();
        assert!(j.contains("tests=\"2\" failures=\"1\""), "{j}");
        assert!(
            j.contains("<failure message=\"rtt ms 201.0 &gt; 50\">"),
            "{j}"
        );
        assert!(j.contains("s&lt;1&gt;"));
        let h = r.html();
        assert!(h.contains("FAILED") && h.contains("<polyline") && h.contains("back to up"));
        // Both series are plotted: one single attempt and one sample for RTT, a loss sample.
        assert_eq!(r.series("rtt_ms"), vec![(0.0, 1.0), (600.0, 190.0)]);
        assert_eq!(r.series("loss_pct"), vec![(600.0, 50.0)]);
        assert!(h.contains("600 ms: 50.0"), "{h}");
    }

    #[test]
    fn assertions_parse_and_bad_ones_are_located() {
        let a = Assertion::parse("rtt_ms <= 250ms").unwrap();
        assert_eq!(
            (a.metric.as_str(), a.op.as_str(), a.value),
            ("rtt_ms", "<=", 250.0)
        );
        assert!(a.holds(250.0) && !a.holds(250.1));
        assert!(Assertion::parse("loss_pct<5%").unwrap().holds(4.9));
        assert!(Assertion::parse("rtt_ms 250")
            .unwrap_err()
            .to_string()
            .contains("no comparison"));
        assert_eq!(
            Assertion::parse("rtt_ms < fast").unwrap_err().to_string(),
            "'rtt_ms < fast': 'fast' is not a number"
        );
        let e = load_str(
            "s.yaml",
            "name: x\nsteps:\n  - name: cut\n    link: { link: ab, state: down }\n  - rtt: { from: a.h, to: 10.0.0.2 }\n    assert: [\"rtt_ms < 50\", \"rtt = 3\", \"mbps > 1\"]\n  - rtt: { from: a.h, to: 10.0.0.2 }\n    every: 1s\n  - exec: { vm: a.h, cmd: \"true\" }\n    within: 5s\n    since: cutt\n  - sleep: 1s\n    for: 2s\n",
        )
        .unwrap_err();
        let t = e.to_string();
        assert!(
            t.contains("s.yaml:6:") && t.contains("'rtt = 3' has no comparison"),
            "{t}"
        );
        assert!(
            t.contains("measures no 'mbps'") && t.contains("rtt_ms, loss_pct"),
            "{t}"
        );
        assert!(
            t.contains("s.yaml:8:") && t.contains("repeat forever"),
            "{t}"
        );
        assert!(
            t.contains("s.yaml:11:")
                && t.contains("no earlier step named 'cutt'")
                && t.contains("cut"),
            "{t}"
        );
        assert!(
            t.contains("s.yaml:13:") && t.contains("neither repeated nor a fault"),
            "{t}"
        );
    }

    #[test]
    fn names_are_checked_against_the_lab_before_anything_runs() {
        let lab = crate::spec::load_one(
            "lab.yaml",
            "name: l\ndefaults: { image: tiny }\nnodes:\n  a: { vms: { h: { interfaces: { eth1: { addresses: [10.9.0.1/30] } } } } }\n  b: { vms: { h: { interfaces: { eth1: { addresses: [10.9.0.2/30] } } } } }\nlinks:\n  - { name: ab, endpoints: [\"a.h:eth1\", \"b.h:eth1\"] }\n",
            &crate::spec::HostLimits::detect(),
        )
        .unwrap();
        let s = load_str(
            "s.yaml",
            "name: x\nsteps:\n  - impair: { link: abc, delay: 1ms }\n  - parallel:\n      - rtt: { from: a.hh, to: b.h }\n      - partition: [b.h, c.h]\n  - reach: { vms: [a.h, b.h] }\n    expect: { reach: { a.h: [b.h, x.y] } }\n",
        )
        .unwrap();
        let t = check_against(&s, &lab).unwrap_err().to_string();
        assert!(
            t.contains("s.yaml:3:") && t.contains("no link 'abc'") && t.contains("ab"),
            "{t}"
        );
        assert!(t.contains("s.yaml:5:") && t.contains("no VM 'a.hh'"), "{t}");
        assert!(t.contains("s.yaml:6:") && t.contains("no VM 'c.h'"), "{t}");
        assert!(
            t.contains("'x.y' is not one of this step's `reach.vms`"),
            "{t}"
        );
        assert!(!t.contains("'b.h'"), "{t}");
        let ids: Vec<String> = walk(&s.steps).into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(ids, ["1", "2", "2.1", "2.2", "3"]);
    }

    #[test]
    fn traceroute_and_http_outputs_are_parsed() {
        let tr = "traceroute to 10.2.0.10 (10.2.0.10), 8 hops max, 46 byte packets\n 1  10.12.0.1  1.2 ms\n 2  *\n 3  10.2.0.10  2.0 ms\n";
        assert_eq!(parse_traceroute(tr), ["10.12.0.1", "*", "10.2.0.10"]);
        assert_eq!(
            parse_http_status("  HTTP/1.1 200 OK\n  Server: x\n"),
            Some(200)
        );
        assert_eq!(
            parse_http_status("wget: server returned error: HTTP/1.1 404 Not Found\n"),
            Some(404)
        );
        assert_eq!(parse_http_status("wget: can't connect"), None);
    }
}
