//! `kobako serve` with its own state and run directories, as the integration tests start it:
//! the one spawned-server fixture (the OIDC, web UI and UI operations tests start it with
//! their own `serve` flags and labs to take down).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{agent_for, KOBAKO};
use serde_json::{json, Value};

/// A `kobako serve` with its own state and run directories.
pub struct Server {
    pub state: tempfile::TempDir,
    pub run: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub agent: ureq::Agent,
    pub log: PathBuf,
    /// Extra `kobako serve` flags (kept for restarts).
    pub args: Vec<String>,
    /// Labs to take down (`kobako down`) when the server is dropped.
    pub labs: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts `kobako serve` with `args` after its `--listen`.
    pub fn start_with(args: &[&str]) -> Server {
        let state = tempfile::Builder::new()
            .prefix("kobako-srv-state")
            .tempdir()
            .unwrap();
        let run = tempfile::Builder::new()
            .prefix("kobako-srv-run")
            .tempdir()
            .unwrap();
        let log = state.path().join("serve.log");
        let mut s = Server {
            state,
            run,
            port: free_port(),
            child: None,
            agent: ureq::agent(),
            log,
            args: args.iter().map(|a| a.to_string()).collect(),
            labs: Vec::new(),
        };
        s.spawn();
        s
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KOBAKO);
        c.args(args)
            .env("KOBAKO_STATE", self.state.path())
            .env("KOBAKO_RUN", self.run.path())
            .env("KOBAKO_LOG", "info");
        c
    }

    /// Starts (or restarts) the server process and waits for /health.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .cmd(&["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            // In its state directory, as a service manager may start it: a name a member
            // sends must never resolve to a file there (tests/attacks.rs).
            .current_dir(self.state.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            let cert = self.state.path().join("server/tls/cert.pem");
            if cert.exists() {
                self.agent = agent_for(&cert);
                if let Ok(r) = self.agent.get(&self.url("/health")).call() {
                    if r.status() == 200 {
                        return;
                    }
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("kobako serve exited with {st}: {}", self.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "server did not answer: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as a service manager stops it; the exit status.
    pub fn term(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        // SAFETY: sending a signal to our own child process; no memory involved.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the server did not stop within 30 s of SIGTERM: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child process; no memory involved.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// The server's address, for clients of the web UI.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/api/v1{path}", self.port)
    }

    pub fn socket(&self) -> PathBuf {
        self.run.path().join("server.sock")
    }

    pub fn admin_password(&self) -> String {
        std::fs::read_to_string(self.state.path().join("server/initial-admin-password"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// One request; returns (status, JSON body or the text as a JSON string).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> (u16, Value) {
        let mut r = self.agent.request(method, &self.url(path));
        if let Some(t) = token {
            r = r.set("authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            None => r.call(),
            Some(Body::Json(v)) => r.send_json(v),
            Some(Body::Raw(ct, b)) => r.set("content-type", ct).send_bytes(&b),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let mut text = String::new();
        resp.into_reader().read_to_string(&mut text).unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub fn login(&self, user: &str, pw: &str) -> Value {
        let (s, v) = self.call(
            "POST",
            "/auth/login",
            None,
            Some(Body::Json(json!({"username": user, "password": pw}))),
        );
        assert_eq!(s, 200, "login {user}: {v}");
        v
    }

    /// Polls an operation until it is no longer running.
    pub fn wait_op(&self, token: &str, op: &Value, timeout: Duration) -> Value {
        let id = op["id"].as_str().unwrap();
        let t0 = Instant::now();
        loop {
            let (s, v) = self.call("GET", &format!("/operations/{id}"), Some(token), None);
            assert_eq!(s, 200, "{v}");
            if v["state"] != "running" {
                return v;
            }
            assert!(t0.elapsed() < timeout, "operation still running: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Request over the Unix socket (as root): (status, body). The body is written from
    /// another thread, so a server that answers before reading it all (413) is seen.
    pub fn local(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        let body = body.unwrap_or(b"").to_vec();
        write!(
            s,
            "{method} /api/v1{path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&body);
        });
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        let out = String::from_utf8_lossy(&out).into_owned();
        let status: u16 = out
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP response: {out:?}"));
        let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        // Chunked bodies: take the JSON between the chunk size lines.
        let body = if body.starts_with('{') || body.starts_with('[') {
            body.to_string()
        } else {
            body.lines().nth(1).unwrap_or("").to_string()
        };
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // Whatever the test left running: down with the CLI on the same state.
        for lab in &self.labs {
            let _ = self.cmd(&["down", lab]).output();
        }
        // Never leave VMs behind: stop every VM of this run directory.
        let vms = self.run.path().join("vms");
        if let Ok(rd) = std::fs::read_dir(&vms) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let _ = self.cmd(&["vm", "rm", "-f", &name]).output();
            }
        }
    }
}

pub enum Body {
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// The access token of a login answer.
pub fn tok(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

/// A YAML request body (lab and scenario files).
pub fn yaml(s: &str) -> Option<Body> {
    Some(Body::Raw("application/yaml", s.as_bytes().to_vec()))
}

/// A YAML request body from bytes.
pub fn yaml_bytes(b: Vec<u8>) -> Option<Body> {
    Some(Body::Raw("application/yaml", b))
}

/// A lab of one node `n` with `vms` tiny-image VMs `v0`, `v1`, ... of `memory` each.
pub fn lab_yaml(name: &str, vms: usize, memory: &str) -> Vec<u8> {
    let mut s = format!("name: {name}\nnodes:\n  n:\n    vms:\n");
    for i in 0..vms {
        s += &format!("      v{i}: {{image: tiny, memory: {memory}}}\n");
    }
    s.into_bytes()
}

/// Two single-VM nodes joined by a link `l1`.
pub fn linked_lab(name: &str) -> Vec<u8> {
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

impl Server {
    /// The admin's access token.
    pub fn admin_token(&self) -> String {
        tok(&self.login("admin", &self.admin_password()))
    }

    /// Creates user `name` with `role` (password `NAME-password`; `extra` fields such as
    /// quotas) as `admin`, logs it in and returns its access token.
    pub fn user(&self, admin: &str, name: &str, role: &str, extra: Value) -> String {
        let mut body = json!({"name": name, "password": format!("{name}-password"), "role": role});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let (s, v) = self.call("POST", "/users", Some(admin), Some(Body::Json(body)));
        assert_eq!(s, 201, "create user {name}: {v}");
        tok(&self.login(name, &format!("{name}-password")))
    }

    /// Pid of a VM's process on the host (None: not running).
    pub fn vm_pid(&self, vm: &str) -> Option<i32> {
        std::fs::read_to_string(self.run.path().join("vms").join(vm).join("vm.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    }

    /// Panics if VM directories or processes of this server's run directory are left (after
    /// the server itself was stopped).
    pub fn assert_clean(&self) {
        super::assert_clean_in(self.run.path());
    }

    /// Member `alice` (room for two VMs, 512 MiB) and her lab `srvPID` ([`linked_lab`]), still
    /// pending; taken down when the server is dropped. (admin token, alice's token, lab name).
    pub fn alice_with_linked_lab(&mut self) -> (String, String, String) {
        let admin = tok(&self.login("admin", &self.admin_password()));
        let (s, _) = self.call(
            "POST",
            "/users",
            Some(&admin),
            Some(Body::Json(json!({"name": "alice", "password": "alice-password", "role": "member", "max_vms": 2, "max_memory_mib": 512}))),
        );
        assert_eq!(s, 201);
        let alice = tok(&self.login("alice", "alice-password"));
        let lab = format!("srv{}", std::process::id() % 100000);
        let (s, v) = self.call("POST", "/labs", Some(&alice), yaml_bytes(linked_lab(&lab)));
        assert_eq!(s, 201, "{v}");
        assert_eq!(v[0]["state"], "pending");
        self.labs.push(lab.clone());
        (admin, alice, lab)
    }

    /// Brings `lab` up as `token`; waits for the operation to succeed.
    pub fn lab_up(&self, token: &str, lab: &str) {
        let (s, op) = self.call("POST", &format!("/labs/{lab}/up"), Some(token), None);
        assert_eq!(s, 202, "{op}");
        let done = self.wait_op(token, &op, Duration::from_secs(180));
        assert_eq!(done["state"], "succeeded", "{done}\n{}", self.log_text());
    }

    /// The names of the labs `token` lists.
    pub fn lab_names(&self, token: &str) -> Vec<String> {
        let (s, v) = self.call("GET", "/labs", Some(token), None);
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    }
}
