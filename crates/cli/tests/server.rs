//! `kobako serve` over real HTTPS (and its Unix socket): its private files, the login limiter,
//! the socket as root, the CLI's admin commands on its database, connections that never finish
//! a request, and (with real tiny-image VMs) snapshots, checkpoints and functions. A lab's life
//! over the API is in api_labs.rs, api_guest.rs and api_links.rs; the API cases that need no VM
//! and no listener are router tests in crates/server/tests/api.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::server::{lab_yaml, Body, Server};
use serde_json::{json, Value};

fn yaml(b: Vec<u8>) -> Option<Body> {
    Some(Body::Raw("application/yaml", b))
}

fn tok(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
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
