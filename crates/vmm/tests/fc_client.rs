//! A third-party Firecracker client from PyPI drives `kobako-vmm`: firecracker-python (the
//! version pinned in scripts/setup.sh, which installs it into /var/cache/kobako/venv-fcclient)
//! runs tests/py/fc_client_flow.py. The library launches the VMM itself, as `firecracker` (a
//! symlink to kobako-vmm), configures and boots the ticker guest, pauses, snapshots, resumes,
//! sends Ctrl-Alt-Del, restores the snapshot in a second VMM and stops both with SIGTERM. The
//! script checks every answer; this test checks its summary and what it left on disk.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The version scripts/setup.sh pins (README's "Third-party clients" says the same).
const FC_CLIENT_VERSION: &str = "0.0.5";
const VENV_PYTHON: &str = "/var/cache/kobako/venv-fcclient/bin/python";
const MEM_MIB: u64 = 128;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/fc_client_flow.py")
}

/// Kills the VMMs the script launched under `data` and left behind (it stops them itself, even
/// on failure, unless it was killed): kobako-vmm processes whose API socket is under `data`.
fn kill_leftovers(data: &Path) {
    let needle = data.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if exe == vmm_bin() && String::from_utf8_lossy(&cmdline).contains(&needle) {
            eprintln!("killing leftover VMM {pid}");
            // SAFETY: kill(2) on one of the VMM processes this test's script started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A temporary directory whose path has no capitals (removed when dropped): the library puts
/// the API socket's path in the host part of a URL, which requests lower-cases, so it cannot
/// reach a socket under one of tempfile's mixed-case names.
struct LowercaseDir(PathBuf);

impl LowercaseDir {
    fn new() -> LowercaseDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("kobako-fcclient-{}-{nanos:x}", std::process::id()));
        assert_eq!(
            p.to_string_lossy(),
            p.to_string_lossy().to_lowercase(),
            "the temporary directory (TMPDIR) must have no capitals for firecracker-python"
        );
        std::fs::create_dir(&p).unwrap();
        LowercaseDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LowercaseDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn firecracker_python_drives_the_vmm_through_a_full_flow() {
    assert!(
        Path::new(VENV_PYTHON).exists(),
        "{VENV_PYTHON} is missing: run scripts/setup.sh (it installs firecracker-python=={FC_CLIENT_VERSION})"
    );
    let dir = LowercaseDir::new();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let rootfs = write(dir.path(), "rootfs.ext4", &vec![0u8; 1 << 20]);
    // The library runs its configured binary and checks that the process is named firecracker.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fc = bin.join("firecracker");
    std::os::unix::fs::symlink(vmm_bin(), &fc).unwrap();
    let data = dir.path().join("fc");
    let summary = dir.path().join("summary.json");

    let t0 = Instant::now();
    let mut py = Command::new(VENV_PYTHON)
        .arg(script())
        .arg("--firecracker")
        .arg(&fc)
        .arg("--data-dir")
        .arg(&data)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--rootfs")
        .arg(&rootfs)
        .arg("--summary")
        .arg(&summary)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out_pipe = py.stdout.take().unwrap();
    let mut err_pipe = py.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = t0 + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = py.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = py.kill();
            let _ = py.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_t.join().unwrap();
    let err = err_t.join().unwrap();
    eprintln!("--- fc_client_flow.py stdout\n{out}--- stderr\n{err}---");
    eprintln!("flow took {:.1} s", t0.elapsed().as_secs_f64());
    let sum: serde_json::Value = std::fs::read_to_string(&summary)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    kill_leftovers(&data);
    let status = status.expect("fc_client_flow.py did not finish within 180 s");
    assert!(status.success(), "fc_client_flow.py failed ({status})");
    assert_eq!(sum["ok"], true, "summary: {sum}");
    assert_eq!(
        sum["version"], FC_CLIENT_VERSION,
        "firecracker-python in {VENV_PYTHON} is not the pinned version: run scripts/setup.sh"
    );

    // Both VMMs were ours (the symlink), and both are gone.
    let pids: Vec<i64> = sum["vmm_pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{sum}");
    for pid in &pids {
        assert_ne!(
            std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
            Some(vmm_bin()),
            "VMM {pid} still runs"
        );
    }

    // The states the library read, and raw HTTP beside it, in the order of the flow.
    let states: Vec<(String, String)> = sum["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["library"], s["raw"], "{s}");
            (
                s["vm"].as_str().unwrap().to_string(),
                s["library"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let seq: Vec<&str> = states.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        seq,
        ["Running", "Paused", "Running", "Running", "Running"],
        "{states:?}"
    );
    assert_ne!(states[0].0, states[4].0, "the restore ran in a second VMM");

    // The snapshots are on disk: state files and memory files of the guest's size.
    for tag in ["lib", "full"] {
        let s = &sum["snapshots"][tag];
        let state = PathBuf::from(s["state"].as_str().unwrap());
        let mem = PathBuf::from(s["mem"].as_str().unwrap());
        assert!(
            std::fs::metadata(&state).unwrap().len() > 0,
            "{}",
            state.display()
        );
        assert_eq!(std::fs::metadata(&mem).unwrap().len(), MEM_MIB << 20);
    }

    // The guests ran: both consoles (the VMMs' stdout, kept by the library) hold the ticker's
    // dots and nothing else.
    for (vm, _) in [&states[0], &states[4]] {
        let console = std::fs::read_to_string(data.join(vm).join("firecracker.log")).unwrap();
        assert!(console.len() > 10, "{vm}: {console:?}");
        assert!(
            console.bytes().all(|b| b == b'.'),
            "{vm}: the console holds more than the ticker's dots: {:?}",
            &console[..console.len().min(500)]
        );
    }
}
