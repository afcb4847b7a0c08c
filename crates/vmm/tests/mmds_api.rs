//! The MMDS over the API of a real `kobako-vmm` process (seccomp on): `--metadata` and
//! `--mmds-size-limit`, `PUT`/`PATCH`/`GET /mmds`, `PUT /mmds/config` and its checks, and the
//! configuration in `GET /vm/config`. What the guest sees (ARP, TCP, HTTP, V2 tokens) is tested
//! by the unit tests of `kobako_vmm::mmds` with real frames, and from a real Linux guest by
//! `linux_pvm.rs` (`KOBAKO-MMDS-*`).

mod common;

use common::*;
use serde_json::{json, Value};

fn get_json(sock: &std::path::Path, path: &str) -> Value {
    let (st, body) = http(sock, "GET", path, None);
    assert_eq!(st, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn fault(r: (u16, String), needle: &str) {
    assert_eq!(r.0, 400, "{}", r.1);
    let v: Value = serde_json::from_str(&r.1).unwrap();
    let m = v["fault_message"].as_str().unwrap();
    assert!(m.contains(needle), "{m:?} lacks {needle:?}");
}

#[test]
fn mmds_data_store_and_config_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let meta = write(
        dir.path(),
        "meta.json",
        br#"{"latest": {"meta-data": {"ami-id": "ami-1"}}}"#,
    );
    let _vmm = spawn_api(
        &sock,
        &[
            "--mmds-size-limit",
            "200",
            "--metadata",
            meta.to_str().unwrap(),
        ],
    );
    let start = json!({"latest": {"meta-data": {"ami-id": "ami-1"}}});
    assert_eq!(get_json(&sock, "/mmds"), start);

    // Refused changes leave the store as it was.
    fault(
        http(&sock, "PUT", "/mmds", Some("[1, 2]")),
        "must be a JSON object",
    );
    fault(
        http(&sock, "PATCH", "/mmds", Some("\"x\"")),
        "must be a JSON object",
    );
    let big = json!({"k": "v".repeat(300)}).to_string();
    fault(
        http(&sock, "PUT", "/mmds", Some(&big)),
        "over its limit of 200 bytes",
    );
    fault(
        http(&sock, "PATCH", "/mmds", Some(&big)),
        "--mmds-size-limit",
    );
    fault(http(&sock, "PUT", "/mmds", Some("{")), "deserializing");
    assert_eq!(get_json(&sock, "/mmds"), start);

    // PATCH is a JSON merge patch; PUT replaces.
    let (st, b) = http(
        &sock,
        "PATCH",
        "/mmds",
        Some(r#"{"latest": {"meta-data": {"ami-id": null, "hostname": "h1"}}, "user-data": "x"}"#),
    );
    assert_eq!(st, 204, "{b}");
    assert_eq!(
        get_json(&sock, "/mmds"),
        json!({"latest": {"meta-data": {"hostname": "h1"}}, "user-data": "x"})
    );
    assert_eq!(http(&sock, "PUT", "/mmds", Some(r#"{"a": "b"}"#)).0, 204);
    assert_eq!(get_json(&sock, "/mmds"), json!({"a": "b"}));

    // The configuration names configured interfaces and a link-local address.
    fault(
        http(
            &sock,
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces": []}"#),
        ),
        "at least one network interface",
    );
    fault(
        http(
            &sock,
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces": ["eth0"]}"#),
        ),
        "PUT /network-interfaces/{iface_id} first",
    );
    fault(
        http(
            &sock,
            "PUT",
            "/mmds/config",
            Some(r#"{"version": "V3", "network_interfaces": ["eth0"]}"#),
        ),
        "unknown variant",
    );
    let nic = r#"{"iface_id": "eth0", "host_dev_name": "kbmmds0"}"#;
    assert_eq!(
        http(&sock, "PUT", "/network-interfaces/eth0", Some(nic)).0,
        204
    );
    fault(
        http(
            &sock,
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#),
        ),
        "not a link-local address",
    );
    let before = get_json(&sock, "/vm/config");
    assert!(before.get("mmds-config").is_none(), "{before}");
    let cfg = json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": true});
    assert_eq!(
        http(&sock, "PUT", "/mmds/config", Some(&cfg.to_string())).0,
        204
    );
    assert_eq!(get_json(&sock, "/vm/config")["mmds-config"], cfg);
    // Methods the paths do not take.
    fault(
        http(&sock, "DELETE", "/mmds", None),
        "takes GET, PUT or PATCH",
    );
    fault(http(&sock, "GET", "/mmds/config", None), "takes PUT");
}

#[test]
fn a_config_file_with_mmds_config_is_accepted_and_bad_metadata_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A bad --metadata file ends the process with the configuration exit code, naming it.
    let bad = write(d, "bad.json", b"[1]");
    let out = std::process::Command::new(vmm_bin())
        .args([
            "--api-sock",
            d.join("x.sock").to_str().unwrap(),
            "--metadata",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(kobako_vmm::EXIT_BAD_CONFIGURATION));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid --metadata") && err.contains("JSON object"),
        "{err}"
    );
    // A config-file's mmds-config naming a missing interface is refused with the reason.
    let cfg = write(
        d,
        "vm.json",
        br#"{"mmds-config": {"network_interfaces": ["eth9"]}}"#,
    );
    let out = std::process::Command::new(vmm_bin())
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(kobako_vmm::EXIT_BAD_CONFIGURATION));
    assert!(String::from_utf8_lossy(&out.stderr).contains("eth9"));
}
