//! Load on `kobako serve`: N concurrent HTTPS clients reading a running lab's state
//! (`GET /api/v1/labs/{name}`) for S seconds, with a second lab brought up through the API in
//! the middle of it. Prints latency percentiles, throughput and the `up` result.
//!
//! ```sh
//! cargo build --release -p kobako && cargo run --release -p kobako --example api_load -- 100 30 [INTERVAL_MS]
//! ```
//!
//! Without `INTERVAL_MS` every client sends its next request as soon as the previous one
//! answered (a closed loop: the latency then mostly measures the queue of 100 clients on this
//! machine's cores, by Little's law clients / throughput). With it, each client sends one
//! request every `INTERVAL_MS` (a UI-like paced load), so the figures show the service latency
//! at that offered rate.
//!
//! `--pin CPU` pins the load generator (its 100 client threads, TLS included) to one CPU after
//! the server has started on all of them, so that the clients cannot take every core from the
//! server (on 2 cores, unpinned clients spend as much CPU on TLS as the server does).
//!
//! It starts its own server (the `kobako` next to this example's directory, or `$KOBAKO_BIN`)
//! with temporary state and run directories, on 127.0.0.1 only, and removes everything after.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn kobako_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("KOBAKO_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/examples/api_load -> target/<profile>/kobako
    exe.parent().unwrap().parent().unwrap().join("kobako")
}

fn agent_for(cert: &std::path::Path) -> ureq::Agent {
    let pem = std::fs::read_to_string(cert).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut der, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in b64.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | T.iter().position(|x| *x == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            der.push((acc >> bits) as u8);
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(cfg))
        .timeout(Duration::from_secs(120))
        .build()
}

fn call(
    a: &ureq::Agent,
    method: &str,
    url: &str,
    tok: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let r = a
        .request(method, url)
        .set("authorization", &format!("Bearer {tok}"));
    let res = match body {
        Some(b) => r.set("content-type", "application/yaml").send_bytes(&b),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let s = resp.status();
    let mut t = String::new();
    resp.into_reader().read_to_string(&mut t).unwrap();
    (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
}

fn up_and_wait(a: &ureq::Agent, base: &str, tok: &str, lab: &str) -> (Value, Duration) {
    let t0 = Instant::now();
    let (s, op) = call(a, "POST", &format!("{base}/labs/{lab}/up"), tok, None);
    assert_eq!(s, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    loop {
        let (_, v) = call(a, "GET", &format!("{base}/operations/{id}"), tok, None);
        if v["state"] != "running" {
            return (v, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// Pins this process (threads started after this inherit it) to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (cpu is checked
    // against the set's size) and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert!(
            cpu < 8 * std::mem::size_of::<libc::cpu_set_t>(),
            "--pin {cpu}: no such CPU"
        );
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "--pin {cpu}: {}", std::io::Error::last_os_error());
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let pin: Option<usize> = args.iter().position(|a| a == "--pin").map(|i| {
        let cpu = args.get(i + 1).and_then(|c| c.parse().ok());
        args.drain(i..(i + 2).min(args.len()));
        cpu.expect("--pin CPU")
    });
    let clients: usize = args.first().map_or(100, |s| s.parse().unwrap());
    let secs: u64 = args.get(1).map_or(30, |s| s.parse().unwrap());
    let interval = Duration::from_millis(args.get(2).map_or(0, |s| s.parse().unwrap()));
    let state = tempfile::Builder::new()
        .prefix("kobako-load")
        .tempdir()
        .unwrap();
    let run = tempfile::Builder::new()
        .prefix("kobako-load-run")
        .tempdir()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = kobako_bin();
    let mut server = Command::new(&bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("KOBAKO_STATE", state.path())
        .env("KOBAKO_RUN", run.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let base = format!("https://127.0.0.1:{port}/api/v1");
    let cert = state.path().join("server/tls/cert.pem");
    let pwfile = state.path().join("server/initial-admin-password");
    let t0 = Instant::now();
    while !(cert.exists() && pwfile.exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = agent_for(&cert);
    let pw = std::fs::read_to_string(&pwfile).unwrap().trim().to_string();
    let tok = loop {
        match a
            .post(&format!("{base}/auth/login"))
            .send_json(json!({"username": "admin", "password": pw}))
        {
            Ok(r) => {
                break r.into_json::<Value>().unwrap()["access_token"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let lab = |name: &str, n: usize| {
        let mut s = format!("name: {name}\nnodes:\n  n:\n    vms:\n");
        for i in 0..n {
            s += &format!("      v{i}: {{image: tiny, memory: 128M}}\n");
        }
        s.into_bytes()
    };
    let read_lab = "srvload";
    let up_lab = "srvload2";
    for (n, vms) in [(read_lab, 2), (up_lab, 1)] {
        let (s, v) = call(&a, "POST", &format!("{base}/labs"), &tok, Some(lab(n, vms)));
        assert_eq!(s, 201, "{v}");
    }
    let (op, took) = up_and_wait(&a, &base, &tok, read_lab);
    assert_eq!(op["state"], "succeeded", "{op}");
    println!(
        "lab {read_lab} (2 tiny VMs) up in {:.1} s",
        took.as_secs_f64()
    );

    // The server runs on every CPU (it started before this); the load from here on one.
    if let Some(cpu) = pin {
        pin_to(cpu);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let errors = Arc::new(Mutex::new(0usize));
    let url = format!("{base}/labs/{read_lab}");
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (a, url, tok) = (agent_for(&cert), url.clone(), tok.clone());
            let (stop, lat, errors) = (stop.clone(), lat.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                // Paced clients start spread over one interval.
                let mut next = Instant::now() + interval * i as u32 / clients as u32;
                while !stop.load(Ordering::Relaxed) {
                    if !interval.is_zero() {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += interval;
                    }
                    let t = Instant::now();
                    match a
                        .get(&url)
                        .set("authorization", &format!("Bearer {tok}"))
                        .call()
                    {
                        Ok(r) => {
                            let mut b = Vec::new();
                            let _ = r.into_reader().read_to_end(&mut b);
                            mine.push(t.elapsed());
                        }
                        Err(_) => *errors.lock().unwrap() += 1,
                    }
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    // A lab brought up through the API while the readers run.
    std::thread::sleep(Duration::from_secs(secs / 3));
    let (op, took) = up_and_wait(&a, &base, &tok, up_lab);
    let up_ok = op["state"] == "succeeded";
    let remaining = Duration::from_secs(secs).saturating_sub(start.elapsed());
    std::thread::sleep(remaining);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let elapsed = start.elapsed();
    let mut v = lat.lock().unwrap().clone();
    v.sort();
    println!(
        "{clients} clients ({}{}), {:.1} s: {} requests ({:.0}/s), {} errors",
        if interval.is_zero() {
            "closed loop".to_string()
        } else {
            format!("each one request every {} ms", interval.as_millis())
        },
        pin.map_or(String::new(), |c| format!(
            ", load generator pinned to CPU {c}"
        )),
        elapsed.as_secs_f64(),
        v.len(),
        v.len() as f64 / elapsed.as_secs_f64(),
        errors.lock().unwrap()
    );
    if !v.is_empty() {
        println!(
            "GET /labs/{read_lab}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pct(&v, 0.5),
            pct(&v, 0.9),
            pct(&v, 0.99),
            v.last().unwrap().as_secs_f64() * 1000.0
        );
    }
    println!(
        "lab {up_lab} up under load: {} in {:.1} s",
        if up_ok { "succeeded" } else { "FAILED" },
        took.as_secs_f64()
    );
    for l in [read_lab, up_lab] {
        let (_, op) = call(&a, "POST", &format!("{base}/labs/{l}/down"), &tok, None);
        let id = op["id"].as_str().unwrap_or_default().to_string();
        for _ in 0..300 {
            let (_, v) = call(&a, "GET", &format!("{base}/operations/{id}"), &tok, None);
            if v["state"] != "running" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    if !up_ok {
        eprintln!("up under load failed: {op}");
        std::process::exit(1);
    }
}
