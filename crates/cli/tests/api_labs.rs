//! A lab over the API with real tiny-image VMs, through its whole life: up as an operation
//! (202, a second change refused while it runs, progress, every VM ready with a boot time and a
//! pid, the link up), the member's quota checked at up, the event history as SSE, a server
//! killed with -9 while its VMs run (same pids after the restart, the event stream resumes from
//! the last id seen, exec still works), then down and delete. Split from the one 600-line
//! server test: exec and files are in api_guest.rs, links and scenarios in api_links.rs.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::server::{lab_yaml, tok, yaml_bytes as yaml, Body, Server};
use serde_json::{json, Value};

/// Reads SSE events from `path` until `until` matches one (or the timeout passes).
fn sse_until(
    srv: &Server,
    token: &str,
    last_id: Option<i64>,
    query: &str,
    until: impl Fn(&Value) -> bool,
    timeout: Duration,
) -> Vec<Value> {
    let mut r = srv
        .agent
        .get(&srv.url(&format!("/events{query}")))
        .set("authorization", &format!("Bearer {token}"))
        .timeout(timeout);
    if let Some(id) = last_id {
        r = r.set("last-event-id", &id.to_string());
    }
    let resp = r.call().unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut rd = BufReader::new(resp.into_reader());
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut line = String::new();
    while t0.elapsed() < timeout {
        line.clear();
        match rd.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(d) = line.strip_prefix("data:") {
            let v: Value = serde_json::from_str(d.trim()).unwrap();
            let done = until(&v);
            out.push(v);
            if done {
                return out;
            }
        }
    }
    panic!("no matching event within {timeout:?}; got {out:?}");
}

#[test]
fn lab_up_down_and_a_server_killed_with_9_over_the_api() {
    let mut srv = Server::start();
    let (_, alice, lab) = srv.alice_with_linked_lab();

    // Up: 202 + operation; progress lines; every VM ready with a boot time and a pid.
    let t0 = Instant::now();
    let (s, op) = srv.call("POST", &format!("/labs/{lab}/up"), Some(&alice), None);
    assert_eq!(s, 202, "{op}");
    // A second change while the first runs: 409.
    let (s, v) = srv.call("POST", &format!("/labs/{lab}/up"), Some(&alice), None);
    assert_eq!(s, 409, "{v}");
    let done = srv.wait_op(&alice, &op, Duration::from_secs(180));
    assert_eq!(done["state"], "succeeded", "{done}\n{}", srv.log_text());
    eprintln!("lab up through the API: {:?}", t0.elapsed());
    assert!(done["progress"].as_array().unwrap().len() >= 3, "{done}");
    let (s, l) = srv.call("GET", &format!("/labs/{lab}"), Some(&alice), None);
    assert_eq!(s, 200);
    assert_eq!(l["state"], "ready", "{l}");
    let vms = l["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 2);
    for v in vms {
        assert_eq!(v["state"], "ready", "{v}");
        assert!(v["boot_ms"].as_i64().unwrap() > 0);
        assert!(v["pid"].as_i64().is_some());
    }
    let x = format!("{lab}.a.x");
    let pids: Vec<i64> = vms.iter().map(|v| v["pid"].as_i64().unwrap()).collect();
    assert_user_cgroup(&lab, &pids);
    assert_eq!(l["links"][0]["name"], "l1");
    assert_eq!(l["links"][0]["up"], true);

    // Quota: a third VM does not fit next to the two that run: 409 at up.
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&alice),
        yaml(lab_yaml(&format!("{lab}q"), 1, "128M")),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = srv.call("POST", &format!("/labs/{lab}q/up"), Some(&alice), None);
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded");
    assert_eq!(
        srv.call("DELETE", &format!("/labs/{lab}q"), Some(&alice), None)
            .0,
        204
    );

    // Events: the lab's history from the start, as SSE with ids.
    let evs = sse_until(
        &srv,
        &alice,
        Some(0),
        &format!("?lab={lab}"),
        |e| e["kind"] == "lab.state" && e["data"]["state"] == "ready",
        Duration::from_secs(20),
    );
    let ready = evs
        .iter()
        .filter(|e| e["kind"] == "vm.state" && e["data"]["state"] == "ready")
        .count();
    assert_eq!(ready, 2, "{evs:?}");
    assert!(evs.iter().all(|e| e["lab"] == lab.as_str()));
    let last_id = evs.last().unwrap()["id"].as_i64().unwrap();

    // kill -9 the server while the VMs run: they keep running (same pids), and after a
    // restart the API shows them ready and the event stream resumes from the last id seen.
    srv.kill9();
    for (v, pid) in vms.iter().zip(&pids) {
        let d = srv.run.path().join("vms").join(v["name"].as_str().unwrap());
        assert_eq!(
            std::fs::read_to_string(d.join("vm.pid")).unwrap().trim(),
            pid.to_string()
        );
    }
    srv.spawn();
    let alice = tok(&srv.login("alice", "alice-password"));
    let (s, l) = srv.call("GET", &format!("/labs/{lab}"), Some(&alice), None);
    assert_eq!(s, 200);
    assert_eq!(l["state"], "ready", "{l}");
    let now: Vec<i64> = l["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(now, pids, "a VM was restarted");
    let (s, _) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/down"),
        Some(&alice),
        None,
    );
    assert_eq!(s, 200);
    let evs = sse_until(
        &srv,
        &alice,
        Some(last_id),
        &format!("?lab={lab}"),
        |e| e["kind"] == "link.state" && e["data"]["up"] == false,
        Duration::from_secs(20),
    );
    assert!(evs[0]["id"].as_i64().unwrap() > last_id);
    // The exec still works through the re-read VM directory.
    let (s, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(json!({"argv": ["true"]}))),
    );
    assert_eq!((s, &v["exit_code"]), (200, &json!(0)), "{v}");

    // Down: VMs stop, the lab stays (stopped) and can then be deleted.
    let (s, op) = srv.call("POST", &format!("/labs/{lab}/down"), Some(&alice), None);
    assert_eq!(s, 202);
    let done = srv.wait_op(&alice, &op, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, l) = srv.call("GET", &format!("/labs/{lab}"), Some(&alice), None);
    assert_eq!(l["state"], "stopped");
    assert!(l["vms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["pid"].is_null()));
    assert_eq!(
        srv.call("DELETE", &format!("/labs/{lab}"), Some(&alice), None)
            .0,
        204
    );
    let left: Vec<_> = std::fs::read_dir(srv.run.path().join("vms"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM directories left: {left:?}");
    // The lab's cgroup (and alice's, her last lab gone) went with its last VM.
    for h in ["memory", "pids", "cpu", ""] {
        let g = std::path::Path::new("/sys/fs/cgroup")
            .join(h)
            .join("kobako/user.alice");
        assert!(
            !g.join(format!("lab.{lab}")).exists() && !g.exists(),
            "{} left",
            g.display()
        );
    }
}

/// Alice's VMs sit in her cgroup and their lab's (`kobako/user.alice/lab.<lab>/<vm>.<uid>`), and
/// her group's limits are her quotas as the kernel holds them: 512 MiB of guest memory plus, for
/// each of her 2 VMs, what one VM process may use above its guest's RAM (read from a VM's own
/// limit: 128 MiB guests); tasks, 2 VM processes' worth.
fn assert_user_cgroup(lab: &str, pids: &[i64]) {
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory/kobako").exists();
    for pid in pids {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let want = format!("/kobako/user.alice/lab.{lab}/{lab}.");
        assert!(cg.contains(&want), "VM process {pid} not in {want}: {cg}");
    }
    let read = |p: std::path::PathBuf| -> u64 {
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .unwrap()
    };
    let (root, mem_knob) = if v1 {
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
    } else {
        ("/sys/fs/cgroup", "memory.max")
    };
    let user = std::path::Path::new(root).join("kobako/user.alice");
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
    let own = cg
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c, path) = (p.next()?, p.next()?, p.next()?);
            (if v1 {
                c.split(',').any(|c| c == "memory")
            } else {
                c.is_empty()
            })
            .then(|| std::path::Path::new(root).join(&path[1..]))
        })
        .unwrap();
    let overhead = read(own.join(mem_knob)) - (128 << 20);
    assert_eq!(
        read(user.join(mem_knob)),
        (512 << 20) + 2 * overhead,
        "alice's memory limit"
    );
    let pids_root = if v1 {
        "/sys/fs/cgroup/pids"
    } else {
        "/sys/fs/cgroup"
    };
    assert_eq!(
        read(std::path::Path::new(pids_root).join("kobako/user.alice/pids.max")),
        2 * 512,
        "alice's task limit"
    );
}

/// An `up` that leaves a VM failed (here: a readiness check that never passes) is a failed
/// operation, with the report of every VM as its result; the lab is degraded.
#[test]
fn an_up_with_a_failed_vm_is_a_failed_operation_with_its_report() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let text = "name: rdy\ndefaults: { image: tiny, memory: 96M }\nnodes:\n  n:\n    vms:\n      good: {}\n      never: { ready: [{ tcp: 9999 }], ready_timeout: 3s }\n";
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&admin),
        yaml(text.as_bytes().to_vec()),
    );
    assert_eq!(s, 201, "{v}");
    let (s, op) = srv.call("POST", "/labs/rdy/up", Some(&admin), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&admin, &op, Duration::from_secs(180));
    assert_eq!(done["state"], "failed", "{done}");
    let e = done["error"].as_str().unwrap_or_default();
    assert!(
        e.starts_with("1 of 2 VM(s) failed; rdy.n.never: not ready: check `tcp 9999`"),
        "{e}"
    );
    let vms = done["result"]["vms"].as_array().expect("the report");
    let state = |n: &str| {
        vms.iter()
            .find(|v| v["name"] == n)
            .map(|v| v["state"].clone())
    };
    assert_eq!(state("rdy.n.good"), Some(json!("ready")), "{done}");
    assert_eq!(state("rdy.n.never"), Some(json!("failed")), "{done}");
    let (_, l) = srv.call("GET", "/labs/rdy", Some(&admin), None);
    assert_eq!(l["state"], "degraded", "{l}");
    let (s, op) = srv.call("POST", "/labs/rdy/down", Some(&admin), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&admin, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
}
