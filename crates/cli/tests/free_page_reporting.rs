//! The density lever for idle lab VMs: every lab VM on QEMU has a virtio-balloon with free page
//! reporting, so memory the guest touched and freed goes back to the host within seconds. A
//! real guest writes 60 MB into its tmpfs and deletes it; its QEMU process's RSS must fall by
//! at least 30 MiB within 20 s, and must not with `KOBAKO_BALLOON=0` (the same lab, the lever
//! off). Cold boots (`KOBAKO_WARM=0`): a warm clone's RAM is a shared file mapping, another
//! lever (issue 19).

mod common;

use common::{Down, Env};
use std::time::{Duration, Instant};

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Up a one-VM lab, churn 60 MB in the guest, and return (RSS right after, lowest RSS within
/// 30 s) of the VM's QEMU process, in KiB.
fn churn(env: &Env, state: &std::path::Path, lab: &str, balloon: bool) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lab.yaml");
    std::fs::write(
        &file,
        format!("name: {lab}\ndefaults: {{ image: tiny, memory: 256M }}\nnodes:\n  n:\n    vms:\n      v: {{}}\n"),
    )
    .unwrap();
    let cmd = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env("KOBAKO_STATE", state).env("KOBAKO_WARM", "0");
        if !balloon {
            c.env("KOBAKO_BALLOON", "0");
        }
        c.output().unwrap()
    };
    let o = cmd(&["up", file.to_str().unwrap()]);
    let _d = Down { env, state, lab };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("qemu-system-x86_64 -name kobako-{lab}.n.v,")])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !pid.is_empty() && !pid.contains('\n'),
        "one QEMU process: {pid:?}"
    );
    let o = cmd(&[
        "exec",
        &format!("{lab}/n.v"),
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/tmp/churn bs=1M count=60 2>/dev/null && rm /tmp/churn",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = rss_kib(&pid);
    let mut low = after;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) && after.saturating_sub(low) < 30 << 10 {
        std::thread::sleep(Duration::from_millis(500));
        low = low.min(rss_kib(&pid));
    }
    let o = cmd(&["down", lab]);
    assert!(o.status.success());
    (after, low)
}

#[test]
fn freed_guest_memory_goes_back_to_the_host() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let (on_after, on_low) = churn(&env, state.path(), "fpron", true);
    let (off_after, off_low) = churn(&env, state.path(), "fproff", false);
    println!(
        "free page reporting: QEMU RSS after 60 MB freed in the guest {} -> {} MiB within 20 s (lever off: {} -> {} MiB)",
        on_after >> 10,
        on_low >> 10,
        off_after >> 10,
        off_low >> 10
    );
    assert!(
        on_after.saturating_sub(on_low) >= 30 << 10,
        "RSS fell only {} KiB with free page reporting",
        on_after.saturating_sub(on_low)
    );
    assert!(
        off_after.saturating_sub(off_low) < 10 << 10,
        "RSS fell {} KiB without the balloon: the measurement does not show the lever",
        off_after.saturating_sub(off_low)
    );
    env.assert_clean();
}
