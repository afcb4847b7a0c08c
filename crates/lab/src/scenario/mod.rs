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
//! Every step has exactly one action (`wait_ready`, `impair`, `clear`, `link`, `exec`, `rtt`,
//! `sleep`, `pause`, `resume`, `restart`), an optional `name`, `after` and `expect`. The file is
//! checked like a lab file (line, column, path, fix). Faults are undone at the end, on failure
//! and on Ctrl-C: links get back the state and impairment they had before the run, paused VMs
//! continue. The first failed step ends the run; the rest are reported as skipped.

mod model;
mod report;
mod run;

pub use model::*;
pub use report::{Report, StepResult};
mod steps;

pub use run::run;
pub use steps::parse_ping;

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
            started_ms: 0,
            duration_ms: 1000,
            steps: vec![
                StepResult {
                    index: 1,
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
    }
}
