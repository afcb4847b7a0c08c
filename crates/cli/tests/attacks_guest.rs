//! The guest is untrusted (issue 17 item 6): what a guest sends through its agent can never
//! make kobako write outside a download's destination or hold unbounded memory.
//!
//! Most tests use "an agent that lies": a fake agent speaking the real wire protocol
//! (`kobako_agent::proto`) on a fake VM directory's `agent.sock`, answering with hostile
//! entries, sizes and floods. The host side under test is the real one: the `kobako` binary
//! (`kobako cp`) and `kobako serve` (HTTP API).

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::Server;
use kobako_agent::proto::{self, DirEntry, FileInfo, FileKind, Frame, Kind, Msg, ReadyInfo};
use serde_json::json;

/// One file as the lying agent serves it: what it announces, and what it then sends.
#[derive(Clone)]
struct Served {
    kind: FileKind,
    announced: u64,
    mode: u32,
    data: Vec<u8>,
    /// Extra bytes sent after `data` beyond what was announced.
    extra: u64,
}

fn file(data: &[u8], mode: u32) -> Served {
    Served {
        kind: FileKind::File,
        announced: data.len() as u64,
        mode,
        data: data.to_vec(),
        extra: 0,
    }
}

/// What the lying agent answers.
#[derive(Clone, Default)]
struct Script {
    files: HashMap<String, Served>,
    listing: Vec<DirEntry>,
    /// Bytes of stdout an `exec` floods, then exit code 3.
    exec_flood: usize,
}

/// A fake VM `name` under `run`: config.json, vm.pid (this test process, alive) and an
/// `agent.sock` served by the lying agent. Returns the requests it received.
fn lying_vm(run: &Path, name: &str, script: Script) -> Arc<Mutex<Vec<String>>> {
    let dir = run.join("vms").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    // A stand-in "VM process" (something kobako may signal: never this test process).
    let vm = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    std::fs::write(dir.join("vm.pid"), vm.id().to_string()).unwrap();
    std::fs::write(dir.join("supervisor.pid"), vm.id().to_string()).unwrap();
    std::mem::forget(vm); // sleep ends by itself
    let l = UnixListener::bind(dir.join("agent.sock")).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (script, seen) = (script.clone(), s2.clone());
            std::thread::spawn(move || serve(conn, &script, &seen));
        }
    });
    seen
}

fn serve(conn: UnixStream, script: &Script, seen: &Mutex<Vec<String>>) {
    let mut r = conn.try_clone().unwrap();
    let mut w = conn;
    let mut put = |f: Frame| proto::write_frame(&mut w, &f).is_ok();
    while let Ok(f) = proto::read_frame(&mut r) {
        let Ok(m) = f.to_msg() else { continue };
        let id = f.stream;
        let info = |s: &Served| {
            Msg::FileInfo(FileInfo {
                exists: true,
                kind: s.kind,
                size: s.announced,
                mode: s.mode,
                uid: 0,
                gid: 0,
            })
        };
        let ok = match m {
            Msg::Hello { .. } => put(Frame::msg(
                0,
                &Msg::Ready(ReadyInfo {
                    version: proto::VERSION,
                    agent_version: "liar".into(),
                    ..Default::default()
                }),
            )),
            Msg::Stat { path } => {
                seen.lock().unwrap().push(format!("stat {path}"));
                let m = match script.files.get(&path) {
                    Some(s) => info(s),
                    None => Msg::FileInfo(FileInfo {
                        exists: path == "/d",
                        kind: FileKind::Dir,
                        size: 4096,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    }),
                };
                put(Frame::msg(id, &m))
            }
            Msg::ListDir { path } => {
                seen.lock().unwrap().push(format!("list {path}"));
                put(Frame::msg(
                    id,
                    &Msg::Entries {
                        entries: script.listing.clone(),
                    },
                ))
            }
            Msg::GetFile { path } => {
                seen.lock().unwrap().push(format!("get {path}"));
                match script.files.get(&path) {
                    None => put(Frame::msg(
                        id,
                        &Msg::Error {
                            message: format!("{path}: no such file"),
                        },
                    )),
                    Some(s) => {
                        use sha2::Digest;
                        let mut ok = put(Frame::msg(id, &info(s)));
                        let mut all = s.data.clone();
                        all.extend(std::iter::repeat_n(b'A', s.extra as usize));
                        for c in all.chunks(256 * 1024) {
                            ok = ok
                                && put(Frame {
                                    stream: id,
                                    kind: Kind::Stdout,
                                    payload: c.to_vec(),
                                });
                        }
                        ok && put(Frame {
                            stream: id,
                            kind: Kind::Stdout,
                            payload: Vec::new(),
                        }) && put(Frame::msg(
                            id,
                            &Msg::Done {
                                sha256: Some(hex::encode(sha2::Sha256::digest(&all))),
                                size: Some(all.len() as u64),
                            },
                        ))
                    }
                }
            }
            Msg::Exec(_) => {
                seen.lock().unwrap().push("exec".into());
                let mut ok = put(Frame::msg(id, &Msg::Started { pid: 7 }));
                let mut left = script.exec_flood;
                while ok && left > 0 {
                    let n = left.min(proto::MAX_PAYLOAD);
                    ok = put(Frame {
                        stream: id,
                        kind: Kind::Stdout,
                        payload: vec![b'y'; n],
                    });
                    left -= n;
                }
                ok && put(Frame::msg(
                    id,
                    &Msg::Exited {
                        code: Some(3),
                        signal: None,
                        timed_out: false,
                    },
                ))
            }
            _ => true,
        };
        if !ok {
            break;
        }
    }
}

fn entry(path: &str, kind: FileKind, size: u64, mode: u32, target: Option<&str>) -> DirEntry {
    DirEntry {
        path: path.into(),
        kind,
        size,
        mode,
        target: target.map(String::from),
    }
}

fn tree(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(d, d, &mut out);
    out.sort();
    out
}

/// `kobako cp liar:/d ./x` against a guest that lists absolute names, `..`, a symlink to a
/// host directory followed by a file "inside" it, setuid/setgid/sticky modes, a fifo, an
/// absurd size and a duplicate name: nothing is written outside `x`, the link is recreated as
/// a link and never followed, the modes are stripped, and `cp` exits 1 naming the refusals.
#[test]
fn cp_of_a_lying_guest_dir_never_writes_outside_the_destination() {
    let run = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap(); // stands for /etc
    std::fs::write(host.path().join("passwd"), "root:x:0:0").unwrap();
    let out = tempfile::tempdir().unwrap();
    let etc = host.path().to_str().unwrap();
    let mut files = HashMap::new();
    for p in [
        "/d//abs",
        "/d/../escape",
        "/d/a/../../escape2",
        "/d/sub/link/passwd",
    ] {
        files.insert(p.to_string(), file(b"pwned", 0o644));
    }
    files.insert("/d/ok.txt".into(), file(b"fine\n", 0o644));
    files.insert("/d/suid".into(), file(b"#!/bin/sh\n", 0o6755));
    files.insert("/d/sub/inner".into(), file(b"inner", 0o600));
    let mut big = file(b"", 0o644);
    big.announced = 1 << 50;
    files.insert("/d/big".into(), big);
    let mut liar = file(b"0123456789", 0o644);
    liar.extra = 5 << 20;
    files.insert("/d/liar".into(), liar);
    let listing = vec![
        entry("/abs", FileKind::File, 5, 0o644, None),
        entry("../escape", FileKind::File, 5, 0o644, None),
        entry("a/../../escape2", FileKind::File, 5, 0o644, None),
        entry("big", FileKind::File, 1 << 50, 0o644, None),
        entry("fifo", FileKind::Other, 0, 0o644, None),
        entry("liar", FileKind::File, 10, 0o644, None),
        entry("ok.txt", FileKind::File, 5, 0o644, None),
        entry("sub", FileKind::Dir, 0, 0o7777, None),
        entry("sub/inner", FileKind::File, 5, 0o600, None),
        entry("sub/link", FileKind::Symlink, 0, 0o777, Some(etc)),
        entry("sub/link/passwd", FileKind::File, 5, 0o644, None),
        entry("suid", FileKind::File, 10, 0o6755, None),
        entry("ok.txt", FileKind::File, 5, 0o644, None),
    ];
    let seen = lying_vm(
        run.path(),
        "liar",
        Script {
            files,
            listing,
            exec_flood: 0,
        },
    );
    let dst = out.path().join("x");
    let o = std::process::Command::new(common::KOBAKO)
        .args(["cp", "liar:/d", dst.to_str().unwrap()])
        .env("KOBAKO_RUN", run.path())
        .env("KOBAKO_STATE", state.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    // Nothing outside the destination; the "host" directory untouched.
    assert_eq!(tree(out.path()).first().map(String::as_str), Some("x"));
    assert!(tree(out.path()).iter().all(|p| p.starts_with('x')));
    assert_eq!(tree(host.path()), ["passwd"]);
    assert_eq!(
        std::fs::read_to_string(host.path().join("passwd")).unwrap(),
        "root:x:0:0"
    );
    assert_eq!(
        tree(&dst),
        ["ok.txt", "sub", "sub/inner", "sub/link", "suid"],
        "{err}"
    );
    // The guest's link is a link here, never followed.
    let l = dst.join("sub/link");
    assert!(std::fs::symlink_metadata(&l)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&l).unwrap(), PathBuf::from(etc));
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains("link/passwd") || r.contains("escape") || r.contains("abs")),
        "a refused entry was requested: {:?}",
        seen.lock().unwrap()
    );
    // setuid/setgid/sticky dropped.
    let mode = |p: &str| std::fs::metadata(dst.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sub") & 0o7000, 0);
    assert_eq!(std::fs::read(dst.join("ok.txt")).unwrap(), b"fine\n");
    assert_eq!(std::fs::read(dst.join("sub/inner")).unwrap(), b"inner");
    // Each refusal is named.
    for what in [
        "/abs",
        "../escape",
        "a/../../escape2",
        "sub/link/passwd",
        "big",
        "liar",
        "skipped fifo",
    ] {
        assert!(err.contains(what), "{what}: {err}");
    }
}

/// A single-file `kobako cp` of a file whose guest mode is setuid root: the copy has the
/// permission bits only; a file that grows past its announced size is not kept.
#[test]
fn cp_of_a_lying_guest_file_drops_setuid_and_stops_at_the_announced_size() {
    let run = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut files = HashMap::new();
    files.insert("/suid".to_string(), file(b"#!/bin/sh\n", 0o4755));
    let mut liar = file(b"0123456789", 0o644);
    liar.extra = 3 << 20;
    files.insert("/liar".into(), liar);
    lying_vm(
        run.path(),
        "liar",
        Script {
            files,
            ..Default::default()
        },
    );
    let cp = |src: &str, dst: &Path| {
        std::process::Command::new(common::KOBAKO)
            .args(["cp", src, dst.to_str().unwrap()])
            .env("KOBAKO_RUN", run.path())
            .env("KOBAKO_STATE", state.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = cp("liar:/suid", &out.path().join("suid"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = std::fs::metadata(out.path().join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(m & 0o7777, 0o755);
    let o = cp("liar:/liar", &out.path().join("liar"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("more than the 10 bytes it announced"), "{err}");
    assert_eq!(tree(out.path()), ["suid"], "no partial file left");
}

fn admin(srv: &Server) -> String {
    srv.login("admin", &srv.admin_password())["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Through the API: an exec whose guest floods 20 MiB of output answers with 16 MiB and the
/// truncation marker, and still the exit code; a download whose guest sends more than it
/// announced fails (422) instead of growing a buffer; a streamed download never exceeds its
/// Content-Length.
#[test]
fn api_exec_flood_and_lying_downloads_are_bounded() {
    let srv = Server::start();
    let t = admin(&srv);
    let mut files = HashMap::new();
    let mut small = file(b"0123456789", 0o644);
    small.extra = 40 << 20;
    files.insert("/small".to_string(), small);
    let mut streamed = file(&vec![b'z'; 20 << 20], 0o644);
    streamed.extra = 30 << 20;
    files.insert("/streamed".to_string(), streamed);
    let mut zero = file(b"", 0o666);
    zero.kind = FileKind::Other;
    zero.extra = 64 << 20;
    files.insert("/dev/zero".to_string(), zero);
    lying_vm(
        srv.run.path(),
        "liar",
        Script {
            files,
            exec_flood: 20 << 20,
            ..Default::default()
        },
    );
    let (s, v) = srv.call(
        "POST",
        "/vms/liar/exec",
        Some(&t),
        Some(common::server::Body::Json(json!({"argv": ["yes"]}))),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["exit_code"], 3);
    let out = v["stdout"].as_str().unwrap();
    let marker = "\n[kobako: output truncated after 16777216 bytes]\n";
    assert!(out.ends_with(marker), "{}", &out[out.len() - 80..]);
    assert_eq!(out.len(), (16 << 20) + marker.len());
    // The same with stdin (the streamed exec path).
    let (s, v) = srv.call(
        "POST",
        "/vms/liar/exec",
        Some(&t),
        Some(common::server::Body::Json(
            json!({"argv": ["cat"], "stdin": "x"}),
        )),
    );
    assert_eq!((s, &v["exit_code"]), (200, &json!(3)), "{v}");
    assert!(v["stdout"].as_str().unwrap().ends_with(marker));

    let (s, v) = srv.call("GET", "/vms/liar/files?path=/small", Some(&t), None);
    assert_eq!(s, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("more than the 10 bytes it announced"), "{v}");

    let (s, v) = srv.call("GET", "/vms/liar/files?path=/dev/zero", Some(&t), None);
    assert_eq!((s, &v["error"]["code"]), (422, &json!("not_a_file")), "{v}");

    let r = srv
        .agent
        .get(&srv.url("/vms/liar/files?path=/streamed"))
        .set("authorization", &format!("Bearer {t}"))
        .call()
        .unwrap();
    assert_eq!(r.header("content-length"), Some("20971520"));
    let mut n = 0u64;
    let mut rd = r.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match rd.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    assert!(n <= 20 << 20, "read {n} bytes past the Content-Length");
    // The server is still there and well.
    assert_eq!(srv.call("GET", "/labs", Some(&t), None).0, 200);
}

/// The console WebSocket of a VM whose guest filled a huge console log sends only its last
/// 8 KiB (the log is never read whole), then the live console.
#[test]
fn api_console_of_a_flooded_log_sends_only_its_tail() {
    let srv = Server::start();
    lying_vm(srv.run.path(), "flood", Script::default());
    let dir = srv.run.path().join("vms/flood");
    let log = std::fs::File::create(dir.join("console.log")).unwrap();
    log.set_len(32 << 30).unwrap(); // sparse 32 GiB
    drop(log);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("console.log"))
            .unwrap();
        f.write_all(b"the end of the log").unwrap();
    }
    let console = UnixListener::bind(dir.join("console.sock")).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = console.accept() {
            use std::io::Write;
            let _ = c.write_all(b"live!");
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let sock = UnixStream::connect(srv.socket()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut ws, _) = tungstenite::client("ws://localhost/api/v1/vms/flood/console", sock).unwrap();
    let first = match ws.read().unwrap() {
        tungstenite::Message::Binary(b) => b.to_vec(),
        m => panic!("{m:?}"),
    };
    assert_eq!(first.len(), 8192);
    assert!(first.ends_with(b"the end of the log"));
    let mut live = Vec::new();
    while !live.ends_with(b"live!") {
        if let tungstenite::Message::Binary(b) = ws.read().unwrap() {
            live.extend_from_slice(&b);
        }
    }
    assert_eq!(live, b"live!");
}

/// A real tiny guest makes `/tmp/d/l -> /etc` (and a link to a host file, a fifo, a setuid
/// file); `kobako cp vm:/tmp/d ./out` recreates the links as links, writes nothing through
/// them, skips the fifo and drops setuid. `/dev/zero` is refused (it would never end).
#[test]
fn cp_of_a_real_guest_dir_with_a_symlink_to_etc_never_follows_it() {
    use common::{exec, ok, Env};
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "t-cpln"]));
    ok(&exec(
        &env,
        "t-cpln",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/d && echo hi > /tmp/d/f && ln -s /etc /tmp/d/l && \
             ln -s /etc/hostname /tmp/d/h && mkfifo /tmp/d/p && \
             echo x > /tmp/d/s && chmod 4755 /tmp/d/s",
        ],
    ));
    let host_etc = || tree(Path::new("/etc")).len();
    let before = host_etc();
    let out = tempfile::tempdir().unwrap();
    let o = env.run(&["cp", "t-cpln:/tmp/d", out.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let d = out.path().join("d");
    assert_eq!(tree(&d), ["f", "h", "l", "s"], "{err}");
    for (link, target) in [("l", "/etc"), ("h", "/etc/hostname")] {
        let p = d.join(link);
        assert!(std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from(target));
    }
    assert!(err.contains("skipped p"), "{err}");
    assert_eq!(std::fs::read(d.join("f")).unwrap(), b"hi\n");
    let m = std::fs::metadata(d.join("s")).unwrap().permissions().mode();
    assert_eq!(m & 0o7777, 0o755);
    assert_eq!(host_etc(), before, "the host's /etc changed");
    // A pseudo-file that says 0 bytes still copies; a device with no end is refused.
    let cpuinfo = out.path().join("cpuinfo");
    ok(&env.run(&["cp", "t-cpln:/proc/cpuinfo", cpuinfo.to_str().unwrap()]));
    assert!(std::fs::read_to_string(&cpuinfo)
        .unwrap()
        .contains("processor"));
    let z = out.path().join("zero");
    let o = env.run(&["cp", "t-cpln:/dev/zero", z.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("device node"));
    assert!(!z.exists());
    ok(&env.run(&["vm", "stop", "t-cpln"]));
    env.assert_clean();
}

/// `kobako image import` of a rootfs tarball whose `etc`, `tmp` and `usr/local/sbin` are
/// symlinks to host directories: kobako's own writes (the agent, `/tmp`'s mode) resolve inside
/// the tree, so the import fails naming the path, the host directories are untouched (no file,
/// no mode change) and no image is left.
#[test]
fn image_import_of_a_rootfs_linking_to_host_dirs_never_writes_there() {
    let work = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let hd = |n: &str| {
        let p = host.path().join(n);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let (etc, tmp, sbin) = (hd("etc"), hd("tmp"), hd("sbin"));
    let snapshot = || {
        [&etc, &tmp, &sbin]
            .iter()
            .map(|p| (tree(p), std::fs::metadata(p).unwrap().permissions().mode()))
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let root = work.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/sh"), "not really").unwrap();
    std::fs::create_dir_all(root.join("usr/local")).unwrap();
    std::os::unix::fs::symlink(&etc, root.join("etc")).unwrap();
    std::os::unix::fs::symlink(&tmp, root.join("tmp")).unwrap();
    std::os::unix::fs::symlink(&sbin, root.join("usr/local/sbin")).unwrap();
    let tarball = work.path().join("evil.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let o = std::process::Command::new(common::KOBAKO)
        .args([
            "image",
            "import",
            tarball.to_str().unwrap(),
            "--name",
            "kbt-evil",
        ])
        .env("KOBAKO_IMAGES", images.path())
        .env("KOBAKO_STATE", state.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("/usr/local/sbin/kobako-agent inside the imported tree"),
        "{err}"
    );
    assert_eq!(snapshot(), before, "a host directory changed");
    let o = std::process::Command::new(common::KOBAKO)
        .args(["image", "inspect", "--json", "kbt-evil"])
        .env("KOBAKO_IMAGES", images.path())
        .env("KOBAKO_STATE", state.path())
        .output()
        .unwrap();
    assert!(!o.status.success(), "an image was left");
}

/// A real guest writing 12 MB to its console: the console log on the host stays under the
/// cap (8 MiB, cut back to its last 2 MiB after a marker) and keeps the latest output.
#[test]
fn guest_flooding_its_console_keeps_the_log_capped() {
    use common::{exec, ok, Env};
    let env = Env::new();
    ok(&env.run(&["vm", "run", "-d", "--name", "t-flood"]));
    ok(&exec(
        &env,
        "t-flood",
        &[
            "sh",
            "-c",
            "yes 0123456789abcdef0123456789abcdef | head -c 12000000 > /dev/console; \
             echo the-last-line > /dev/console",
        ],
    ));
    let log = env.run.path().join("vms/t-flood/console.log");
    let t0 = std::time::Instant::now();
    let text = loop {
        let t = std::fs::read(&log).unwrap();
        if t.windows(13).any(|w| w == b"the-last-line") || t0.elapsed() > Duration::from_secs(10) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("console.log after a 12 MB flood: {} bytes", text.len());
    // The cap, plus what QEMU can write between two checks (0.5 s).
    assert!(text.len() < (8 << 20) + (2 << 20), "{} bytes", text.len());
    let marker = b"[kobako: console log truncated, older output dropped]";
    assert!(text.windows(marker.len()).any(|w| w == marker));
    assert!(text.windows(13).any(|w| w == b"the-last-line"));
    ok(&env.run(&["vm", "stop", "t-flood"]));
    env.assert_clean();
}
