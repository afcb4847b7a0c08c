//! A lab's links over the API, with real tiny-image VMs: cut and heal, live impairment seen in
//! the RTT, and scenarios (checked before anything runs, run as an operation with a report,
//! failing with the step named, cancelled by their owner only, cancelled by a server stopped
//! with SIGTERM) whose faults are always undone. Split from the one 600-line server test
//! (api_labs.rs).

mod common;

use std::time::{Duration, Instant};

use common::server::{tok, yaml_bytes as yaml, Body, Server};
use serde_json::{json, Value};

#[test]
fn links_impairment_and_scenarios_over_the_api() {
    let mut srv = Server::start();
    let (admin, alice, lab) = srv.alice_with_linked_lab();
    srv.lab_up(&alice, &lab);
    let x = format!("{lab}.a.x");

    // Links: cut and heal (stored and reported).
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/down"),
        Some(&alice),
        None,
    );
    assert_eq!((s, &v["up"]), (200, &json!(false)), "{v}");
    let ping = |srv: &Server| {
        srv.call(
            "POST",
            &format!("/vms/{x}/exec"),
            Some(&alice),
            Some(Body::Json(
                json!({"argv": ["ping", "-c", "2", "-W", "2", "10.77.0.2"]}),
            )),
        )
        .1["exit_code"]
            .as_i64()
            .unwrap()
    };
    assert_ne!(ping(&srv), 0, "ping crossed a cut link");
    let (s, _) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/up"),
        Some(&alice),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(ping(&srv), 0, "ping does not cross the healed link");
    // Live impairment: 200 ms of delay shows in the RTT, and goes when cleared.
    let rtt = |srv: &Server| -> f64 {
        let (_, v) = srv.call(
            "POST",
            &format!("/vms/{x}/exec"),
            Some(&alice),
            Some(Body::Json(
                json!({"argv": ["ping", "-c", "3", "-i", "0.3", "10.77.0.2"]}),
            )),
        );
        let out = v["stdout"].as_str().unwrap_or_default().to_string();
        // busybox: "round-trip min/avg/max = 0.321/0.455/0.600 ms"
        out.lines()
            .find_map(|l| l.split(" = ").nth(1))
            .and_then(|t| t.split('/').nth(1))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no RTT in {v}"))
    };
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/impair"),
        Some(&alice),
        Some(Body::Json(json!({"delay": "100ms"}))),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["impairment"]["delay"], "100ms", "{v}");
    let slow = rtt(&srv);
    assert!(slow >= 190.0, "RTT {slow} ms with 100 ms each way");
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/impair"),
        Some(&alice),
        Some(Body::Json(json!({"delay": "soon"}))),
    );
    assert_eq!(s, 422, "{v}");
    let (s, v) = srv.call(
        "DELETE",
        &format!("/labs/{lab}/links/l1/impair"),
        Some(&alice),
        None,
    );
    assert_eq!((s, &v["impairment"]), (200, &Value::Null), "{v}");
    let fast = rtt(&srv);
    assert!(fast < 100.0, "RTT {fast} ms after clearing");

    // Counters: the end of l1 on a.x counts the pings it sent and the replies it received.
    let l1_end = |srv: &Server| -> Value {
        let (s, v) = srv.call("GET", &format!("/labs/{lab}/counters"), Some(&alice), None);
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["vm"] == "a.x" && c["attach"] == "link:l1")
            .cloned()
            .unwrap_or_else(|| panic!("no counters of a.x on l1 in {v}"))
    };
    let before = l1_end(&srv);
    assert_eq!(ping(&srv), 0);
    let after = l1_end(&srv);
    let grew = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert!(
        grew("sent_packets") >= 2 && grew("received_packets") >= 2,
        "{before} -> {after}"
    );
    // Two echo requests of 64 bytes of ICMP: at least 98 bytes each on the wire.
    assert!(
        grew("sent_bytes") >= 196 && grew("received_bytes") >= 196,
        "{before} -> {after}"
    );

    // Scenarios: checked against the lab before anything runs (422 naming file, line, fix);
    // run as an operation whose progress is the step lines and whose result is the report; a
    // failing one is a failed operation naming the step, and its fault is undone.
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/scenarios?file=bad.yaml"),
        Some(&alice),
        yaml(b"name: bad\nsteps:\n  - link: { link: l1, state: down }\n  - impair: { link: l9, delay: 5ms }\n".to_vec()),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_scenario", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("bad.yaml:4:") && m.contains("no link 'l9'") && m.contains("nothing was run"),
        "{m}"
    );
    assert_eq!(ping(&srv), 0, "a refused scenario cut the link");
    let scn = |expect: &str| {
        format!(
            "name: api\nsteps:\n  - impair: {{ link: l1, delay: 100ms }}\n  - name: slow\n    rtt: {{ from: a.x, to: 10.77.0.2, count: 2 }}\n    expect: {{ {expect} }}\n"
        )
        .into_bytes()
    };
    let (s, op) = srv.call(
        "POST",
        &format!("/labs/{lab}/scenarios"),
        Some(&alice),
        yaml(scn("min_ms: 190")),
    );
    assert_eq!(s, 202, "{op}");
    assert_eq!(op["kind"], "lab.scenario");
    let done = srv.wait_op(&alice, &op, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["passed"], true, "{done}");
    assert!(
        done["result"]["report"]["steps"][1]["metrics"]["rtt_ms"]
            .as_f64()
            .unwrap()
            >= 190.0
    );
    assert!(done["result"]["junit"]
        .as_str()
        .unwrap()
        .contains("failures=\"0\""));
    assert!(done["result"]["html"].as_str().unwrap().contains("<svg"));
    assert!(done["progress"].to_string().contains("ok   slow"), "{done}");
    let (s, op) = srv.call(
        "POST",
        &format!("/labs/{lab}/scenarios"),
        Some(&alice),
        yaml(scn("max_ms: 50")),
    );
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&alice, &op, Duration::from_secs(60));
    assert_eq!(done["state"], "failed", "{done}");
    let e = done["error"].as_str().unwrap();
    assert!(
        e.contains("step 2 'slow'") && e.contains("rtt ms") && e.contains("> 50"),
        "{e}"
    );
    assert_eq!(
        done["result"]["report"]["steps"][1]["expected"], "rtt ≤ 50 ms",
        "{done}"
    );
    let fast = rtt(&srv);
    assert!(fast < 100.0, "RTT {fast} ms after a failed scenario");

    // Cancel: a long scenario stopped half-way ends `cancelled` with its report (the steps not
    // run skipped, naming who cancelled) and its fault undone; only its owner or an admin may.
    let (s, op) = srv.call(
        "POST",
        &format!("/labs/{lab}/scenarios"),
        Some(&alice),
        yaml(b"name: long\nsteps:\n  - link: { link: l1, state: down }\n  - sleep: 300s\n  - name: never\n    rtt: { from: a.x, to: 10.77.0.2, count: 1 }\n".to_vec()),
    );
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let (_, v) = srv.call("GET", &format!("/operations/{id}"), Some(&alice), None);
        if v["progress"].to_string().contains("ok ") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(ping(&srv), 0, "the scenario's first step did not cut l1");
    let (s, _) = srv.call(
        "POST",
        "/users",
        Some(&admin),
        Some(Body::Json(
            json!({"name": "bob", "password": "bob-password", "role": "member"}),
        )),
    );
    assert_eq!(s, 201);
    let bob = tok(&srv.login("bob", "bob-password"));
    let (s, v) = srv.call(
        "POST",
        &format!("/operations/{id}/cancel"),
        Some(&bob),
        None,
    );
    // Another member does not even see alice's operation: 404, as for a name that is not there.
    assert_eq!(s, 404, "another member cancelled alice's scenario: {v}");
    let (s, v) = srv.call(
        "POST",
        &format!("/operations/{id}/cancel"),
        Some(&alice),
        None,
    );
    assert_eq!(s, 202, "{v}");
    let t1 = Instant::now();
    let done = srv.wait_op(&alice, &op, Duration::from_secs(30));
    eprintln!("scenario cancelled in {:?}", t1.elapsed());
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["error"], "cancelled by alice", "{done}");
    let steps = &done["result"]["report"]["steps"];
    assert_eq!(steps[0]["status"], "passed", "{done}");
    for i in [1, 2] {
        assert_eq!(steps[i]["status"], "skipped", "{done}");
        assert_eq!(steps[i]["message"], "cancelled by alice", "{done}");
    }
    assert!(done["result"]["html"]
        .as_str()
        .unwrap()
        .contains("STOPPED (cancelled by alice)"));
    assert_eq!(ping(&srv), 0, "the cancelled scenario left l1 cut");
    let (s, v) = srv.call(
        "POST",
        &format!("/operations/{id}/cancel"),
        Some(&alice),
        None,
    );
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already ended (cancelled)"),
        "{v}"
    );
    let (s, v) = srv.call("POST", "/operations/nope/cancel", Some(&alice), None);
    assert_eq!(s, 404, "{v}");

    // A server stopped with SIGTERM during a scenario run cancels it first: after the restart
    // the run is `cancelled` (not `interrupted`) and its fault is undone.
    let (s, op) = srv.call(
        "POST",
        &format!("/labs/{lab}/scenarios"),
        Some(&alice),
        yaml(
            b"name: long\nsteps:\n  - impair: { link: l1, loss: 100% }\n  - sleep: 300s\n".to_vec(),
        ),
    );
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while !srv
        .call("GET", &format!("/operations/{id}"), Some(&alice), None)
        .1["progress"]
        .to_string()
        .contains("ok ")
    {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(200));
    }
    let t1 = Instant::now();
    let st = srv.term();
    eprintln!("server stopped {:?} after SIGTERM", t1.elapsed());
    assert!(st.success(), "{st}: {}", srv.log_text());
    srv.spawn();
    let (_, done) = srv.call("GET", &format!("/operations/{id}"), Some(&alice), None);
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["error"], "cancelled: the server is stopping", "{done}");
    assert_eq!(
        ping(&srv),
        0,
        "the scenario stopped with the server left l1 impaired"
    );
}
