//! The balloon over the API of a real `kobako-vmm` process (seccomp on), before and after boot
//! of a tiny guest (which has no balloon driver: the device's side of the API is what is
//! tested here; a Linux guest inflates and deflates it in `linux_pvm.rs`, and the device's
//! queues are tested with a virtio driver in `devices::virtio::balloon`).

mod common;

use common::*;
use serde_json::{json, Value};

fn fault(r: (u16, String), needle: &str) {
    assert_eq!(r.0, 400, "{}", r.1);
    let v: Value = serde_json::from_str(&r.1).unwrap();
    let m = v["fault_message"].as_str().unwrap();
    assert!(m.contains(needle), "{m:?} lacks {needle:?}");
}

fn get(sock: &std::path::Path, path: &str) -> Value {
    let (st, body) = http(sock, "GET", path, None);
    assert_eq!(st, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn balloon_configuration_and_live_updates() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let sock = dir.path().join("api.sock");
    let _vmm = spawn_api(&sock, &["--id", "balloon"]);

    fault(
        http(&sock, "GET", "/balloon", None),
        "No balloon device is configured",
    );
    fault(
        http(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#)),
        "PUT /balloon before InstanceStart",
    );
    let mc = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;
    assert_eq!(http(&sock, "PUT", "/machine-config", Some(mc)).0, 204);
    fault(
        http(
            &sock,
            "PUT",
            "/balloon",
            Some(r#"{"amount_mib": 65, "deflate_on_oom": false}"#),
        ),
        "larger than the guest's memory (64 MiB)",
    );
    fault(
        http(&sock, "PUT", "/balloon", Some(r#"{"amount_mib": 1}"#)),
        "deflate_on_oom",
    );
    fault(
        http(
            &sock,
            "PUT",
            "/balloon",
            Some(r#"{"amount_mib": 1, "deflate_on_oom": true, "bogus": 1}"#),
        ),
        "unknown field",
    );
    let b = json!({"amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 1,
                   "free_page_hinting": true, "free_page_reporting": true});
    assert_eq!(http(&sock, "PUT", "/balloon", Some(&b.to_string())).0, 204);
    assert_eq!(get(&sock, "/balloon"), b);
    assert_eq!(get(&sock, "/vm/config")["balloon"], b);
    assert_eq!(
        http(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 4}"#)).0,
        204
    );
    assert_eq!(get(&sock, "/balloon")["amount_mib"], 4);
    fault(
        http(&sock, "GET", "/balloon/statistics", None),
        "after InstanceStart",
    );
    fault(
        http(&sock, "PATCH", "/balloon/hinting/start", None),
        "after InstanceStart",
    );

    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(http(&sock, "PUT", "/boot-source", Some(&boot)).0, 204);
    instance_start(&sock);
    // After boot: PUT is refused, PATCH reaches the device (the guest would see the target).
    fault(
        http(&sock, "PUT", "/balloon", Some(&b.to_string())),
        "not supported after starting the microVM: PUT /balloon",
    );
    assert_eq!(
        http(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 16}"#)).0,
        204
    );
    fault(
        http(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 100}"#)),
        "larger than the guest's memory",
    );
    assert_eq!(get(&sock, "/balloon")["amount_mib"], 16);
    let s = get(&sock, "/balloon/statistics");
    assert_eq!(
        (&s["target_pages"], &s["target_mib"], &s["actual_pages"]),
        (&json!(4096), &json!(16), &json!(0))
    );
    fault(
        http(
            &sock,
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 0}"#),
        ),
        "cannot be turned on or off after boot",
    );
    assert_eq!(
        http(
            &sock,
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 5}"#)
        )
        .0,
        204
    );
    assert_eq!(get(&sock, "/balloon")["stats_polling_interval_s"], 5);
    // Free page hinting: a run starts with a new command id, stops with DONE.
    assert_eq!(
        get(&sock, "/balloon/hinting/status"),
        json!({"host_cmd": 0})
    );
    assert_eq!(
        http(
            &sock,
            "PATCH",
            "/balloon/hinting/start",
            Some(r#"{"acknowledge_on_stop": true}"#)
        )
        .0,
        204
    );
    assert_eq!(
        get(&sock, "/balloon/hinting/status"),
        json!({"host_cmd": 2})
    );
    assert_eq!(http(&sock, "PATCH", "/balloon/hinting/stop", None).0, 204);
    assert_eq!(
        get(&sock, "/balloon/hinting/status"),
        json!({"host_cmd": 1})
    );
    fault(
        http(&sock, "GET", "/balloon/hinting/nope", None),
        "Invalid request method and/or path",
    );
    assert_eq!(get(&sock, "/")["state"], "Running");
}

#[test]
fn statistics_and_hinting_must_be_enabled_before_boot() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "vmlinux", &elf(guests::TICKER, false));
    let cfg = write(
        dir.path(),
        "vm.json",
        json!({
            "boot-source": {"kernel_image_path": kernel},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
            "balloon": {"amount_mib": 0, "deflate_on_oom": false},
        })
        .to_string()
        .as_bytes(),
    );
    let sock = dir.path().join("api.sock");
    let _vmm = spawn_api(&sock, &["--config-file", cfg.to_str().unwrap()]);
    assert!(wait_for(10, || http(&sock, "GET", "/", None)
        .1
        .contains("Running")));
    fault(
        http(&sock, "GET", "/balloon/statistics", None),
        "statistics are not enabled",
    );
    fault(
        http(
            &sock,
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 1}"#),
        ),
        "statistics are not enabled",
    );
    fault(
        http(&sock, "PATCH", "/balloon/hinting/start", None),
        "hinting is not enabled",
    );
    fault(
        http(&sock, "GET", "/balloon/hinting/status", None),
        "hinting is not enabled",
    );
    assert_eq!(get(&sock, "/balloon")["amount_mib"], 0);
}
