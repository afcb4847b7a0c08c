//! `kobako version` (what this build is and what it drives on this host) and
//! `kobako completion SHELL` (shell completions generated from the command definitions).

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

/// The Firecracker API description `kobako vmm` follows (`info.version` of the copy the
/// conformance work reads).
pub const FIRECRACKER_API: &str = "1.17.0-dev";

#[derive(Serialize)]
struct Version {
    kobako: &'static str,
    /// The REST API's base path; its OpenAPI document is served at `<api>/openapi.json`.
    api: &'static str,
    vmm: Vmm,
    /// Firecracker on PATH, for `--runtime firecracker` (None: not installed).
    firecracker: Option<Firecracker>,
    qemu: Option<Qemu>,
    accel: String,
    accel_reason: String,
}

#[derive(Serialize)]
struct Vmm {
    version: &'static str,
    firecracker_api: &'static str,
    /// The slim VMM executable beside this one, if installed; else `kobako vmm` runs it.
    path: Option<PathBuf>,
}

#[derive(Serialize)]
struct Firecracker {
    path: PathBuf,
    /// The first line of `firecracker --version`.
    version: String,
}

#[derive(Serialize)]
struct Qemu {
    path: PathBuf,
    version: String,
    /// Whether it maps a snapshot's RAM file copy-on-write (warm clones share memory).
    maps_memory_files: bool,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// `kobako version [--json]`.
pub fn version(json: bool) -> Result<i32> {
    let accel = kobako_runtime::host::detect_accel();
    let slim = std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name(kobako_runtime::vmm::SLIM_VMM))
        .filter(|p| p.is_file());
    let qemu = on_path("qemu-system-x86_64").map(|path| Qemu {
        version: kobako_runtime::snapshot::qemu_version(&path),
        maps_memory_files: kobako_runtime::qemu::maps_memory_files(&path),
        path,
    });
    let firecracker = kobako_runtime::vmm::find_firecracker(std::env::var_os("PATH").as_deref())
        .ok()
        .map(|path| Firecracker {
            version: std::process::Command::new(&path)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .map(|l| l.trim().to_string())
                })
                .unwrap_or_default(),
            path,
        });
    let v = Version {
        kobako: env!("CARGO_PKG_VERSION"),
        api: "/api/v1",
        vmm: Vmm {
            version: env!("CARGO_PKG_VERSION"),
            firecracker_api: FIRECRACKER_API,
            path: slim,
        },
        firecracker,
        qemu,
        accel: accel.accel.to_string(),
        accel_reason: accel.reason,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("kobako {}", v.kobako);
    println!(
        "  REST API  {} (OpenAPI document at {}/openapi.json)",
        v.api, v.api
    );
    println!(
        "  VMM       kobako-vmm {}, Firecracker API {} ({})",
        v.vmm.version,
        v.vmm.firecracker_api,
        match &v.vmm.path {
            Some(p) => p.display().to_string(),
            None => "no slim binary beside this one: `kobako vmm` runs it".into(),
        }
    );
    match &v.firecracker {
        Some(f) => println!(
            "  Firecracker {} ({}; --runtime firecracker)",
            f.version,
            f.path.display()
        ),
        None => println!("  Firecracker not on PATH (--runtime firecracker needs it)"),
    }
    match &v.qemu {
        Some(q) => println!(
            "  QEMU      {} ({}){}",
            q.version,
            q.path.display(),
            if q.maps_memory_files {
                ""
            } else {
                "; cannot map a RAM file copy-on-write (QEMU < 8.2): warm clones copy memory"
            }
        ),
        None => println!("  QEMU      not found (scripts/setup.sh installs it)"),
    }
    println!("  accel     {} ({})", v.accel, v.accel_reason);
    Ok(0)
}

/// `kobako completion SHELL`: the completion script on stdout (generated into memory first: a
/// reader that goes away early, `| head`, is not an error).
pub fn completion(shell: clap_complete::Shell, cmd: &mut clap::Command) -> Result<i32> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, "kobako", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}
