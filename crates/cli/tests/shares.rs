//! Shared folders on a real guest: `shares:` mounts a host directory read-only through
//! virtio-9p; the guest reads it (and what the host adds later), cannot write it; mistakes are
//! caught before anything starts; a lab with shares is not checkpointed (QEMU cannot), and says
//! so.

mod common;

use common::{lab_cmd, Down, Env};
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_shared_directory_is_read_only_in_the_guest_and_live() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(data.join("sub/deep.txt"), "deep\n").unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(
        &lab,
        "name: shr\ndefaults: { image: tiny, memory: 96M }\nnodes:\n  n:\n    vms:\n      v:\n        shares: { /srv/data: ./data }\n        ready: [{ exec: \"test -f /srv/data/hello.txt\" }]\n",
    )
    .unwrap();
    let run = |args: &[&str]| lab_cmd(&env, state.path(), args);
    let o = run(&["up", lab.to_str().unwrap()]);
    let _d = Down {
        env: &env,
        state: state.path(),
        lab: "shr",
    };
    assert!(o.status.success(), "{}", text(&o));
    let exec = |cmd: &str| run(&["exec", "shr/n.v", "--", "sh", "-c", cmd]);
    let o = exec("cat /srv/data/hello.txt /srv/data/sub/deep.txt");
    assert_eq!(text(&o), "hello from the host\ndeep\n");
    let o = exec("grep ' /srv/data ' /proc/mounts");
    assert!(
        text(&o).contains("kshare0 /srv/data 9p ro,"),
        "{}",
        text(&o)
    );
    // Read-only in the guest: nothing reaches the host.
    let o = exec("echo x > /srv/data/new.txt");
    assert!(
        !o.status.success(),
        "the guest wrote into a read-only share"
    );
    assert!(
        text(&o).to_lowercase().contains("read-only"),
        "{}",
        text(&o)
    );
    assert!(!data.join("new.txt").exists());
    // What the host adds is seen at once (no copy).
    std::fs::write(data.join("later.txt"), "added after up\n").unwrap();
    let o = exec("cat /srv/data/later.txt");
    assert_eq!(text(&o), "added after up\n");
    // QEMU cannot checkpoint a 9p export: refused with the reason, the lab untouched.
    let o = run(&["checkpoint", "shr", "c1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("has shared directories"), "{}", text(&o));
    let o = exec("cat /srv/data/hello.txt");
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["down", "shr"]);
    assert!(o.status.success(), "{}", text(&o));
    env.assert_clean();
}

#[test]
fn share_mistakes_are_caught_before_anything_starts() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.path().join("afile"), "x").unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(
        &lab,
        "name: shbad\nnodes:\n  n:\n    vms:\n      v:\n        shares:\n          /a: ./private\n          /b: ./afile\n          /c: ./missing\n          /proc: ./private\n          /d: { src: ./private, readonly: false }\n",
    )
    .unwrap();
    let o = lab_cmd(&env, state.path(), &["lab", "check", lab.to_str().unwrap()]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    for (line, needle) in [
        (7, "is not readable by others (mode 0700)"),
        (8, "afile is not a directory"),
        (9, "missing: No such file or directory"),
        (10, "share target '/proc' is not a guest directory"),
        (11, "writable shares are not supported"),
    ] {
        assert!(
            t.lines()
                .any(|l| l.contains(&format!("lab.yaml:{line}:")) && l.contains(needle)),
            "line {line}: '{needle}' in:\n{t}"
        );
    }
    assert!(t.contains("chmod o+rx"), "{t}");
}
