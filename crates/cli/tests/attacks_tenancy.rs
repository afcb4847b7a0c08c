//! Attacks on the tenant boundary through what deleted labs and users leave behind, and
//! through quotas (issue 17 items 3 and 9), each against a real `kobako serve` (real HTTPS,
//! real SQLite): a member who takes the name of another member's deleted lab, a user
//! re-created under a deleted user's name, and members starting more than their quota allows
//! by every door that starts VMs or writes to disk.
//!
//! These run without VMs. What a lab's VMs would have produced (a checkpoint's memory image,
//! a capture file, a deployed function's warm snapshot) is written to the server's state
//! directory in the layout the server keeps it in, as if an earlier checkpoint, capture or
//! deployment had made it; the server's own listing shows it before the attack starts.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::server::{tok, yaml, Body, Server};
use serde_json::{json, Value};

fn one_vm_lab(name: &str, memory: &str) -> String {
    format!("name: {name}\nnodes:\n  n:\n    vms:\n      v: {{ image: tiny, memory: {memory} }}\n")
}

fn create_lab(srv: &Server, token: &str, text: &str) {
    let (s, v) = srv.call("POST", "/labs", Some(token), yaml(text));
    assert_eq!(s, 201, "{v}");
}

fn list(srv: &Server, token: &str, path: &str) -> Vec<Value> {
    let (s, v) = srv.call("GET", path, Some(token), None);
    assert_eq!(s, 200, "GET {path}: {v}");
    v.as_array()
        .unwrap_or_else(|| panic!("GET {path}: {v}"))
        .clone()
}

fn assert_quota_exceeded(s: u16, v: &Value, quota: &str) {
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains(quota),
        "the message names the quota {quota}: {m}"
    );
}

/// Events of `lab` a member's stream replays from the start (waits briefly for them).
fn events_of(srv: &Server, token: &str, lab: &str) -> Vec<Value> {
    let resp = srv
        .agent
        .get(&srv.url(&format!("/events?after=0&lab={lab}")))
        .set("authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_millis(1500))
        .call()
        .unwrap();
    let mut rd = std::io::BufReader::new(resp.into_reader());
    let mut out = Vec::new();
    let mut line = String::new();
    // Until the stream goes quiet (the agent's timeout ends it).
    loop {
        line.clear();
        match std::io::BufRead::read_line(&mut rd, &mut line) {
            Ok(0) | Err(_) => return out,
            Ok(_) => {}
        }
        if let Some(d) = line.strip_prefix("data:") {
            out.push(serde_json::from_str(d.trim()).unwrap());
        }
    }
}

/// A checkpoint of `lab` as the server keeps one (`<state>/checkpoints/<lab>/<name>`), with a
/// memory image of `mib` MiB, as an earlier checkpoint would have left it.
fn plant_checkpoint(srv: &Server, token: &str, lab: &str, name: &str, mib: usize) -> PathBuf {
    let (s, l) = srv.call("GET", &format!("/labs/{lab}"), Some(token), None);
    assert_eq!(s, 200, "{l}");
    let vm = l["vms"][0]["name"].as_str().unwrap().to_string();
    let d = srv.state.path().join("checkpoints").join(lab).join(name);
    std::fs::create_dir_all(d.join("vms").join(&vm)).unwrap();
    std::fs::write(
        d.join("checkpoint.json"),
        serde_json::to_vec(&json!({
            "lab": lab, "name": name, "created_ms": 1, "file": null, "spec": l["spec"],
            "links": [], "vms": [vm], "paused_ms": 3
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        d.join("vms").join(&vm).join("memory"),
        vec![0x5au8; mib << 20],
    )
    .unwrap();
    let cps = list(srv, token, &format!("/labs/{lab}/checkpoints"));
    assert_eq!(cps.len(), 1, "the server lists the checkpoint: {cps:?}");
    d
}

/// A finished capture of `lab` as the server keeps one (`<state>/server/captures/<lab>`).
fn plant_capture(srv: &Server, token: &str, lab: &str, id: &str, bytes: usize) -> PathBuf {
    let d = srv.state.path().join("server/captures").join(lab);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("{id}.pcapng")), vec![b'p'; bytes]).unwrap();
    std::fs::write(
        d.join(format!("{id}.json")),
        serde_json::to_vec(&json!({
            "id": id, "lab": lab, "link": "l1", "at": "a.x:eth1", "user": "ann",
            "operation": "op-x", "state": "done", "packets": 3, "bytes": bytes,
            "duration_s": 1.0, "max_packets": 10, "ended_by": "duration", "error": null,
            "started_ms": 1, "ended_ms": 2, "download": format!("/api/v1/labs/{lab}/captures/{id}")
        }))
        .unwrap(),
    )
    .unwrap();
    let (s, _) = srv.call(
        "GET",
        &format!("/labs/{lab}/captures/{id}"),
        Some(token),
        None,
    );
    assert_eq!(s, 200, "the server serves the capture");
    d
}

/// A deployed function as the server keeps one (`<state>/functions/<name>`), with a warm
/// snapshot file.
fn plant_function(srv: &Server, name: &str, owner: &str, concurrency: u32) -> PathBuf {
    let d = srv.state.path().join("functions").join(name);
    std::fs::create_dir_all(d.join("warm")).unwrap();
    std::fs::write(
        d.join("warm/memory"),
        b"warm snapshot of the owner's function",
    )
    .unwrap();
    std::fs::write(
        d.join("function.json"),
        serde_json::to_vec(&json!({
            "name": name, "owner": owner, "image": "tiny", "memory_mib": 64,
            "run": "cat", "timeout_secs": 5, "concurrency": concurrency,
            "deployed_ms": 1, "boot_ms": 1, "snapshot_bytes": 37
        }))
        .unwrap(),
    )
    .unwrap();
    d
}

/// Runs `down` on a lab (no VM runs: it only records an operation and events).
fn down(srv: &Server, token: &str, lab: &str) -> String {
    let (s, op) = srv.call("POST", &format!("/labs/{lab}/down"), Some(token), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(token, &op, Duration::from_secs(30));
    assert_eq!(done["state"], "succeeded", "{done}");
    op["id"].as_str().unwrap().to_string()
}

fn save_layout(srv: &Server, token: &str, lab: &str) {
    let (s, v) = srv.call(
        "PUT",
        &format!("/labs/{lab}/layout"),
        Some(token),
        Some(Body::Json(
            json!({"positions": {"node:n": {"x": 1.0, "y": 2.0}}}),
        )),
    );
    assert_eq!(s, 200, "{v}");
}

fn gone(p: &Path) -> bool {
    !p.exists()
}

#[test]
fn deleted_lab_leaves_nothing_to_a_member_who_takes_its_name() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let ann = srv.user(&admin, "ann", "member", json!({}));
    let bob = srv.user(&admin, "bob", "member", json!({}));

    // Ann's lab `x` with a checkpoint, a capture, a layout, an operation and events.
    create_lab(&srv, &ann, &one_vm_lab("tnc-x", "64M"));
    let op = down(&srv, &ann, "tnc-x");
    save_layout(&srv, &ann, "tnc-x");
    let cp = plant_checkpoint(&srv, &ann, "tnc-x", "before", 1);
    let cap = plant_capture(&srv, &ann, "tnc-x", "cap-annsecret", 4096);
    assert!(
        !events_of(&srv, &ann, "tnc-x").is_empty(),
        "ann sees her lab's events"
    );

    let (s, v) = srv.call("DELETE", "/labs/tnc-x", Some(&ann), None);
    assert_eq!(s, 204, "{v}");
    assert!(
        gone(&cp) && gone(&cap),
        "checkpoint and capture files are removed"
    );
    assert!(
        gone(&srv.state.path().join("checkpoints/tnc-x")),
        "no checkpoint directory of x is left"
    );

    // Bob takes the name.
    create_lab(&srv, &bob, &one_vm_lab("tnc-x", "64M"));
    assert!(list(&srv, &bob, "/labs/tnc-x/checkpoints").is_empty());
    assert!(list(&srv, &bob, "/labs/tnc-x/captures").is_empty());
    let (s, layout) = srv.call("GET", "/labs/tnc-x/layout", Some(&bob), None);
    assert_eq!(s, 200);
    assert_eq!(layout["positions"], json!({}), "no layout: {layout}");
    assert_eq!(layout["user"], Value::Null, "{layout}");
    let ev = events_of(&srv, &bob, "tnc-x");
    assert!(
        ev.iter()
            .all(|e| e["kind"] == "lab.created" && e["data"]["owner"] == "bob"),
        "bob sees only his own lab's events: {ev:?}"
    );
    assert!(list(&srv, &bob, "/operations").is_empty());
    // Ann's old ids are unknown now, to bob and to the admin.
    for t in [&bob, &admin] {
        let (s, v) = srv.call("GET", &format!("/operations/{op}"), Some(t), None);
        assert_eq!(s, 404, "{v}");
        let (s, v) = srv.call("GET", "/labs/tnc-x/captures/cap-annsecret", Some(t), None);
        assert_eq!(s, 404, "{v}");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
        let (s, v) = srv.call(
            "POST",
            "/labs/tnc-x/checkpoints/before/restore",
            Some(t),
            None,
        );
        assert_eq!(s, 404, "{v}");
    }
    // Nothing of ann's operations is listed for the admin either.
    let ops = list(&srv, &admin, "/operations");
    assert!(
        ops.iter().all(|o| o["id"] != op.as_str()),
        "ann's operation on the deleted lab is gone: {ops:?}"
    );
}

#[test]
fn deleted_user_leaves_nothing_to_a_user_recreated_with_its_name() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let mal = srv.user(&admin, "mal", "member", json!({"max_vms": 4}));
    create_lab(&srv, &mal, &one_vm_lab("tnc-mal-lab", "64M"));
    let op = down(&srv, &mal, "tnc-mal-lab");
    save_layout(&srv, &mal, "tnc-mal-lab");
    let cp = plant_checkpoint(&srv, &mal, "tnc-mal-lab", "c1", 1);
    let f = plant_function(&srv, "mal-fn", "mal", 1);
    assert_eq!(list(&srv, &mal, "/functions").len(), 1);
    let (s, v) = srv.call(
        "POST",
        "/tokens",
        Some(&mal),
        Some(Body::Json(json!({"name": "ci"}))),
    );
    assert_eq!(s, 201, "{v}");
    let api_token = v["secret"].as_str().unwrap().to_string();

    let (s, v) = srv.call("DELETE", "/users/mal", Some(&admin), None);
    assert_eq!(s, 204, "{v}");
    assert!(
        gone(&cp) && gone(&f),
        "checkpoint and function files are removed"
    );
    for t in [&mal, &api_token] {
        let (s, v) = srv.call("GET", "/labs", Some(t), None);
        assert_eq!(s, 401, "the deleted user's tokens are dead: {v}");
    }
    assert!(list(&srv, &admin, "/labs").is_empty(), "mal's lab is gone");
    assert!(list(&srv, &admin, "/functions").is_empty());
    let ops = list(&srv, &admin, "/operations");
    assert!(
        ops.iter().all(|o| o["user"] != "mal"),
        "mal's operations are gone: {ops:?}"
    );

    // A new user of the same name inherits nothing, not even the old user's tokens.
    let mal2 = srv.user(&admin, "mal", "member", json!({}));
    for t in [&mal, &api_token] {
        let (s, v) = srv.call("GET", "/labs", Some(t), None);
        assert_eq!(
            s, 401,
            "an old token of the deleted user works for the new one: {v}"
        );
    }
    assert!(list(&srv, &mal2, "/labs").is_empty());
    assert!(list(&srv, &mal2, "/functions").is_empty());
    assert!(list(&srv, &mal2, "/operations").is_empty());
    let (s, _) = srv.call("GET", &format!("/operations/{op}"), Some(&mal2), None);
    assert_eq!(s, 404);
    let (s, _) = srv.call("GET", "/labs/tnc-mal-lab/layout", Some(&mal2), None);
    assert_eq!(s, 404);
    let (s, v) = srv.call("GET", "/tokens", Some(&mal2), None);
    assert_eq!(s, 200);
    assert_eq!(v.as_array().map(Vec::len), Some(0), "no tokens: {v}");
    // Their old lab's name is free and empty.
    create_lab(&srv, &mal2, &one_vm_lab("tnc-mal-lab", "64M"));
    assert!(list(&srv, &mal2, "/labs/tnc-mal-lab/checkpoints").is_empty());
    let ev = events_of(&srv, &mal2, "tnc-mal-lab");
    assert!(
        ev.iter().all(|e| e["kind"] == "lab.created"),
        "only the new lab's events: {ev:?}"
    );
}

#[test]
fn deleted_function_leaves_no_warm_snapshot() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let ann = srv.user(&admin, "ann", "member", json!({}));
    let f = plant_function(&srv, "ann-fn", "ann", 1);
    let bob = srv.user(&admin, "bob", "member", json!({}));
    let (s, _) = srv.call("DELETE", "/functions/ann-fn", Some(&bob), None);
    assert!(
        s == 403 || s == 404,
        "another member cannot remove it ({s})"
    );
    assert!(f.join("warm/memory").exists());
    let (s, v) = srv.call("DELETE", "/functions/ann-fn", Some(&ann), None);
    assert_eq!(s, 204, "{v}");
    assert!(
        gone(&f),
        "the function's directory (warm snapshot) is removed"
    );
    assert!(list(&srv, &ann, "/functions").is_empty());
}

#[test]
fn member_up_beyond_a_lowered_quota_is_refused_and_starts_nothing() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let ann = srv.user(
        &admin,
        "ann",
        "member",
        json!({"max_vms": 2, "max_memory_mib": 256}),
    );
    create_lab(&srv, &ann, &one_vm_lab("q1", "128M"));
    // The lab alone beyond the quota: refused at creation (422).
    let (s, v) = srv.call("POST", "/labs", Some(&ann), yaml(&one_vm_lab("q2", "512M")));
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded");
    // The admin lowers the quota below what the lab needs.
    let (s, v) = srv.call(
        "PATCH",
        "/users/ann",
        Some(&admin),
        Some(Body::Json(json!({"max_memory_mib": 64}))),
    );
    assert_eq!(s, 200, "{v}");
    let ann = tok(&srv.login("ann", "ann-password"));
    for path in ["/labs/q1/up", "/labs/q1/restart"] {
        let (s, v) = srv.call("POST", path, Some(&ann), None);
        assert_quota_exceeded(s, &v, "max_memory_mib");
    }
    // A checkpoint restore boots the lab's VMs too.
    plant_checkpoint(&srv, &ann, "q1", "c1", 1);
    let (s, v) = srv.call("POST", "/labs/q1/checkpoints/c1/restore", Some(&ann), None);
    assert_quota_exceeded(s, &v, "max_memory_mib");
    // Nothing was started: no operation, the lab is still pending.
    assert!(list(&srv, &ann, "/operations").is_empty());
    let (_, l) = srv.call("GET", "/labs/q1", Some(&ann), None);
    assert_eq!(l["state"], "pending", "{l}");
}

#[test]
fn member_function_beyond_the_quota_is_refused_at_deploy_and_invoke() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let ann = srv.user(&admin, "ann", "member", json!({"max_vms": 2}));
    // Deploying 3 concurrent clones reserves 3 VMs: refused, nothing deployed or started.
    let (s, v) = srv.call(
        "POST",
        "/functions",
        Some(&ann),
        Some(Body::Json(
            json!({"name": "big", "run": "cat", "concurrency": 3}),
        )),
    );
    assert_quota_exceeded(s, &v, "max_vms");
    assert!(list(&srv, &ann, "/functions").is_empty());
    assert!(list(&srv, &ann, "/operations").is_empty());
    // A deployed function whose clones no longer fit (the quota was lowered): invoking it
    // starts no clone.
    plant_function(&srv, "small", "ann", 2);
    let (s, v) = srv.call(
        "PATCH",
        "/users/ann",
        Some(&admin),
        Some(Body::Json(json!({"max_vms": 1}))),
    );
    assert_eq!(s, 200, "{v}");
    let ann = tok(&srv.login("ann", "ann-password"));
    let (s, v) = srv.call(
        "POST",
        "/functions/small/invoke",
        Some(&ann),
        Some(Body::Raw("application/octet-stream", b"hi".to_vec())),
    );
    assert_quota_exceeded(s, &v, "max_vms");
    // A lab that would fit alone does not fit beside the function's reservation.
    let (s, v) = srv.call(
        "PATCH",
        "/users/ann",
        Some(&admin),
        Some(Body::Json(json!({"max_vms": 2}))),
    );
    assert_eq!(s, 200, "{v}");
    let ann = tok(&srv.login("ann", "ann-password"));
    create_lab(&srv, &ann, &one_vm_lab("l1", "64M"));
    let (s, v) = srv.call("POST", "/labs/l1/up", Some(&ann), None);
    assert_quota_exceeded(s, &v, "max_vms");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("functions"), "names what uses the quota: {m}");
}

#[test]
fn member_checkpoint_beyond_the_disk_quota_is_refused() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let ann = srv.user(&admin, "ann", "member", json!({"max_disk_mib": 3}));
    let (s, u) = srv.call("GET", "/users/ann", Some(&ann), None);
    assert_eq!(s, 200);
    assert_eq!(u["max_disk_mib"], 3, "{u}");
    // A negative quota is refused.
    let (s, v) = srv.call(
        "PATCH",
        "/users/ann",
        Some(&admin),
        Some(Body::Json(json!({"max_disk_mib": -1}))),
    );
    assert_eq!(s, 422, "{v}");
    // A member cannot raise their own quota.
    let (s, v) = srv.call(
        "PATCH",
        "/users/ann",
        Some(&ann),
        Some(Body::Json(json!({"max_disk_mib": 100000}))),
    );
    assert_eq!(s, 403, "{v}");

    create_lab(&srv, &ann, &one_vm_lab("d", "64M"));
    // Earlier checkpoint and capture: 2 MiB + 512 KiB of the 3 MiB.
    plant_checkpoint(&srv, &ann, "d", "old", 2);
    plant_capture(&srv, &ann, "d", "cap-old", 512 << 10);
    // A new checkpoint needs at least the lab's 64 MiB of memory.
    let (s, v) = srv.call(
        "POST",
        "/labs/d/checkpoints",
        Some(&ann),
        Some(Body::Json(json!({"name": "more"}))),
    );
    assert_quota_exceeded(s, &v, "max_disk_mib");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("3 MiB") && m.contains("checkpoints"),
        "names what is used and by what: {m}"
    );
    assert!(
        list(&srv, &ann, "/operations").is_empty(),
        "nothing started"
    );
    assert_eq!(list(&srv, &ann, "/labs/d/checkpoints").len(), 1);
    // Without a disk quota the same request gets past the quota (and fails later: the lab is
    // not up) — the refusal above was the quota.
    let (s, v) = srv.call(
        "PATCH",
        "/users/ann",
        Some(&admin),
        Some(Body::Json(json!({"max_disk_mib": null}))),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["max_disk_mib"], Value::Null);
    let ann = tok(&srv.login("ann", "ann-password"));
    let (s, v) = srv.call(
        "POST",
        "/labs/d/checkpoints",
        Some(&ann),
        Some(Body::Json(json!({"name": "more"}))),
    );
    assert_ne!(v["error"]["code"], "quota_exceeded", "{s} {v}");
}

/// Labs that each fit the quota alone, brought up all at once: exactly as many start as fit
/// together, the others are refused before anything starts (tiny VMs).
#[test]
fn concurrent_lab_ups_beyond_the_quota_start_only_what_fits() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let ann = srv.user(
        &admin,
        "ann",
        "member",
        json!({"max_vms": 2, "max_memory_mib": 1024}),
    );
    let labs: Vec<String> = (0..5).map(|i| format!("tnc-race{i}")).collect();
    for l in &labs {
        create_lab(&srv, &ann, &one_vm_lab(l, "64M"));
    }
    let go = std::sync::Arc::new(std::sync::Barrier::new(labs.len()));
    let srv = std::sync::Arc::new(srv);
    let answers: Vec<(String, u16, Value)> = labs
        .iter()
        .map(|l| {
            let (srv, go, ann, l) = (srv.clone(), go.clone(), ann.clone(), l.clone());
            std::thread::spawn(move || {
                go.wait();
                let (s, v) = srv.call("POST", &format!("/labs/{l}/up"), Some(&ann), None);
                (l, s, v)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let started: Vec<_> = answers.iter().filter(|a| a.1 == 202).collect();
    assert_eq!(started.len(), 2, "exactly the quota starts: {answers:?}");
    for (_, s, v) in answers.iter().filter(|a| a.1 != 202) {
        assert_quota_exceeded(*s, v, "max_vms");
    }
    for (_, _, op) in &started {
        let done = srv.wait_op(&ann, op, Duration::from_secs(120));
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    // Once they run, they are counted from the store: still no room.
    let refused: Vec<&String> = labs
        .iter()
        .filter(|l| !started.iter().any(|a| &a.0 == *l))
        .collect();
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{}/up", refused[0]),
        Some(&ann),
        None,
    );
    assert_quota_exceeded(s, &v, "max_vms");
    for l in &refused {
        let (_, lab) = srv.call("GET", &format!("/labs/{l}"), Some(&ann), None);
        assert_eq!(
            lab["state"], "pending",
            "a refused lab started nothing: {lab}"
        );
    }
    for (l, _, _) in &started {
        down(&srv, &ann, l);
    }
}

/// Two tiny VMs joined by link `l1`.
fn linked_lab(name: &str) -> String {
    format!(
        "name: {name}\ndefaults: {{ image: tiny, memory: 64M }}\nnodes:\n  a:\n    vms:\n      x: {{ interfaces: {{ eth1: {{ addresses: [10.77.0.1/30] }} }} }}\n  b:\n    vms:\n      y: {{ interfaces: {{ eth1: {{ addresses: [10.77.0.2/30] }} }} }}\nlinks:\n  - {{ name: l1, endpoints: [\"a.x:eth1\", \"b.y:eth1\"] }}\n"
    )
}

/// The same attack as [`deleted_lab_leaves_nothing_to_a_member_who_takes_its_name`] with a
/// checkpoint and a capture made by real VMs (tiny).
#[test]
fn deleted_lab_real_checkpoint_and_capture_do_not_reach_the_next_owner_of_its_name() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let ann = srv.user(&admin, "ann", "member", json!({}));
    let bob = srv.user(&admin, "bob", "member", json!({}));
    create_lab(&srv, &ann, &linked_lab("tnc-real"));
    let (s, op) = srv.call("POST", "/labs/tnc-real/up", Some(&ann), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&ann, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
    let (s, op) = srv.call(
        "POST",
        "/labs/tnc-real/checkpoints",
        Some(&ann),
        Some(Body::Json(json!({"name": "c1"}))),
    );
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&ann, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
    let (s, cap) = srv.call(
        "POST",
        "/labs/tnc-real/links/l1/captures",
        Some(&ann),
        Some(Body::Json(json!({"duration_s": 0.5}))),
    );
    assert_eq!(s, 202, "{cap}");
    let done = srv.wait_op(
        &ann,
        &json!({"id": cap["operation"]}),
        Duration::from_secs(30),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    let cap_id = cap["id"].as_str().unwrap().to_string();
    let cp_dir = srv.state.path().join("checkpoints/tnc-real");
    let cap_dir = srv.state.path().join("server/captures/tnc-real");
    assert!(cp_dir.join("c1").exists() && cap_dir.exists());
    down(&srv, &ann, "tnc-real");
    let (s, v) = srv.call("DELETE", "/labs/tnc-real", Some(&ann), None);
    assert_eq!(s, 204, "{v}");
    assert!(
        gone(&cp_dir) && gone(&cap_dir),
        "checkpoint and capture files are removed"
    );

    create_lab(&srv, &bob, &linked_lab("tnc-real"));
    assert!(list(&srv, &bob, "/labs/tnc-real/checkpoints").is_empty());
    assert!(list(&srv, &bob, "/labs/tnc-real/captures").is_empty());
    let (s, _) = srv.call(
        "GET",
        &format!("/labs/tnc-real/captures/{cap_id}"),
        Some(&bob),
        None,
    );
    assert_eq!(s, 404);
    let (s, _) = srv.call(
        "POST",
        "/labs/tnc-real/checkpoints/c1/restore",
        Some(&bob),
        None,
    );
    assert_eq!(s, 404);
    assert!(list(&srv, &bob, "/operations").is_empty());
    let ev = events_of(&srv, &bob, "tnc-real");
    assert!(
        ev.iter().all(|e| e["kind"] == "lab.created"),
        "bob sees only his own lab's events: {ev:?}"
    );
}

/// `kobako user rm` (no server needed) removes the same things as the API, and refuses while
/// a lab of the user is up (only the server takes labs down) instead of leaving it to a
/// namesake.
#[test]
fn user_removed_from_the_command_line_leaves_nothing_to_a_namesake() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let mal = srv.user(&admin, "mal", "member", json!({}));
    create_lab(&srv, &mal, &one_vm_lab("tnc-mal-up", "64M"));
    create_lab(&srv, &mal, &one_vm_lab("mal-down", "64M"));
    save_layout(&srv, &mal, "mal-down");
    let cp = plant_checkpoint(&srv, &mal, "mal-down", "c1", 1);
    let f = plant_function(&srv, "mal-fn", "mal", 1);
    let (s, op) = srv.call("POST", "/labs/tnc-mal-up/up", Some(&mal), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&mal, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");

    let o = srv.cmd(&["user", "rm", "mal"]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tnc-mal-up") && err.contains("take it down first"),
        "names the lab and the fix: {err}"
    );
    assert_eq!(list(&srv, &admin, "/labs").len(), 2, "nothing was removed");
    assert!(cp.exists() && f.exists());

    down(&srv, &mal, "tnc-mal-up");
    let o = srv.cmd(&["user", "rm", "mal"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(gone(&cp) && gone(&f));
    assert!(list(&srv, &admin, "/labs").is_empty());
    assert!(list(&srv, &admin, "/functions").is_empty());
    let mal2 = srv.user(&admin, "mal", "member", json!({}));
    assert!(list(&srv, &mal2, "/labs").is_empty());
    assert!(list(&srv, &mal2, "/operations").is_empty());
    create_lab(&srv, &mal2, &one_vm_lab("mal-down", "64M"));
    let (_, layout) = srv.call("GET", "/labs/mal-down/layout", Some(&mal2), None);
    assert_eq!(layout["positions"], json!({}), "{layout}");
}

/// Starting or restarting one VM of a lab that is up counts the lab against the quota like
/// `up` does: once an admin lowered the quota, a stopped VM cannot be started again (tiny VM).
#[test]
fn member_vm_start_beyond_a_lowered_quota_is_refused() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let ann = srv.user(&admin, "ann", "member", json!({"max_vms": 1}));
    create_lab(&srv, &ann, &one_vm_lab("tnc-vm", "64M"));
    let (s, op) = srv.call("POST", "/labs/tnc-vm/up", Some(&ann), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&ann, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
    let (s, op) = srv.call("POST", "/labs/tnc-vm/nodes/n.v/stop", Some(&ann), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&ann, &op, Duration::from_secs(60));
    assert_eq!(done["state"], "succeeded", "{done}");
    let (s, v) = srv.call(
        "PATCH",
        "/users/ann",
        Some(&admin),
        Some(Body::Json(json!({"max_vms": 0}))),
    );
    assert_eq!(s, 200, "{v}");
    let ann = tok(&srv.login("ann", "ann-password"));
    for path in [
        "/labs/tnc-vm/nodes/n.v/start",
        "/labs/tnc-vm/nodes/n/restart",
        "/vms/tnc-vm.n.v/start",
    ] {
        let (s, v) = srv.call("POST", path, Some(&ann), None);
        assert_quota_exceeded(s, &v, "max_vms");
    }
    let (_, lab) = srv.call("GET", "/labs/tnc-vm", Some(&ann), None);
    assert_eq!(lab["vms"][0]["state"], "stopped", "nothing started: {lab}");
    down(&srv, &ann, "tnc-vm");
}

/// Deleting a user whose lab runs takes the lab down first: no VM of theirs is left running
/// for nobody (tiny VM).
#[test]
fn deleted_user_running_lab_is_taken_down_and_removed() {
    let srv = Server::start();
    let admin = srv.admin_token();
    let mal = srv.user(&admin, "mal", "member", json!({}));
    create_lab(&srv, &mal, &one_vm_lab("tnc-run", "64M"));
    let (s, op) = srv.call("POST", "/labs/tnc-run/up", Some(&mal), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&mal, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, lab) = srv.call("GET", "/labs/tnc-run", Some(&admin), None);
    let pid = lab["vms"][0]["pid"].as_i64().expect("the VM runs");

    let (s, v) = srv.call("DELETE", "/users/mal", Some(&admin), None);
    assert_eq!(s, 204, "{v}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the deleted user's VM process {pid} still runs"
    );
    assert!(list(&srv, &admin, "/labs").is_empty());
    let mal2 = srv.user(&admin, "mal", "member", json!({}));
    create_lab(&srv, &mal2, &one_vm_lab("tnc-run", "64M"));
    let (_, lab) = srv.call("GET", "/labs/tnc-run", Some(&mal2), None);
    assert_eq!(lab["state"], "pending", "{lab}");
    assert!(lab["vms"][0]["pid"].is_null(), "{lab}");
}
