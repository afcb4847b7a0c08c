//! `files:` sources that are host directories: every regular file under the guest path,
//! executables keeping their mode; bounded; a directory from a shipped template is refused.

use kobako_lab::spec::{load_file, FileSource, HostLimits};
use std::os::unix::fs::PermissionsExt;

fn host() -> HostLimits {
    HostLimits {
        cpus: 4,
        memory: kobako_lab::spec::MemMib(8192),
    }
}

#[test]
fn a_directory_source_copies_its_files() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("tools/sub")).unwrap();
    std::fs::write(d.path().join("tools/a.conf"), "a\n").unwrap();
    std::fs::write(d.path().join("tools/sub/run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        d.path().join("tools/sub/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(
        d.path().join("lab.yaml"),
        "name: fdir\nnodes:\n  n:\n    vms:\n      v:\n        files:\n          /opt/tools/: ./tools\n          /etc/one: { src: tools/a.conf, mode: \"0600\" }\n",
    )
    .unwrap();
    let labs = load_file(&d.path().join("lab.yaml"), &host()).unwrap_or_else(|e| panic!("{e}"));
    let vm = labs[0].vms().next().unwrap();
    let got: Vec<(String, u32, bool)> = vm
        .files
        .iter()
        .map(|f| {
            (
                f.dst.clone(),
                f.mode,
                matches!(&f.source, FileSource::Host(p) if p.is_file()),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/opt/tools/a.conf".to_string(), 0o644, true),
            ("/opt/tools/sub/run.sh".to_string(), 0o750, true),
            ("/etc/one".to_string(), 0o600, true),
        ]
    );
}

#[test]
fn a_directory_of_too_many_files_is_an_error_at_its_line() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("big")).unwrap();
    for i in 0..=kobako_lab::spec::hostdir::MAX_FILES {
        std::fs::write(d.path().join(format!("big/{i}")), "x").unwrap();
    }
    std::fs::write(
        d.path().join("lab.yaml"),
        "name: fbig\nnodes:\n  n:\n    vms:\n      v:\n        files:\n          /opt/big: ./big\n",
    )
    .unwrap();
    let e = load_file(&d.path().join("lab.yaml"), &host())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":7:") && e.contains("holds more than 256 files"),
        "{e}"
    );
}
