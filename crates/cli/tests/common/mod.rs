//! The real-guest test fixture shared by the CLI's integration tests.
#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const KOBAKO: &str = env!("CARGO_BIN_EXE_kobako");

pub struct Env {
    pub run: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            run: tempfile::Builder::new()
                .prefix("kobako-test-run")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KOBAKO);
        c.args(args)
            .env("KOBAKO_RUN", self.run.path())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// A lab file from examples/ renamed to `name` (so tests never collide with a user's lab),
    /// written into this environment's run directory.
    pub fn example_as(&self, example: &str, name: &str) -> PathBuf {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(example);
        let text = std::fs::read_to_string(&src).unwrap();
        let first = text
            .lines()
            .find(|l| l.starts_with("name:"))
            .expect("example has a name");
        let text = text.replacen(first, &format!("name: {name}"), 1);
        let p = self.run.path().join(example);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.run.path().join("vms")
    }

    /// Names of VM directories left.
    pub fn leftovers(&self) -> Vec<String> {
        leftovers_in(self.run.path())
    }

    /// Processes whose command line or environment mentions this environment's run dir
    /// (supervisors by their command line, VM processes by `KOBAKO_VM`).
    pub fn processes(&self) -> Vec<String> {
        processes_in(self.run.path())
    }

    pub fn assert_clean(&self) {
        assert_clean_in(self.run.path())
    }
}

/// Names of VM directories left in run directory `run`.
pub fn leftovers_in(run: &Path) -> Vec<String> {
    std::fs::read_dir(run.join("vms"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line or environment mentions run directory `run` (supervisors by
/// their command line, VM processes by `KOBAKO_VM`).
pub fn processes_in(run: &Path) -> Vec<String> {
    let needle = run.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        if (cmdline.contains(&needle) || environ.contains(&needle)) && !zombie {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Waits a moment for VM directories and processes of run directory `run` to go; panics
/// naming what is left.
pub fn assert_clean_in(run: &Path) {
    // The supervisor cleans up right after the VM process ends; give it a moment.
    for _ in 0..200 {
        if leftovers_in(run).is_empty() && processes_in(run).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!(
        "left behind: dirs {:?}, processes {:?}",
        leftovers_in(run),
        processes_in(run)
    );
}

impl Drop for Env {
    fn drop(&mut self) {
        // Never leave a VM running after a failed test.
        for name in self.leftovers() {
            let _ = self.run(&["vm", "rm", "-f", &name]);
        }
    }
}

/// Runs `run` every 500 ms until it succeeds (a guest service starting after `up` returned);
/// its stdout. Panics after `within`, naming `what` and the last output.
#[allow(dead_code)]
pub fn until_ok(
    what: &str,
    within: std::time::Duration,
    mut run: impl FnMut() -> Output,
) -> String {
    let t = std::time::Instant::now();
    loop {
        let o = run();
        if o.status.success() {
            return text(&o.stdout);
        }
        if t.elapsed() > within {
            panic!(
                "{what} still fails after {within:?}:\nstdout: {}\nstderr: {}",
                text(&o.stdout),
                text(&o.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

pub fn run_detached(env: &Env, name: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["vm", "run", "-d", "--json", "--name", name];
    args.extend_from_slice(extra);
    let out = ok(&env.run(&args));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub fn exec(env: &Env, name: &str, argv: &[&str]) -> Output {
    let mut args = vec!["vm", "exec", name, "--"];
    args.extend_from_slice(argv);
    env.run(&args)
}

pub fn mem_total_mib(env: &Env, name: &str) -> u64 {
    let meminfo = ok(&exec(env, name, &["cat", "/proc/meminfo"]));
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// MemTotal excludes what the kernel reserves for itself (its image, page tables, the initramfs
/// while unpacked): a guest given N MiB sees a bit less, never more.
pub fn assert_memory_matches(seen: u64, given: u64) {
    assert!(
        seen <= given && seen + 40 >= given,
        "guest MemTotal {seen} MiB does not match --memory {given}M"
    );
}

pub trait WaitTimeout {
    fn wait_with_output_timeout(self, t: std::time::Duration) -> Option<Output>;
}

impl WaitTimeout for std::process::Child {
    fn wait_with_output_timeout(mut self, t: std::time::Duration) -> Option<Output> {
        let pid = self.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let watchdog = std::thread::spawn(move || {
            if rx.recv_timeout(t).is_err() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                return true;
            }
            false
        });
        let mut stdout = self.stdout.take().unwrap();
        let mut stderr = self.stderr.take().unwrap();
        let err_thread = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut stderr, &mut b).ok();
            b
        });
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).ok();
        let status = self.wait().unwrap();
        let _ = tx.send(());
        let killed = watchdog.join().unwrap();
        let err = err_thread.join().unwrap();
        (!killed).then_some(Output {
            status,
            stdout: out,
            stderr: err,
        })
    }
}

pub fn assert_fails_with(env: &Env, args: &[&str], needle: &str) {
    let o = env.run(args);
    let stderr = text(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded; stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected '{needle}' in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    env.assert_clean();
}

/// TLS settings that trust exactly the server's self-signed certificate.
pub fn tls_for(cert: &std::path::Path) -> std::sync::Arc<rustls::ClientConfig> {
    let pem = std::fs::read_to_string(cert).unwrap();
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let der = base64_decode(&b64);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).unwrap();
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A TLS client that trusts exactly the server's self-signed certificate.
pub fn agent_for(cert: &std::path::Path) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .tls_config(tls_for(cert))
        .timeout_connect(std::time::Duration::from_secs(10))
        .timeout_read(std::time::Duration::from_secs(120))
        .build()
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|x| *x == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `kobako ARGS` with the lab state in `state` (each lab test its own database).
pub fn lab_cmd(env: &Env, state: &Path, args: &[&str]) -> Output {
    env.cmd(args).env("KOBAKO_STATE", state).output().unwrap()
}

/// Takes a lab down when a test ends, passing or not (a failed assertion must not leave VMs,
/// namespaces or net daemons for the next run to trip over).
pub struct Down<'a> {
    pub env: &'a Env,
    pub state: &'a Path,
    pub lab: &'a str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = lab_cmd(self.env, self.state, &["down", self.lab]);
    }
}
