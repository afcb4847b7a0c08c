//! Authentication: tokens required and checked, refresh rotation, API tokens, password changes
//! that end sessions, a removed user's tokens, oversized logins.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::app::{message, tok, App, Body};

/// 401 without, with a garbage, a tampered and a wrong-key token.
#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let app = App::new();
    let admin = app.login("admin", &app.admin_password()).await;
    let (s, v) = app.call("GET", "/labs", None, None).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    assert_eq!(
        app.call("GET", "/labs", Some("nonsense"), None).await.0,
        401
    );
    let t = tok(&admin);
    let mut tampered = t.clone().into_bytes();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let (s, v) = app
        .call(
            "GET",
            "/labs",
            Some(&String::from_utf8(tampered).unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(app.call("GET", "/labs", Some(&t), None).await.0, 200);
}

/// Refresh rotates: the new pair works, the old refresh token does not.
#[tokio::test]
async fn refresh_rotates_the_token_pair() {
    let app = App::new();
    let admin = app.login("admin", &app.admin_password()).await;
    let (s, r2) = app
        .call(
            "POST",
            "/auth/refresh",
            None,
            Some(Body::Json(json!({"refresh_token": admin["refresh_token"]}))),
        )
        .await;
    assert_eq!(s, 200, "{r2}");
    assert_eq!(
        app.call("GET", "/auth/me", Some(&tok(&r2)), None).await.1["name"],
        "admin"
    );
    let (s, _) = app
        .call(
            "POST",
            "/auth/refresh",
            None,
            Some(Body::Json(json!({"refresh_token": admin["refresh_token"]}))),
        )
        .await;
    assert_eq!(s, 401);
}

/// An API token is its user until it is deleted.
#[tokio::test]
async fn an_api_token_acts_as_its_user_until_deleted() {
    let app = App::new();
    let t = app.admin_token().await;
    let dana = app.user(&t, "dana", "member").await;
    let (s, v) = app
        .call(
            "POST",
            "/tokens",
            Some(&dana),
            Some(Body::Json(json!({"name": "ci"}))),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let api_token = v["secret"].as_str().unwrap().to_string();
    assert_eq!(
        app.call("GET", "/auth/me", Some(&api_token), None).await.1["name"],
        "dana"
    );
    let id = v["token"]["id"].as_str().unwrap();
    assert_eq!(
        app.call("DELETE", &format!("/tokens/{id}"), Some(&dana), None)
            .await
            .0,
        204
    );
    assert_eq!(
        app.call("GET", "/auth/me", Some(&api_token), None).await.0,
        401
    );
}

async fn api_token(app: &App, token: &str) -> String {
    let (s, v) = app
        .call(
            "POST",
            "/tokens",
            Some(token),
            Some(Body::Json(json!({"name": "script"}))),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["secret"].as_str().unwrap().to_string()
}

async fn refresh_status(app: &App, refresh: &Value) -> u16 {
    app.call(
        "POST",
        "/auth/refresh",
        None,
        Some(Body::Json(json!({"refresh_token": refresh}))),
    )
    .await
    .0
}

/// A stolen access token used to change the victim's password (no current password), and
/// sessions that survive a password change (issue 17 item 7).
#[tokio::test]
async fn password_change_without_current_password_is_refused_and_ends_every_session() {
    let app = App::new();
    let admin = app.admin_token().await;
    app.add_user(&admin, "mia", "member").await;
    let pair = app.login("mia", "mia-password").await;
    let access = tok(&pair);
    let script = api_token(&app, &access).await;
    let patch = |body: Value| {
        let access = access.clone();
        let app = &app;
        async move {
            app.call("PATCH", "/users/mia", Some(&access), Some(Body::Json(body)))
                .await
        }
    };

    // Without the current password: 400 naming it; nothing changed.
    let (s, v) = patch(json!({"password": "stolen-session-pw"})).await;
    assert_eq!(s, 400, "{v}");
    assert!(message(&v).contains("current_password"), "{v}");
    // A wrong current password: 403; nothing changed.
    let (s, v) =
        patch(json!({"password": "stolen-session-pw", "current_password": "guess-guess"})).await;
    assert_eq!(s, 403, "{v}");
    assert!(message(&v).contains("current_password"), "{v}");
    assert_eq!(app.login_status("mia", "stolen-session-pw").await.0, 401);
    assert_eq!(
        app.call("GET", "/auth/me", Some(&access), None).await.0,
        200
    );
    assert_eq!(
        app.call("GET", "/auth/me", Some(&script), None).await.0,
        200
    );

    // The right one: changed, and every token of mia stops working.
    let (s, v) =
        patch(json!({"password": "mia-new-password", "current_password": "mia-password"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app.call("GET", "/auth/me", Some(&access), None).await;
    assert_eq!(s, 401, "old access token: {v}");
    assert!(message(&v).contains("log in again"), "{v}");
    assert_eq!(
        app.call("GET", "/auth/me", Some(&script), None).await.0,
        401
    );
    assert_eq!(refresh_status(&app, &pair["refresh_token"]).await, 401);
    assert_eq!(app.login_status("mia", "mia-password").await.0, 401);
    let pair = app.login("mia", "mia-new-password").await;
    let access = tok(&pair);

    // `keep_tokens: true` keeps them, when asked for explicitly.
    let (s, v) = app
        .call(
            "PATCH",
            "/users/mia",
            Some(&access),
            Some(Body::Json(json!({"password": "mia-third-password",
                "current_password": "mia-new-password", "keep_tokens": true}))),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        app.call("GET", "/auth/me", Some(&access), None).await.0,
        200
    );

    // An admin resetting mia's password (no current password needed) ends her sessions too.
    let (s, v) = app
        .call(
            "PATCH",
            "/users/mia",
            Some(&admin),
            Some(Body::Json(json!({"password": "reset-by-admin"}))),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        app.call("GET", "/auth/me", Some(&access), None).await.0,
        401
    );
    assert_eq!(refresh_status(&app, &pair["refresh_token"]).await, 401);
    assert_eq!(app.call("GET", "/auth/me", Some(&admin), None).await.0, 200);
}

/// A token kept from a removed member, used after an admin gives the same name to a new user.
#[tokio::test]
async fn token_of_deleted_user_does_not_work_for_a_new_user_of_the_same_name() {
    let app = App::new();
    let admin = app.admin_token().await;
    let old = app.user(&admin, "rex", "member").await;
    let old_script = api_token(&app, &old).await;
    assert_eq!(app.call("GET", "/auth/me", Some(&old), None).await.0, 200);

    assert_eq!(
        app.call("DELETE", "/users/rex", Some(&admin), None).await.0,
        204
    );
    app.add_user(&admin, "rex", "admin").await;
    let (s, v) = app.call("GET", "/auth/me", Some(&old), None).await;
    assert_eq!(s, 401, "the old access token works for the new rex: {v}");
    let (s, v) = app.call("GET", "/users", Some(&old_script), None).await;
    assert_eq!(s, 401, "the old API token works for the new rex: {v}");
    // The new rex is fine.
    let new = tok(&app.login("rex", "rex-password").await);
    assert_eq!(app.call("GET", "/users", Some(&new), None).await.0, 200);
}

/// Passwords and user names large enough to make the server hash megabytes: 400 at once.
#[tokio::test]
async fn megabyte_password_login_is_refused_before_hashing() {
    let app = App::new();
    let t0 = Instant::now();
    let (s, v) = app.login_status("admin", &"p".repeat(1_000_000)).await;
    assert_eq!(s, 400, "{v}");
    assert!(message(&v).contains("at most 1024"), "{v}");
    let (s, v) = app.login_status(&"u".repeat(100_000), "password").await;
    assert_eq!(s, 400, "{v}");
    assert!(message(&v).contains("at most 64"), "{v}");
    let took = t0.elapsed();
    eprintln!("two oversized logins answered in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Not counted as failures: the admin still logs in.
    assert_eq!(
        app.login_status("admin", &app.admin_password()).await.0,
        200
    );
}
