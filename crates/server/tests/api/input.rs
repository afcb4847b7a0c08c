//! Bad input is answered with a 4xx and an error body that says what is wrong; every
//! documented operation is routed; OIDC endpoints without OIDC configured say how to turn it on.

use serde_json::json;

use crate::app::{yaml, App, Body};

/// Malformed JSON, unknown fields: 4xx with the error body.
#[tokio::test]
async fn malformed_json_is_400_and_an_unknown_field_422_naming_it() {
    let app = App::new();
    let t = app.admin_token().await;
    let (s, v) = app
        .call(
            "POST",
            "/users",
            Some(&t),
            Some(Body::Raw("application/json", b"{".to_vec())),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
    let (s, v) = app
        .call(
            "POST",
            "/users",
            Some(&t),
            Some(Body::Json(
                json!({"name": "x1", "role": "member", "colour": "red"}),
            )),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
}

/// A lab file with a mistake: 422 with file, line and column.
#[tokio::test]
async fn a_lab_file_with_a_mistake_is_422_with_its_line() {
    let app = App::new();
    let t = app.admin_token().await;
    let dana = app.user(&t, "dana", "member").await;
    let (s, v) = app
        .call(
            "POST",
            "/labs",
            Some(&dana),
            yaml(b"name: srvbad\nnodes:\n  n:\n    vms:\n      a: {imgae: tiny}\n"),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let d = &v["error"]["details"][0];
    assert_eq!(d["pos"]["line"], 5, "{v}");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("did you mean 'image'"),
        "{v}"
    );
}

#[tokio::test]
async fn every_openapi_operation_is_routed() {
    let app = App::new();
    let (s, doc) = app.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut n = 0;
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            let concrete = path
                .replace("{name}", "srvnone")
                .replace("{link}", "l")
                .replace("{id}", "x")
                .replace("/api/v1", "");
            let (s, v) = app
                .call(&method.to_uppercase(), &concrete, None, None)
                .await;
            // Routed: whatever the handler says (401 without a token, 4xx for a missing body),
            // never the fallback for unknown routes or methods.
            assert!(
                v["error"]["code"] != "route_not_found"
                    && v["error"]["code"] != "method_not_allowed",
                "{method} {path}: {s} {v}"
            );
            n += 1;
        }
    }
    assert!(n >= 30, "only {n} operations documented");
    for must in [
        "/api/v1/labs",
        "/api/v1/labs/{name}/up",
        "/api/v1/vms/{name}/exec",
        "/api/v1/vms/{name}/console",
        "/api/v1/events",
        "/api/v1/auth/login",
        "/api/v1/users",
        "/api/v1/tokens",
        "/api/v1/operations/{id}",
        "/api/v1/labs/{name}/scenarios",
    ] {
        assert!(
            paths.contains_key(must),
            "{must} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn without_oidc_the_endpoints_say_how_to_turn_it_on() {
    let app = App::new();
    let (s, info) = app.call("GET", "/auth/oidc", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(info["enabled"], false);
    let (s, e) = app.call("GET", "/auth/oidc/login", None, None).await;
    let e = match e {
        serde_json::Value::String(text) => text,
        v => v.to_string(),
    };
    assert_eq!(s, 404, "{e}");
    assert!(e.contains("--oidc-issuer"), "{e}");
}
