//! What the web UI operates, over real HTTPS against `kobako serve` with real tiny VMs:
//! packet captures of a link (a pcapng with the ping we sent), stop/start/restart of one VM or
//! node (states in the API and on the host), the saved layout, and who may do what (members
//! only their own labs, viewers nothing).

mod common;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::{json, Value};

/// The one server fixture (`common::server`) with this test's request helpers: a token on
/// every call, JSON bodies, the raw bytes of a download.
struct Ops(Server);

impl std::ops::Deref for Ops {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl std::ops::DerefMut for Ops {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.0
    }
}

impl Ops {
    /// (status, JSON body or the text as a JSON string, raw bytes).
    fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value, Vec<u8>, String) {
        let r = self
            .agent
            .request(method, &self.url(path))
            .set("authorization", &format!("Bearer {token}"));
        let res = match body {
            None => r.call(),
            Some(v) => r.send_json(v),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let ct = resp.header("content-disposition").unwrap_or("").to_string();
        let mut raw = Vec::new();
        resp.into_reader().read_to_end(&mut raw).unwrap();
        let v = serde_json::from_slice(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
        (status, v, raw, ct)
    }

    fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let (s, v, _, _) = self.call_raw(method, path, token, body);
        (s, v)
    }

    fn login(&self, user: &str, pw: &str) -> String {
        let r = self
            .agent
            .post(&self.url("/auth/login"))
            .send_json(json!({"username": user, "password": pw}))
            .unwrap_or_else(|e| panic!("login {user}: {e}"));
        let v: Value = r.into_json().unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    fn wait_op(&self, token: &str, op: &Value, timeout: Duration) -> Value {
        // A capture names its operation; an operation is one.
        let id = op["operation"]
            .as_str()
            .or_else(|| op["id"].as_str())
            .unwrap_or_else(|| panic!("no operation in {op}"));
        let t0 = Instant::now();
        loop {
            let (s, v) = self.call("GET", &format!("/operations/{id}"), token, None);
            assert_eq!(s, 200, "{v}");
            if v["state"] != "running" {
                return v;
            }
            assert!(t0.elapsed() < timeout, "operation still running: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Frames of a pcapng file (Enhanced Packet Blocks' data), after checking its header.
fn pcapng_frames(b: &[u8]) -> Vec<Vec<u8>> {
    assert!(b.len() >= 28, "capture of {} bytes", b.len());
    assert_eq!(
        &b[0..4],
        &[0x0a, 0x0d, 0x0d, 0x0a],
        "pcapng Section Header Block"
    );
    assert_eq!(
        u32::from_le_bytes(b[8..12].try_into().unwrap()),
        0x1a2b_3c4d,
        "byte-order magic"
    );
    let mut frames = Vec::new();
    let mut off = 0;
    while off + 12 <= b.len() {
        let ty = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        let len = u32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        assert!(len >= 12 && off + len <= b.len(), "block at {off}: {len}");
        if ty == 6 {
            let cap = u32::from_le_bytes(b[off + 20..off + 24].try_into().unwrap()) as usize;
            frames.push(b[off + 28..off + 28 + cap].to_vec());
        }
        off += len;
    }
    assert_eq!(off, b.len(), "the file ends after a whole block");
    frames
}

/// ICMP echo requests from `src` to `dst` among Ethernet frames.
fn echo_requests(frames: &[Vec<u8>], src: [u8; 4], dst: [u8; 4]) -> usize {
    frames
        .iter()
        .filter(|f| {
            f.len() > 34
                && f[12..14] == [0x08, 0x00]
                && f[14 + 9] == 1
                && f[26..30] == src
                && f[30..34] == dst
                && f[34] == 8
        })
        .count()
}

#[test]
fn captures_node_ops_and_layout_over_https() {
    let mut srv = Ops(Server::start());
    let admin_pw = std::fs::read_to_string(srv.state.path().join("server/initial-admin-password"))
        .unwrap()
        .trim()
        .to_string();
    let admin = srv.login("admin", &admin_pw);
    let lab = format!("uiops-{}", std::process::id() % 100_000);
    srv.labs.push(lab.clone());
    for (u, role) in [("uiopsm", "member"), ("uiopsv", "viewer")] {
        let (s, v) = srv.call(
            "POST",
            "/users",
            &admin,
            Some(json!({"name": u, "role": role, "password": "uiops-password-1"})),
        );
        assert_eq!(s, 201, "{v}");
    }
    let member = srv.login("uiopsm", "uiops-password-1");
    let viewer = srv.login("uiopsv", "uiops-password-1");

    let file = format!(
        r#"name: {lab}
defaults: {{ image: tiny, memory: 96M }}
nodes:
  a:
    vms:
      x: {{ interfaces: {{ eth1: {{ addresses: [10.78.0.1/30] }} }} }}
  b:
    vms:
      y: {{ interfaces: {{ eth1: {{ addresses: [10.78.0.2/30] }} }} }}
links:
  - {{ name: l1, endpoints: ["a.x:eth1", "b.y:eth1"] }}
"#
    );
    let r = srv
        .agent
        .post(&srv.url("/labs"))
        .set("authorization", &format!("Bearer {admin}"))
        .set("content-type", "application/yaml")
        .send_bytes(file.as_bytes())
        .unwrap();
    assert_eq!(r.status(), 201);

    // Captures and node operations need a lab that is up.
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/captures"),
        &admin,
        Some(json!({})),
    );
    assert_eq!(s, 409, "capture of a lab that is down: {v}");
    let (s, v) = srv.call("POST", &format!("/vms/{lab}.a.x/stop"), &admin, None);
    assert_eq!(s, 409, "stop a VM of a lab that is down: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("start the lab first"),
        "{v}"
    );

    let (s, op) = srv.call("POST", &format!("/labs/{lab}/up"), &admin, None);
    assert_eq!(s, 202, "{op}");
    let op = srv.wait_op(&admin, &op, Duration::from_secs(240));
    assert_eq!(op["state"], "succeeded", "{op}\n{}", srv.log_text());

    // ---- capture: bad input, who may, then a real one with our ping in it ------------------
    for (body, what) in [
        (json!({"duration_s": 0}), "duration_s"),
        (json!({"duration_s": 1e9}), "duration_s"),
        (json!({"max_packets": 0}), "max_packets"),
        (json!({"endpoint": 3}), "endpoint"),
    ] {
        let (s, v) = srv.call(
            "POST",
            &format!("/labs/{lab}/links/l1/captures"),
            &admin,
            Some(body.clone()),
        );
        assert_eq!(s, 422, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(what),
            "{v}"
        );
    }
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/nope/captures"),
        &admin,
        Some(json!({})),
    );
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("l1"),
        "{v}"
    );
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/captures"),
        &viewer,
        Some(json!({})),
    );
    assert_eq!(s, 403, "viewer starts a capture: {v}");
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/captures"),
        &member,
        Some(json!({})),
    );
    // Another member's lab is not there for her: 404, as for a name that does not exist.
    assert_eq!(s, 404, "member captures another's lab: {v}");

    let t0 = Instant::now();
    let (s, cap) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/captures"),
        &admin,
        Some(json!({"duration_s": 30, "max_packets": 1000})),
    );
    assert_eq!(s, 202, "{cap}");
    assert_eq!(cap["state"], "running", "{cap}");
    let id = cap["id"].as_str().unwrap().to_string();
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/captures"),
        &admin,
        Some(json!({})),
    );
    assert_eq!(s, 409, "a second capture of the same link: {v}");
    let (s, v) = srv.call(
        "POST",
        &format!("/vms/{lab}.a.x/exec"),
        &admin,
        Some(json!({"argv": ["ping", "-c", "3", "-W", "2", "10.78.0.2"]})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["exit_code"], 0, "ping across l1: {v}");
    // End it early (the file keeps what it has), then follow its operation.
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/captures/{id}/stop"),
        &viewer,
        None,
    );
    assert_eq!(s, 403, "viewer stops a capture: {v}");
    let (s, v) = srv.call(
        "POST",
        &format!("/labs/{lab}/captures/{id}/stop"),
        &admin,
        None,
    );
    assert_eq!(s, 204, "{v}");
    let op = srv.wait_op(&admin, &cap, Duration::from_secs(30));
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["ended_by"], "stopped", "{op}");
    assert!(
        t0.elapsed() < Duration::from_secs(25),
        "stop ended the capture"
    );
    // Viewers may list and download (they read every lab); members not another's.
    let (s, list) = srv.call("GET", &format!("/labs/{lab}/captures"), &viewer, None);
    assert_eq!(s, 200, "{list}");
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    assert_eq!(list[0]["state"], "done", "{list}");
    let (s, v) = srv.call("GET", &format!("/labs/{lab}/captures/{id}"), &member, None);
    assert_eq!(s, 404, "{v}");
    let (s, _, pcap, disp) =
        srv.call_raw("GET", &format!("/labs/{lab}/captures/{id}"), &viewer, None);
    assert_eq!(s, 200);
    assert!(disp.contains(&format!("{lab}-l1-{id}.pcapng")), "{disp}");
    let frames = pcapng_frames(&pcap);
    let echoes = echo_requests(&frames, [10, 78, 0, 1], [10, 78, 0, 2]);
    println!(
        "capture {id}: {} bytes, {} frames, {echoes} ICMP echo requests 10.78.0.1 → 10.78.0.2; {} packets reported",
        pcap.len(),
        frames.len(),
        list[0]["packets"]
    );
    assert!(echoes >= 3, "our 3 pings are in the capture ({echoes})");
    assert_eq!(list[0]["packets"].as_u64(), Some(frames.len() as u64));
    let (s, v) = srv.call(
        "GET",
        &format!("/labs/{lab}/captures/cap-nothere"),
        &admin,
        None,
    );
    assert_eq!(s, 404, "{v}");
    let (s, v) = srv.call("GET", &format!("/labs/{lab}/captures/..%2Fx"), &admin, None);
    assert_eq!(s, 404, "{v}");

    // A capture bounded by its packet count ends by itself.
    let (s, cap) = srv.call(
        "POST",
        &format!("/labs/{lab}/links/l1/captures"),
        &admin,
        Some(json!({"duration_s": 60, "max_packets": 2, "endpoint": 2})),
    );
    assert_eq!(s, 202, "{cap}");
    let (s, _) = srv.call(
        "POST",
        &format!("/vms/{lab}.b.y/exec"),
        &admin,
        Some(json!({"argv": ["ping", "-c", "2", "10.78.0.1"]})),
    );
    assert_eq!(s, 200);
    let op = srv.wait_op(&admin, &cap, Duration::from_secs(30));
    assert_eq!(op["result"]["ended_by"], "packets", "{op}");
    assert_eq!(op["result"]["packets"], 2, "{op}");
    assert!(
        op["result"]["at"].as_str().unwrap().starts_with("b.y:eth1"),
        "{op}"
    );

    // ---- stop / start / restart one VM or node --------------------------------------------
    let vm_state = |vm: &str| -> (String, Option<String>) {
        let (s, v) = srv.call("GET", &format!("/vms/{lab}.{vm}"), &admin, None);
        assert_eq!(s, 200, "{v}");
        (
            v["state"].as_str().unwrap().to_string(),
            v["reason"].as_str().map(String::from),
        )
    };
    // The viewer sees the lab but may not change it (403); to a member it is not there (404).
    for (tok, who, code) in [(&viewer, "viewer", 403), (&member, "member", 404)] {
        let (s, v) = srv.call("POST", &format!("/vms/{lab}.b.y/stop"), tok, None);
        assert_eq!(s, code, "{who} stops a VM: {v}");
        let (s, v) = srv.call("POST", &format!("/labs/{lab}/nodes/b/restart"), tok, None);
        assert_eq!(s, code, "{who} restarts a node: {v}");
    }
    let (s, v) = srv.call("POST", &format!("/labs/{lab}/nodes/c/stop"), &admin, None);
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no node 'c'"),
        "{v}"
    );
    let (s, v) = srv.call("POST", &format!("/vms/{lab}.b.zz/stop"), &admin, None);
    assert_eq!(s, 404, "{v}");

    let pid_y = srv.vm_pid(&format!("{lab}.b.y")).expect("b.y runs");
    let (s, op) = srv.call("POST", &format!("/vms/{lab}.b.y/stop"), &admin, None);
    assert_eq!(s, 202, "{op}");
    assert_eq!(op["kind"], "vm.stop");
    let op = srv.wait_op(&admin, &op, Duration::from_secs(60));
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(
        vm_state("b.y"),
        ("stopped".into(), Some("stopped by admin".into()))
    );
    assert!(
        srv.vm_pid(&format!("{lab}.b.y")).is_none(),
        "b.y's process is gone"
    );
    assert!(!Path::new(&format!("/proc/{pid_y}")).exists());
    let (_, l) = srv.call("GET", &format!("/labs/{lab}"), &admin, None);
    assert_eq!(l["state"], "degraded", "{l}");
    assert_eq!(l["reason"], "1 of 2 VMs stopped", "{l}");
    assert_eq!(vm_state("a.x").0, "ready");

    // Restarting a.x boots a.x again, not the stopped b.y.
    let pid_x = srv.vm_pid(&format!("{lab}.a.x")).expect("a.x runs");
    let (s, op) = srv.call(
        "POST",
        &format!("/labs/{lab}/nodes/a.x/restart"),
        &admin,
        None,
    );
    assert_eq!(s, 202, "{op}");
    assert_eq!(op["kind"], "vm.restart");
    let (s, v) = srv.call("POST", &format!("/labs/{lab}/up"), &admin, None);
    assert_eq!(s, 409, "the lab is busy while a VM restarts: {v}");
    let op = srv.wait_op(&admin, &op, Duration::from_secs(120));
    assert_eq!(op["state"], "succeeded", "{op}");
    let new_x = srv.vm_pid(&format!("{lab}.a.x")).expect("a.x runs again");
    assert_ne!(new_x, pid_x, "a.x is a new process");
    assert_eq!(vm_state("a.x").0, "ready");
    assert_eq!(vm_state("b.y").0, "stopped", "b.y stays stopped");
    assert!(srv.vm_pid(&format!("{lab}.b.y")).is_none());

    // Starting node b boots b.y and configures it (its address answers).
    let (s, op) = srv.call("POST", &format!("/labs/{lab}/nodes/b/start"), &admin, None);
    assert_eq!(s, 202, "{op}");
    assert_eq!(op["kind"], "node.start");
    let op = srv.wait_op(&admin, &op, Duration::from_secs(120));
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(vm_state("b.y").0, "ready");
    assert!(srv.vm_pid(&format!("{lab}.b.y")).is_some());
    let (_, l) = srv.call("GET", &format!("/labs/{lab}"), &admin, None);
    assert_eq!(l["state"], "ready", "{l}");
    let (_, v) = srv.call(
        "POST",
        &format!("/vms/{lab}.a.x/exec"),
        &admin,
        Some(json!({"argv": ["ping", "-c", "1", "-W", "3", "10.78.0.2"]})),
    );
    assert_eq!(v["exit_code"], 0, "b.y configured again: {v}");

    // ---- layout ---------------------------------------------------------------------------
    let (s, v) = srv.call("GET", &format!("/labs/{lab}/layout"), &viewer, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["positions"], json!({}));
    let layout =
        json!({"positions": {"node:a": {"x": 10.5, "y": -20}, "node:b": {"x": 400, "y": 0}}});
    let (s, v) = srv.call(
        "PUT",
        &format!("/labs/{lab}/layout"),
        &viewer,
        Some(layout.clone()),
    );
    assert_eq!(s, 403, "viewer saves a layout: {v}");
    let (s, v) = srv.call(
        "PUT",
        &format!("/labs/{lab}/layout"),
        &member,
        Some(layout.clone()),
    );
    assert_eq!(s, 404, "member saves another's layout: {v}");
    let (s, v) = srv.call(
        "PUT",
        &format!("/labs/{lab}/layout"),
        &admin,
        Some(json!({"positions": {"node:a": {"x": 1e300, "y": 0}}})),
    );
    assert_eq!(s, 422, "{v}");
    let (s, v) = srv.call("PUT", &format!("/labs/{lab}/layout"), &admin, Some(layout));
    assert_eq!(s, 200, "{v}");
    let (s, v) = srv.call("GET", &format!("/labs/{lab}/layout"), &viewer, None);
    assert_eq!(s, 200);
    assert_eq!(v["positions"]["node:a"]["x"], 10.5, "{v}");
    assert_eq!(v["user"], "admin");

    // ---- down and delete: captures and layout go with the lab -----------------------------
    let (s, op) = srv.call("POST", &format!("/labs/{lab}/down"), &admin, None);
    assert_eq!(s, 202);
    let op = srv.wait_op(&admin, &op, Duration::from_secs(120));
    assert_eq!(op["state"], "succeeded", "{op}");
    let (s, _) = srv.call("DELETE", &format!("/labs/{lab}"), &admin, None);
    assert_eq!(s, 204);
    let server_dir = srv.state.path().join("server");
    assert!(!server_dir.join("captures").join(&lab).exists());
    assert!(!server_dir
        .join("layouts")
        .join(format!("{lab}.json"))
        .exists());
    srv.labs.clear();
    let leftovers: Vec<_> = std::fs::read_dir(srv.run.path().join("vms"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "VMs left: {leftovers:?}");
}
