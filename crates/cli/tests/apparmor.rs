//! Real-guest test of AppArmor inside lab VMs (`security: {apparmor: enforce|complain|off}`):
//! one lab of three `debian-web` VMs running redis-server (kobako's profile `kobako-redis`
//! confines it), whose configuration points its `dir` at /root, outside the profile:
//! - `enforce`: redis runs in its profile, `SAVE` fails and the kernel log (dmesg and the
//!   journal) holds the `apparmor="DENIED"` record of the write under /root;
//! - `complain`: `SAVE` works, the record says `apparmor="ALLOWED"`;
//! - `off`: the guest kernel has no AppArmor (nothing under /sys/kernel/security), `SAVE` works.
//!
//! `kobako inspect` shows each VM's mode. The image is the `debian-web` recipe (built by `up`
//! when missing or outdated). The lab is named `aa-*` and has its own `KOBAKO_RUN` and state.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

const LAB: &str = "aa-modes";

/// redis on the node network, its working directory /root (outside its profile).
const REDIS_CONF: &str = "bind 0.0.0.0\nport 6379\nprotected-mode no\ndaemonize no\nsave \"\"\nappendonly no\nlogfile \"\"\ndir /root\n";

fn lab_file() -> String {
    let mut s = format!("name: {LAB}\nnodes:\n  n:\n    vms:\n");
    for mode in ["enforce", "complain", "off"] {
        s.push_str(&format!(
            "      {mode}:
        image: debian-web
        memory: 256M
        security: {{ apparmor: {mode} }}
        files:
          /etc/kobako/redis.conf:
            content: {conf:?}
        run:
          - name: redis
            command: exec redis-server /etc/kobako/redis.conf
            restart: always
",
            conf = REDIS_CONF
        ));
    }
    s
}

struct Lab {
    env: Env,
    state: tempfile::TempDir,
}

impl Lab {
    fn cmd(&self, args: &[&str]) -> Output {
        self.env
            .cmd(args)
            .env("KOBAKO_STATE", self.state.path())
            .output()
            .unwrap()
    }

    /// `sh -c script` in VM `vm` of the lab.
    fn sh(&self, vm: &str, script: &str) -> Output {
        let target = format!("{LAB}/n.{vm}");
        self.cmd(&["exec", &target, "--", "sh", "-c", script])
    }

    /// `script` in `vm` until it succeeds; its stdout.
    fn sh_until_ok(&self, vm: &str, script: &str, within: Duration) -> String {
        until_ok(&format!("{vm}: {script:?}"), within, || self.sh(vm, script))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cmd(&["down", LAB]);
    }
}

/// The kernel log lines of AppArmor's audit records (`apparmor="DENIED"` ...; not the
/// command line's `apparmor=0`).
const AUDIT_LINES: &str = "dmesg | grep 'apparmor=\"' || true";

#[test]
fn apparmor_enforce_complain_off_on_real_guests() {
    let lab = Lab {
        env: Env::new(),
        state: tempfile::tempdir().unwrap(),
    };
    let file = lab.env.run.path().join("aa.yaml");
    std::fs::write(&file, lab_file()).unwrap();
    let t = Instant::now();
    let o = lab.cmd(&["up", file.to_str().unwrap()]);
    let out = ok(&o);
    eprintln!(
        "up in {:.1} s:\n{}{out}",
        t.elapsed().as_secs_f64(),
        text(&o.stderr)
    );
    assert!(out.contains("3 of 3 VMs ready"), "{out}");

    let inspect = ok(&lab.cmd(&["inspect", LAB]));
    for mode in ["enforce", "complain", "off"] {
        let line = inspect
            .lines()
            .find(|l| l.trim_start().starts_with(mode))
            .unwrap_or_else(|| panic!("no VM {mode} in:\n{inspect}"));
        assert!(line.contains(&format!("apparmor {mode}")), "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&lab.cmd(&["inspect", LAB, "--json"]))).unwrap();
    let vms = json["lab"]["nodes"][0]["vms"].as_array().unwrap();
    let modes: Vec<&str> = vms
        .iter()
        .map(|v| v["apparmor"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["enforce", "complain", "off"]);

    let within = Duration::from_secs(120);
    for vm in ["enforce", "complain", "off"] {
        lab.sh_until_ok(vm, "redis-cli ping | grep -q PONG", within);
    }

    // enforce: confined, the write under /root denied and logged.
    let cmdline = ok(&lab.sh("enforce", "cat /proc/cmdline"));
    assert!(cmdline.contains("apparmor=1"), "{cmdline}");
    let label = ok(&lab.sh("enforce", "cat /proc/$(pgrep -x redis-server)/attr/current"));
    assert_eq!(label.trim(), "kobako-redis (enforce)");
    let save = text(&lab.sh("enforce", "redis-cli SAVE").stdout);
    assert!(save.contains("ERR"), "SAVE under enforce: {save}");
    let log = lab.sh_until_ok(
        "enforce",
        "dmesg | grep 'apparmor=\"DENIED\"' | grep 'profile=\"kobako-redis\"' | grep '/root/'",
        Duration::from_secs(20),
    );
    eprintln!("enforce, kernel log:\n{log}");

    // complain: allowed, logged as such.
    let cmdline = ok(&lab.sh("complain", "cat /proc/cmdline"));
    assert!(cmdline.contains("apparmor.mode=complain"), "{cmdline}");
    let save = text(&lab.sh("complain", "redis-cli SAVE").stdout);
    assert!(save.contains("OK"), "SAVE under complain: {save}");
    ok(&lab.sh("complain", "test -s /root/dump.rdb"));
    let log = lab.sh_until_ok(
        "complain",
        "dmesg | grep 'apparmor=\"ALLOWED\"' | grep 'profile=\"kobako-redis\"' | grep '/root/'",
        Duration::from_secs(20),
    );
    eprintln!("complain, kernel log:\n{log}");
    let denied = ok(&lab.sh("complain", AUDIT_LINES));
    assert!(!denied.contains("apparmor=\"DENIED\""), "{denied}");

    // off: no AppArmor in the guest kernel.
    let cmdline = ok(&lab.sh("off", "cat /proc/cmdline"));
    assert!(cmdline.contains("apparmor=0"), "{cmdline}");
    let o = lab.sh("off", "ls /sys/kernel/security/apparmor");
    assert!(!o.status.success(), "apparmor in securityfs with `off`");
    let save = text(&lab.sh("off", "redis-cli SAVE").stdout);
    assert!(save.contains("OK"), "SAVE under off: {save}");
    let audit = ok(&lab.sh("off", AUDIT_LINES));
    assert!(audit.trim().is_empty(), "{audit}");

    ok(&lab.cmd(&["down", LAB]));
    lab.env.assert_clean();
}
