//! The server as the router tests see it: [`kobako_server::app`] over a fresh state directory,
//! called in process with `tower::ServiceExt::oneshot` (no socket, no TLS, no child process),
//! each request as if it came over HTTPS from 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};

use axum::body::Body as HttpBody;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use kobako_server::{AppState, Hooks};
use serde_json::{json, Value};
use tower::ServiceExt;

/// A request body.
pub enum Body {
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// A YAML request body (lab files).
pub fn yaml(s: &[u8]) -> Option<Body> {
    Some(Body::Raw("application/yaml", s.to_vec()))
}

/// The access token of a login answer.
pub fn tok(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

/// The error message of an error body.
pub fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The server's router over its own state directory, with the admin the first start makes.
pub struct App {
    /// The state directory (database, keys), removed with the app.
    _state: tempfile::TempDir,
    router: Router,
    admin_password: String,
}

/// Points the directories the libraries use (run, cache, images, and the state root that
/// scenario and checkpoint code opens by itself) at cargo's temporary directory for tests,
/// through the libraries' setters (as the binary does from its environment), before the first
/// app is built, so that no test touches the host's. Nothing a test checks is kept there (each
/// app's database and keys are in its own state directory).
fn private_environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kobako-router-tests");
        kobako_runtime::vmdir::set_run_root(root.join("run"));
        kobako_image::cache::set_root(root.join("cache"));
        kobako_image::store::set_root(root.join("images"));
        kobako_state::set_state_root(root.join("state"));
    });
}

impl App {
    /// A server as `kobako serve` opens it on first start, without listening anywhere.
    pub fn new() -> App {
        private_environment();
        let state = tempfile::Builder::new()
            .prefix("kobako-router-state")
            .tempdir()
            .unwrap();
        let hooks = Hooks {
            // Nothing here starts a VM: the runtime is never asked to.
            runtime: Arc::new(kobako_runtime::vmm::VmmRuntime::new(PathBuf::from(
                "/nonexistent/kobako",
            ))),
            boot: kobako_lab::controller::BootSettings::default(),
            build_image: None,
            missing_artifacts: None,
        };
        let st = AppState::open(state.path().to_path_buf(), hooks).unwrap();
        let dir = kobako_server::server_dir(state.path());
        kobako_server::auth::bootstrap_admin(&st.db.get(), &dir).unwrap();
        let admin_password = std::fs::read_to_string(dir.join("initial-admin-password"))
            .unwrap()
            .trim()
            .to_string();
        App {
            router: kobako_server::app(st),
            _state: state,
            admin_password,
        }
    }

    pub fn admin_password(&self) -> String {
        self.admin_password.clone()
    }

    /// One request to `/api/v1{path}`; returns (status, JSON body or the text as a JSON string).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> (u16, Value) {
        let mut r = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        let mut req = match body {
            None => r.body(HttpBody::empty()),
            Some(Body::Json(v)) => r
                .header("content-type", "application/json")
                .body(HttpBody::from(v.to_string())),
            Some(Body::Raw(ct, b)) => r.header("content-type", ct).body(HttpBody::from(b)),
        }
        .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Logs `user` in; the login answer (token pair).
    pub async fn login(&self, user: &str, pw: &str) -> Value {
        let (s, v) = self.login_status(user, pw).await;
        assert_eq!(s, 200, "login {user}: {v}");
        v
    }

    /// A login attempt: (status, body).
    pub async fn login_status(&self, user: &str, pw: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/auth/login",
            None,
            Some(Body::Json(json!({"username": user, "password": pw}))),
        )
        .await
    }

    /// The admin's access token.
    pub async fn admin_token(&self) -> String {
        tok(&self.login("admin", &self.admin_password()).await)
    }

    /// Creates user `name` with `role` (password `NAME-password`) as `admin`.
    pub async fn add_user(&self, admin: &str, name: &str, role: &str) {
        let (s, v) = self
            .call(
                "POST",
                "/users",
                Some(admin),
                Some(Body::Json(
                    json!({"name": name, "password": format!("{name}-password"), "role": role}),
                )),
            )
            .await;
        assert_eq!(s, 201, "create user {name}: {v}");
    }

    /// Creates user `name` with `role` as `admin` and logs it in: its access token.
    pub async fn user(&self, admin: &str, name: &str, role: &str) -> String {
        self.add_user(admin, name, role).await;
        tok(&self.login(name, &format!("{name}-password")).await)
    }
}
