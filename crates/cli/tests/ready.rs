//! "Ready means ready" (issue 23 item 3), on real guests: `up` returns when each VM's `ready:`
//! checks pass in the guest (tcp, http, exec), a check that never passes fails its VM with the
//! check named and the VM left running to look at, and a VM goes booting → agent_up → ready.

mod common;

use common::*;
use std::time::Instant;

/// The states `vm` went through, from the state database's events.
fn states_of(state: &std::path::Path, vm: &str) -> Vec<String> {
    let db = kobako_state::Db::open_in(state).unwrap();
    let mut out: Vec<String> = Vec::new();
    for e in db.events_after(0, 10_000).unwrap() {
        if e.kind == "vm.state" && e.vm.as_deref() == Some(vm) {
            let s = e.data["state"].as_str().unwrap_or("?").to_string();
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
    }
    out
}

#[test]
fn up_returns_when_the_checks_pass_and_names_the_one_that_never_does() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = env.run.path().join("ready.yaml");
    // `slow` starts its web server 4 s and its marker 7 s after its agent is up: without the
    // checks, `up` would return before either exists. `never` waits for a port nobody opens.
    std::fs::write(
        &p,
        r#"name: kbt-ready
defaults: { image: tiny, memory: 96M }
nodes:
  n:
    vms:
      slow:
        files: { /www/index.html: { content: "up and serving\n" } }
        run:
          - { name: httpd, command: "sleep 4; exec httpd -f -p 8080 -h /www" }
          - { name: late, command: "sleep 7; touch /tmp/late; exec sleep 1000000" }
        ready:
          - { tcp: 8080 }
          - { http: "http://localhost:8080/index.html" }
          - { exec: "test -e /tmp/late" }
        ready_timeout: 120s
      never:
        ready: [{ tcp: 9999 }]
        ready_timeout: 5s
"#,
    )
    .unwrap();
    let _down = Down {
        env: &env,
        state: state.path(),
        lab: "kbt-ready",
    };
    let t = Instant::now();
    let o = lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]);
    let took = t.elapsed();
    let out = text(&o.stdout);
    let err = text(&o.stderr);
    eprintln!("up in {:.1} s:\n{err}{out}", took.as_secs_f64());
    assert_eq!(o.status.code(), Some(1), "one VM is not ready:\n{err}{out}");
    assert!(out.contains("1 of 2 VMs ready"), "{out}");

    // The moment `up` returned, slow's services answer: no retry here.
    let exec = |vm: &str, cmd: &str| {
        lab_cmd(
            &env,
            state.path(),
            &["exec", &format!("kbt-ready.n.{vm}"), "--", "sh", "-c", cmd],
        )
    };
    let page = ok(&exec("slow", "wget -qO- http://127.0.0.1:8080/index.html"));
    assert_eq!(page, "up and serving\n");
    ok(&exec("slow", "test -e /tmp/late"));
    assert!(
        err.contains(
            "tcp 8080, http http://localhost:8080/index.html, exec 'test -e /tmp/late' passed in"
        ),
        "the progress does not say which checks passed: {err}"
    );

    // The failing VM: its check and the timeout are named, with what to do, and it still runs.
    let inspect: serde_json::Value = serde_json::from_str(&ok(&lab_cmd(
        &env,
        state.path(),
        &["inspect", "kbt-ready", "--json"],
    )))
    .unwrap();
    assert_eq!(inspect["vms"]["kbt-ready.n.slow"]["state"], "ready");
    let never = &inspect["vms"]["kbt-ready.n.never"];
    assert_eq!(never["state"], "failed", "{never}");
    let reason = never["reason"].as_str().unwrap_or_default();
    for want in [
        "check `tcp 9999` did not pass within 5s",
        "connection refused",
        "ready_timeout",
    ] {
        assert!(reason.contains(want), "{want:?} missing from: {reason}");
    }
    assert!(out.contains("tcp 9999"), "{out}");
    ok(&exec("never", "true"));

    // What the UI and `inspect` showed along the way (the event log; `pending` rows are
    // written without an event).
    assert_eq!(
        states_of(state.path(), "kbt-ready.n.slow"),
        ["booting", "agent_up", "ready"],
    );
    assert_eq!(
        states_of(state.path(), "kbt-ready.n.never"),
        ["booting", "agent_up", "failed"],
    );

    // `up` again: both VMs are kept; slow passes at once, never fails again the same way.
    let o = lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let again = text(&o.stdout);
    assert!(again.contains("1 of 2 VMs ready"), "{again}");

    // A checkpoint restored runs the checks again: slow's pass at once (its services were
    // running when saved), never's fails the same way.
    ok(&lab_cmd(
        &env,
        state.path(),
        &["checkpoint", "kbt-ready", "c1"],
    ));
    let o = lab_cmd(&env, state.path(), &["restore", "kbt-ready", "c1"]);
    let restored = format!("{}{}", text(&o.stdout), text(&o.stderr));
    eprintln!("restore:\n{restored}");
    assert!(restored.contains("1 of 2 VMs ready"), "{restored}");
    assert!(
        restored.contains("check `tcp 9999` did not pass"),
        "{restored}"
    );
    assert!(states_of(state.path(), "kbt-ready.n.slow").ends_with(&[
        "booting".to_string(),
        "agent_up".to_string(),
        "ready".to_string()
    ]));
    let page = ok(&exec("slow", "wget -qO- http://127.0.0.1:8080/index.html"));
    assert_eq!(page, "up and serving\n");

    ok(&lab_cmd(&env, state.path(), &["down", "kbt-ready"]));
    env.assert_clean();
}
