//! `kobako serve` over real HTTPS (and its Unix socket), with real tiny-image VMs: auth,
//! roles, quotas, labs up/down, exec, files, links, events, console and TTY WebSockets, the
//! OpenAPI document, bad input, and a server killed with -9 while its VMs run.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use common::server::{Body, Server};
use serde_json::{json, Value};

fn lab_yaml(name: &str, vms: usize, memory: &str) -> Vec<u8> {
    let mut s = format!("name: {name}\nnodes:\n  n:\n    vms:\n");
    for i in 0..vms {
        s += &format!("      v{i}: {{image: tiny, memory: {memory}}}\n");
    }
    s.into_bytes()
}

/// Two single-VM nodes joined by a link `l1`.
fn linked_lab(name: &str) -> Vec<u8> {
    format!(
        r#"name: {name}
defaults: {{ image: tiny, memory: 128M }}
nodes:
  a:
    vms:
      x: {{ interfaces: {{ eth1: {{ addresses: [10.77.0.1/30] }} }} }}
  b:
    vms:
      y: {{ interfaces: {{ eth1: {{ addresses: [10.77.0.2/30] }} }} }}
links:
  - {{ name: l1, endpoints: ["a.x:eth1", "b.y:eth1"] }}
"#
    )
    .into_bytes()
}

fn yaml(b: Vec<u8>) -> Option<Body> {
    Some(Body::Raw("application/yaml", b))
}

fn tok(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

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

/// What needs the `kobako serve` process and its listeners (the API cases that need neither
/// are router tests: crates/server/tests/api): its private files and socket, the login
/// limiter, a huge body over the socket, root on the socket, and the CLI's admin commands on
/// the server's database.
#[test]
fn serve_files_login_limit_socket_and_admin_commands_without_vms() {
    let srv = Server::start();
    // The first start made an admin with a random password, stored 0600.
    let pwfile = srv.state.path().join("server/initial-admin-password");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pwfile).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(srv.socket())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let t = srv.admin_token();

    // Wrong passwords: 401, then 429 after five failures for that user and address.
    for _ in 0..5 {
        let (s, _) = srv.call(
            "POST",
            "/auth/login",
            None,
            Some(Body::Json(
                json!({"username": "admin", "password": "wrong-password"}),
            )),
        );
        assert_eq!(s, 401);
    }
    let (s, v) = srv.call(
        "POST",
        "/auth/login",
        None,
        Some(Body::Json(
            json!({"username": "admin", "password": srv.admin_password()}),
        )),
    );
    assert_eq!(s, 429, "{v}");

    // A huge body: 413, nothing created.
    let big = vec![b'a'; 3 * 1024 * 1024];
    let (s, v) = srv.local("POST", "/labs", Some(&big));
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    // The Unix socket as root.
    let (s, v) = srv.local("GET", "/auth/me", None);
    assert_eq!((s, &v["name"]), (200, &json!("root")), "{v}");

    // CLI admin commands on the same database.
    for (name, role) in [("dana", "member"), ("vic", "viewer"), ("eve", "member")] {
        srv.user(&t, name, role, json!({}));
    }
    let o = srv.cmd(&["user", "ls", "--json"]).output().unwrap();
    let users: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 4, "{users}");
    let o = srv
        .cmd(&["token", "create", "script", "--user", "vic"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let secret = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(
        srv.call("GET", "/auth/me", Some(&secret), None).1["role"],
        "viewer"
    );
}

/// A client that opens connections and never finishes a request (slowloris) cannot keep them:
/// without a TLS handshake the server closes one after 10 s, without a whole request head (or
/// idle after a response) after 30 s, and a body that stops arriving for 30 s is answered 408;
/// meanwhile it answers everyone else.
#[test]
fn connections_that_never_finish_a_request_are_closed() {
    let srv = Server::start();
    let tls = common::tls_for(&srv.state.path().join("server/tls/cert.pem"));
    let connect = || {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        tcp
    };
    let tls_conn = |first: &[u8]| {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(tls.clone(), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, connect());
        s.write_all(first).unwrap();
        s.flush().unwrap();
        s
    };
    // Reads until the server closes; when that was, and what came before.
    fn until_closed(
        mut r: impl Read + Send + 'static,
        t0: Instant,
    ) -> std::thread::JoinHandle<(Duration, String, String)> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let how = loop {
                match r.read(&mut buf) {
                    Ok(0) => break "closed".to_string(),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break format!("still open: {e}")
                    }
                    // Closed without TLS close_notify, or reset: closed all the same.
                    Err(e) => break format!("closed ({e})"),
                }
            };
            (
                t0.elapsed(),
                how,
                String::from_utf8_lossy(&got).into_owned(),
            )
        })
    }
    let t0 = Instant::now();
    let no_tls = until_closed(connect(), t0);
    let half_head = until_closed(
        tls_conn(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n"),
        t0,
    );
    let idle = until_closed(
        tls_conn(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        t0,
    );
    let stalled_body = until_closed(
        tls_conn(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"username\":"),
        t0,
    );
    // The server goes on answering while those connections hang.
    std::thread::sleep(Duration::from_secs(2));
    let (s, _) = srv.call("GET", "/health", None, None);
    assert_eq!(s, 200);

    // Each connection: closed by the server between `lo` and `hi` seconds; what it answered.
    let closed_in = |what: &str, h: std::thread::JoinHandle<(Duration, String, String)>, lo, hi| {
        let (t, how, got) = h.join().unwrap();
        eprintln!("{what}: {how} after {t:?}");
        assert!(
            how.starts_with("closed")
                && t >= Duration::from_secs(lo)
                && t < Duration::from_secs(hi),
            "{what}: {how} after {t:?} (expected closed after {lo}..{hi} s)"
        );
        got
    };
    closed_in("no TLS handshake", no_tls, 8, 25);
    let got = closed_in("half a request head", half_head, 25, 50);
    assert!(got.is_empty(), "answered half a request: {got}");
    let got = closed_in("idle after a response", idle, 25, 50);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let got = closed_in("a body that stopped", stalled_body, 25, 50);
    assert!(
        got.starts_with("HTTP/1.1 408")
            && got.contains("request_timeout")
            && got.contains("no data for 30 s"),
        "{got}"
    );
    let (s, _) = srv.call("GET", "/health", None, None);
    assert_eq!(s, 200);
}

#[test]
fn labs_over_the_api_with_real_vms_and_a_server_killed_with_9() {
    let mut srv = Server::start();
    let admin = tok(&srv.login("admin", &srv.admin_password()));
    let (s, _) = srv.call(
        "POST",
        "/users",
        Some(&admin),
        Some(Body::Json(json!({"name": "alice", "password": "alice-password", "role": "member", "max_vms": 2, "max_memory_mib": 512}))),
    );
    assert_eq!(s, 201);
    let alice = tok(&srv.login("alice", "alice-password"));
    let lab = format!("srv{}", std::process::id() % 100000);
    let (s, v) = srv.call("POST", "/labs", Some(&alice), yaml(linked_lab(&lab)));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v[0]["state"], "pending");

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

    // Exec: output and exit code; stdin.
    let (s, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
        )),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stdout"], "out\n");
    assert_eq!(v["stderr"], "err\n");
    let (s, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["cat"], "stdin": "fed through stdin"}),
        )),
    );
    assert_eq!(
        (s, v["stdout"].as_str()),
        (200, Some("fed through stdin")),
        "{v}"
    );
    let (s, v) = srv.call("GET", &format!("/vms/{x}"), Some(&alice), None);
    assert_eq!(s, 200);
    assert_eq!(v["addresses"][0], "eth1:10.77.0.1/30", "{v}");

    // Files both ways, checksummed; traversal refused.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (s, v) = srv.call(
        "PUT",
        &format!("/vms/{x}/files?path=/tmp/blob&mode=600"),
        Some(&alice),
        Some(Body::Raw("application/octet-stream", data.clone())),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["size"], 300_000);
    let r = srv
        .agent
        .get(&srv.url(&format!("/vms/{x}/files?path=/tmp/blob")))
        .set("authorization", &format!("Bearer {alice}"))
        .call()
        .unwrap();
    let mut back = Vec::new();
    r.into_reader().read_to_end(&mut back).unwrap();
    assert!(back == data, "downloaded file differs");
    // Without a Content-Length (chunked) the upload is buffered; same file in the guest.
    let r = srv
        .agent
        .put(&srv.url(&format!("/vms/{x}/files?path=/tmp/chunked")))
        .set("authorization", &format!("Bearer {alice}"))
        .send(std::io::Cursor::new(data.clone()));
    let v: Value = r.unwrap().into_json().unwrap();
    assert_eq!(v["size"], 300_000, "{v}");
    assert_eq!(
        v["sha256"],
        srv.call(
            "PUT",
            &format!("/vms/{x}/files?path=/tmp/blob"),
            Some(&alice),
            Some(Body::Raw("application/octet-stream", data.clone()))
        )
        .1["sha256"]
    );
    let sum = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(json!({"argv": ["sha256sum", "/tmp/chunked"]}))),
    );
    assert!(
        sum.1["stdout"]
            .as_str()
            .unwrap()
            .starts_with(v["sha256"].as_str().unwrap()),
        "{sum:?}"
    );
    // A streamed upload whose body breaks off writes nothing.
    {
        let mut s = std::os::unix::net::UnixStream::connect(srv.socket()).unwrap();
        write!(
            s,
            "PUT /api/v1/vms/{x}/files?path=/tmp/partial HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&[7u8; 5000]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            out.starts_with("HTTP/1.1 400") && out.contains("nothing was written"),
            "{out}"
        );
    }
    let (_, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(json!({"argv": ["sh", "-c", "ls -a /tmp"]}))),
    );
    assert!(
        !v["stdout"].as_str().unwrap().contains("partial"),
        "a broken-off upload left {v}"
    );
    // Files over 16 MiB are streamed (a sparse 40 MiB file: all zeros).
    let (s, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["dd", "if=/dev/zero", "of=/tmp/sparse", "bs=1", "count=0", "seek=40M"]}),
        )),
    );
    assert_eq!((s, &v["exit_code"]), (200, &json!(0)), "{v}");
    let t0 = Instant::now();
    let r = srv
        .agent
        .get(&srv.url(&format!("/vms/{x}/files?path=/tmp/sparse")))
        .set("authorization", &format!("Bearer {alice}"))
        .call()
        .unwrap();
    assert_eq!(r.header("content-length"), Some("41943040"));
    assert!(r.header("x-kobako-sha256").is_none());
    let (mut n, mut nonzero, mut buf) = (0u64, 0u64, vec![0u8; 1 << 20]);
    let mut rd = r.into_reader();
    loop {
        let k = rd.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
        nonzero += buf[..k].iter().filter(|b| **b != 0).count() as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "streamed download of 40 MiB: {secs:.1} s ({:.0} MiB/s)",
        40.0 / secs
    );
    assert_eq!((n, nonzero), (40 << 20, 0));
    let (_, v) = srv.call(
        "POST",
        &format!("/vms/{x}/exec"),
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["rm", "/tmp/sparse", "/tmp/chunked"]}),
        )),
    );
    assert_eq!(v["exit_code"], 0, "{v}");
    let (s, v) = srv.call(
        "GET",
        &format!("/vms/{x}/files?path=/tmp/../etc/shadow"),
        Some(&alice),
        None,
    );
    assert_eq!(s, 400, "{v}");

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

    // Console and TTY over WebSocket (on the Unix socket, as root).
    {
        let sock = std::os::unix::net::UnixStream::connect(srv.socket()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (mut ws, _) = tungstenite::client(
            format!("ws://localhost/api/v1/vms/{x}/tty?command=echo%20hi-from-$((6*7))"),
            sock,
        )
        .unwrap();
        let mut out = Vec::new();
        loop {
            match ws.read().unwrap() {
                tungstenite::Message::Binary(b) => out.extend_from_slice(&b),
                tungstenite::Message::Text(t) => {
                    assert!(t.contains("\"code\":0"), "{t}");
                    break;
                }
                _ => {}
            }
        }
        assert!(
            String::from_utf8_lossy(&out).contains("hi-from-42"),
            "{out:?}"
        );
    }
    {
        let sock = std::os::unix::net::UnixStream::connect(srv.socket()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (mut ws, _) =
            tungstenite::client(format!("ws://localhost/api/v1/vms/{x}/console"), sock).unwrap();
        ws.send(tungstenite::Message::Binary(
            b"echo console-$((40+2))\n".to_vec().into(),
        ))
        .unwrap();
        let mut out = Vec::new();
        let t0 = Instant::now();
        while !String::from_utf8_lossy(&out).contains("console-42") {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{}",
                String::from_utf8_lossy(&out)
            );
            if let tungstenite::Message::Binary(b) = ws.read().unwrap() {
                out.extend_from_slice(&b);
            }
        }
        let _ = ws.close(None);
    }

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
}

#[test]
fn snap_checkpoints_and_functions_over_the_api() {
    let srv = Server::start();
    let admin = tok(&srv.login("admin", &srv.admin_password()));
    for u in ["snapm", "snapo"] {
        // snapm: room for its lab's VM and two function clones.
        let (s, v) = srv.call(
            "POST",
            "/users",
            Some(&admin),
            Some(Body::Json(
                json!({"name": u, "password": format!("{u}-password"), "role": "member",
                       "max_vms": 3, "max_memory_mib": 1024}),
            )),
        );
        assert_eq!(s, 201, "{v}");
    }
    let me = tok(&srv.login("snapm", "snapm-password"));
    let other = tok(&srv.login("snapo", "snapo-password"));
    let lab = format!("snapapi{}", std::process::id() % 100000);
    let (s, v) = srv.call("POST", "/labs", Some(&me), yaml(lab_yaml(&lab, 1, "96M")));
    assert_eq!(s, 201, "{v}");
    let (s, op) = srv.call("POST", &format!("/labs/{lab}/up"), Some(&me), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&me, &op, Duration::from_secs(180));
    assert_eq!(done["state"], "succeeded", "{done}");
    let vm = format!("{lab}.n.v0");
    let exec = |cmd: &str| -> String {
        let (s, v) = srv.call(
            "POST",
            &format!("/vms/{vm}/exec"),
            Some(&me),
            Some(Body::Json(json!({"argv": ["sh", "-c", cmd]}))),
        );
        assert_eq!(s, 200, "{v}");
        v["stdout"].as_str().unwrap().to_string()
    };

    // Checkpoints: take, list, restore brings the file back, delete; others may not look.
    exec("echo stage1 > /root/stage");
    let cps = format!("/labs/{lab}/checkpoints");
    let (s, v) = srv.call(
        "POST",
        &cps,
        Some(&me),
        Some(Body::Json(json!({"name": "bad name"}))),
    );
    assert_eq!(s, 400, "{v}");
    let (s, op) = srv.call(
        "POST",
        &cps,
        Some(&me),
        Some(Body::Json(json!({"name": "s1"}))),
    );
    assert_eq!(s, 202, "{op}");
    assert_eq!(op["kind"], "lab.checkpoint");
    let done = srv.wait_op(&me, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
    let (s, v) = srv.call(
        "POST",
        &cps,
        Some(&me),
        Some(Body::Json(json!({"name": "s1"}))),
    );
    assert_eq!(s, 409, "{v}");
    let (s, list) = srv.call("GET", &cps, Some(&me), None);
    assert_eq!(s, 200);
    assert_eq!(list[0]["name"], "s1", "{list}");
    assert_eq!(list[0]["vms"], 1);
    // Another member's lab and its checkpoints are not there for `other` (404).
    assert_eq!(srv.call("GET", &cps, Some(&other), None).0, 404);
    assert_eq!(
        srv.call("POST", &format!("{cps}/s1/restore"), Some(&other), None)
            .0,
        404
    );
    exec("echo stage2 > /root/stage");
    let (s, v) = srv.call("POST", &format!("{cps}/nosuch/restore"), Some(&me), None);
    assert_eq!(s, 404, "{v}");
    let (s, op) = srv.call("POST", &format!("{cps}/s1/restore"), Some(&me), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&me, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(exec("cat /root/stage").trim(), "stage1");
    assert_eq!(
        srv.call("DELETE", &format!("{cps}/s1"), Some(&me), None).0,
        204
    );
    assert_eq!(srv.call("GET", &cps, Some(&me), None).1, json!([]));

    // Functions count against the quota: `concurrency` clones can run at once.
    let (s, v) = srv.call(
        "POST",
        "/functions",
        Some(&me),
        Some(Body::Json(
            json!({"name": "snap-big", "run": "cat", "memory": "96M", "concurrency": 3}),
        )),
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 concurrent clones"),
        "{v}"
    );

    // Functions: deploy (an operation), invoke with a body, the limit and the timeout hold.
    let (s, op) = srv.call(
        "POST",
        "/functions",
        Some(&me),
        Some(Body::Json(
            json!({"name": "snap-upper", "run": "tr a-z A-Z", "memory": "96M",
            "concurrency": 1, "timeout_secs": 20}),
        )),
    );
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&me, &op, Duration::from_secs(180));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["owner"], "snapm");
    let invoke = |token: &str, name: &str, body: &str| {
        srv.call(
            "POST",
            &format!("/functions/{name}/invoke"),
            Some(token),
            Some(Body::Raw(
                "application/octet-stream",
                body.as_bytes().to_vec(),
            )),
        )
    };
    let (s, v) = invoke(&me, "snap-upper", "hello");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stdout"], "HELLO");
    assert_eq!(v["exit"], 0);
    assert_eq!(invoke(&other, "snap-upper", "x").0, 404);
    assert_eq!(invoke(&me, "nosuch", "x").0, 404);
    let (_, l) = srv.call("GET", "/functions", Some(&other), None);
    assert_eq!(l, json!([]), "another member sees my function");
    // Three at once with one slot: all answer, one after the other (two of them waited).
    let (me_ref, invoke_ref) = (&me, &invoke);
    let waits: Vec<u64> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|i| sc.spawn(move || invoke_ref(me_ref, "snap-upper", &format!("req{i}"))))
            .collect();
        hs.into_iter()
            .map(|h| {
                let (s, v) = h.join().unwrap();
                assert_eq!(s, 200, "{v}");
                assert!(v["stdout"].as_str().unwrap().starts_with("REQ"), "{v}");
                v["timings"]["slot_wait_ms"].as_u64().unwrap()
            })
            .collect()
    });
    assert!(
        waits.iter().filter(|w| **w >= 200).count() >= 2,
        "the concurrency limit of 1 did not make invocations wait: {waits:?}"
    );
    // The per-invocation timeout: killed, 124.
    let (s, op) = srv.call(
        "POST",
        "/functions",
        Some(&me),
        Some(Body::Json(
            json!({"name": "snap-slow", "run": "sleep 30", "memory": "96M",
            "concurrency": 1, "timeout_secs": 1}),
        )),
    );
    assert_eq!(s, 202, "{op}");
    assert_eq!(
        srv.wait_op(&me, &op, Duration::from_secs(180))["state"],
        "succeeded"
    );
    let t0 = Instant::now();
    let (s, v) = invoke(&me, "snap-slow", "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["exit"], 124, "{v}");
    assert_eq!(v["timed_out"], true);
    assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    // The lab's VM and the two functions use the quota of 3: one more VM does not fit.
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&me),
        yaml(lab_yaml(&format!("{lab}q"), 1, "96M")),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = srv.call("POST", &format!("/labs/{lab}q/up"), Some(&me), None);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deployed functions"),
        "{v}"
    );
    assert_eq!(
        srv.call("DELETE", &format!("/labs/{lab}q"), Some(&me), None)
            .0,
        204
    );
    for f in ["snap-upper", "snap-slow"] {
        assert_eq!(
            srv.call("DELETE", &format!("/functions/{f}"), Some(&me), None)
                .0,
            204
        );
    }
    assert_eq!(invoke(&me, "snap-upper", "x").0, 404);

    let (s, op) = srv.call("POST", &format!("/labs/{lab}/down"), Some(&me), None);
    assert_eq!(s, 202);
    srv.wait_op(&me, &op, Duration::from_secs(60));
}
