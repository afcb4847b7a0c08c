//! What each role may do: viewers read, members own their labs (and cannot see other
//! members'), admins manage users; quotas; server files in lab files; the audit log.

use serde_json::json;

use crate::app::{tok, yaml, App, Body};

fn lab_yaml(name: &str, vms: usize, memory: &str) -> Vec<u8> {
    let mut s = format!("name: {name}\nnodes:\n  n:\n    vms:\n");
    for i in 0..vms {
        s += &format!("      v{i}: {{image: tiny, memory: {memory}}}\n");
    }
    s.into_bytes()
}

/// Users are for admins; labs: the viewer cannot create; the member can, and another member
/// cannot touch it; the audit log names who changed what.
#[tokio::test]
async fn viewers_read_members_own_their_labs_and_the_audit_log_names_them() {
    let app = App::new();
    let t = app.admin_token().await;
    let (s, v) = app
        .call(
            "POST",
            "/users",
            Some(&t),
            Some(Body::Json(
                json!({"name": "dana", "password": "dana-password", "role": "member"}),
            )),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = app
        .call(
            "POST",
            "/users",
            Some(&t),
            Some(Body::Json(
                json!({"name": "vic", "password": "vic-password", "role": "viewer"}),
            )),
        )
        .await;
    assert_eq!(s, 201);
    let dana = tok(&app.login("dana", "dana-password").await);
    let vic = tok(&app.login("vic", "vic-password").await);
    assert_eq!(app.call("GET", "/users", Some(&dana), None).await.0, 403);

    let (s, _) = app
        .call(
            "POST",
            "/labs",
            Some(&vic),
            yaml(&lab_yaml("srvv", 1, "128M")),
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = app
        .call(
            "POST",
            "/labs",
            Some(&dana),
            yaml(&lab_yaml("srvd", 1, "128M")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = app
        .call(
            "POST",
            "/labs",
            Some(&dana),
            yaml(&lab_yaml("srvd", 1, "128M")),
        )
        .await;
    assert_eq!(s, 409);
    let eve = app.user(&t, "eve", "member").await;
    // Another member's lab is not there for eve (404, no owner named).
    assert_eq!(app.call("GET", "/labs/srvd", Some(&eve), None).await.0, 404);
    assert_eq!(
        app.call("POST", "/labs/srvd/up", Some(&eve), None).await.0,
        404
    );
    assert_eq!(
        app.call("DELETE", "/labs/srvd", Some(&eve), None).await.0,
        404
    );
    assert_eq!(
        app.call("GET", "/labs", Some(&eve), None).await.1,
        json!([])
    );
    assert_eq!(app.call("GET", "/labs/srvd", Some(&vic), None).await.0, 200);
    assert_eq!(
        app.call("POST", "/labs/srvd/up", Some(&vic), None).await.0,
        403
    );
    assert_eq!(
        app.call("DELETE", "/labs/srvd", Some(&vic), None).await.0,
        403
    );
    // Deleting a lab that is down.
    assert_eq!(
        app.call("DELETE", "/labs/srvd", Some(&dana), None).await.0,
        204
    );
    assert_eq!(
        app.call("GET", "/labs/srvd", Some(&dana), None).await.0,
        404
    );

    // The audit log names who changed what.
    let (s, v) = app.call("GET", "/audit?limit=200", Some(&t), None).await;
    assert_eq!(s, 200);
    let entries = v.as_array().unwrap();
    assert!(entries.iter().any(|e| e["user"] == "dana"
        && e["method"] == "DELETE"
        && e["path"] == "/api/v1/labs/srvd"
        && e["status"] == 204));
    assert!(entries
        .iter()
        .any(|e| e["user"] == "vic" && e["method"] == "POST" && e["status"] == 403));
}

/// Quota: a member who may run one VM is refused a two-VM lab with a clear message.
#[tokio::test]
async fn a_lab_over_the_members_quota_is_refused_with_the_count() {
    let app = App::new();
    let t = app.admin_token().await;
    let (s, v) = app
        .call(
            "POST",
            "/users",
            Some(&t),
            Some(Body::Json(
                json!({"name": "eve", "password": "eve-password", "role": "member", "max_vms": 1}),
            )),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let eve = tok(&app.login("eve", "eve-password").await);
    let (s, v) = app
        .call(
            "POST",
            "/labs",
            Some(&eve),
            yaml(&lab_yaml("srve", 2, "128M")),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs 2 VMs"),
        "{v}"
    );
}

/// Files from the server's filesystem are for admins.
#[tokio::test]
async fn server_files_in_a_members_lab_file_are_refused() {
    let app = App::new();
    let t = app.admin_token().await;
    let dana = app.user(&t, "dana", "member").await;
    let (s, v) = app
        .call(
            "POST",
            "/labs",
            Some(&dana),
            yaml(b"name: srvf\nnodes:\n  n:\n    vms:\n      a:\n        files:\n          /tmp/x: {src: /etc/shadow}\n"),
        )
        .await;
    assert_eq!(s, 403, "{v}");
}

/// Templates and images are there for viewers.
#[tokio::test]
async fn viewers_list_templates_and_images() {
    let app = App::new();
    let t = app.admin_token().await;
    let vic = app.user(&t, "vic", "viewer").await;
    let (s, v) = app.call("GET", "/templates", Some(&vic), None).await;
    assert_eq!(s, 200);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "web-stack"));
    assert_eq!(app.call("GET", "/images", Some(&vic), None).await.0, 200);
}

/// A member probing another member's lab, its VMs, checkpoints and captures, and another
/// user's API token: every answer is the 404 of a missing object, names no owner, and
/// changes nothing. A viewer who sees the lab gets 403 on changes, without the owner's name
/// (issue 17 item 5).
#[tokio::test]
async fn member_probing_other_tenants_objects_gets_404_without_owner_names() {
    let app = App::new();
    let admin = app.admin_token().await;
    app.add_user(&admin, "alice", "member").await;
    app.add_user(&admin, "mallory", "member").await;
    app.add_user(&admin, "vera", "viewer").await;
    let alice = tok(&app.login("alice", "alice-password").await);
    let mallory = tok(&app.login("mallory", "mallory-password").await);
    let vera = tok(&app.login("vera", "vera-password").await);
    let (s, v) = app
        .call(
            "POST",
            "/labs",
            Some(&alice),
            Some(Body::Raw(
                "application/yaml",
                b"name: alab\nnodes:\n  n:\n    vms:\n      v: {image: tiny, memory: 128M}\n"
                    .to_vec(),
            )),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app
        .call(
            "POST",
            "/tokens",
            Some(&alice),
            Some(Body::Json(json!({"name": "ci"}))),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let alice_token_id = v["token"]["id"].as_str().unwrap().to_string();
    let alice_script = v["secret"].as_str().unwrap().to_string();

    let probes: [(&str, String); 9] = [
        ("GET", "/labs/alab".into()),
        ("POST", "/labs/alab/up".into()),
        ("POST", "/labs/alab/down".into()),
        ("DELETE", "/labs/alab".into()),
        ("GET", "/labs/alab/checkpoints".into()),
        ("GET", "/labs/alab/captures".into()),
        ("GET", "/vms/alab.n.v".into()),
        ("POST", "/vms/alab.n.v/stop".into()),
        ("DELETE", format!("/tokens/{alice_token_id}")),
    ];
    for (m, p) in &probes {
        let (s, v) = app.call(m, p, Some(&mallory), None).await;
        assert_eq!(s, 404, "{m} {p}: {v}");
        assert!(
            !v.to_string().contains("alice"),
            "{m} {p} names the owner: {v}"
        );
        // The same answer as for a name that does not exist.
        let q = p
            .replace("alab", "nolab")
            .replace(&alice_token_id, "notoken");
        let (s2, v2) = app.call(m, &q, Some(&mallory), None).await;
        assert_eq!(s2, 404, "{m} {q}: {v2}");
        assert_eq!(v["error"]["code"], v2["error"]["code"]);
    }
    // Nothing changed: the lab and alice's token are there.
    assert_eq!(
        app.call("GET", "/labs/alab", Some(&alice), None).await.0,
        200
    );
    assert_eq!(
        app.call("GET", "/auth/me", Some(&alice_script), None)
            .await
            .0,
        200
    );
    assert_eq!(
        app.call("GET", "/labs", Some(&mallory), None).await.1,
        json!([])
    );

    // The viewer sees it, may not change it, and is not told whose it is.
    assert_eq!(
        app.call("GET", "/labs/alab", Some(&vera), None).await.0,
        200
    );
    for (m, p) in [("DELETE", "/labs/alab"), ("POST", "/labs/alab/up")] {
        let (s, v) = app.call(m, p, Some(&vera), None).await;
        assert_eq!(s, 403, "{m} {p}: {v}");
        assert!(!v.to_string().contains("alice"), "{m} {p}: {v}");
    }
}
