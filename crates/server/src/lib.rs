//! `kobako serve`: the REST API over the same controller and state database as the CLI.
//!
//! - [`serve`] listens on HTTPS (rustls; a self-signed certificate is made on first start
//!   unless one is given) and on a Unix socket for the local CLI (mode 0600; requests over it
//!   are the local admin `root`, checked by `SO_PEERCRED`).
//! - [`api`] holds the handlers, registered through `utoipa_axum` so the OpenAPI document
//!   (`/api/v1/openapi.json`) is generated from them and cannot drift.
//! - [`auth`]: users, JWT access + rotating refresh tokens, API tokens, roles, login rate limit.
//! - [`ops`]: long calls (lab up/down/restart, image builds) return 202 and an operation whose
//!   progress is stored in the database and streamed as events.
//! - Errors always have the shape `{"error":{"code","message"}}` ([`error`]); a panicking
//!   handler is caught and answered with a generic 500.
//!
//! What runs (VMs, their supervisors, lab networks) never depends on this process: killed
//! with -9 and restarted, the server reads the state database, checks each VM's process and
//! carries on (operations that were running are marked `interrupted`).

pub mod api;
pub mod auth;
pub mod cache;
pub mod cascade;
pub mod db;
pub mod error;
mod lab_files;
pub mod oidc;
pub mod ops;
pub mod tls;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use kobako_lab::controller::BootSettings;
use kobako_runtime::Runtime;

/// What the CLI gives the server: the runtime, how lab VMs boot (settings read once by the
/// binary), and how to build images.
pub struct Hooks {
    pub runtime: Arc<dyn Runtime>,
    pub boot: BootSettings,
    /// Builds an image (`kind`, `name`, `packages`), reporting progress lines.
    pub build_image: Option<Arc<ImageBuilder>>,
    /// What a lab needs that is not there and cannot be built (unknown images, missing or
    /// unbootable image and kernel files), one line per field: the same check as `kobako up`
    /// and `kobako lab check`. Create and replace refuse a lab with any (`None`: no check).
    pub missing_artifacts: Option<Arc<ArtifactCheck>>,
}

pub type ArtifactCheck = dyn Fn(&kobako_lab::spec::Lab) -> Vec<String> + Send + Sync;

pub type ImageBuilder = dyn Fn(&str, &str, &[String], &(dyn Fn(&str) + Send + Sync)) -> Result<(), String>
    + Send
    + Sync;

/// `kobako serve` options.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// HTTPS address (`None`: Unix socket only).
    pub listen: Option<SocketAddr>,
    /// Unix socket path (`None`: HTTPS only).
    pub socket: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The state directory (`$KOBAKO_STATE`).
    pub state_dir: PathBuf,
    /// OpenID Connect login (optional).
    pub oidc: Option<oidc::OidcConfig>,
}

/// Default Unix socket: `$KOBAKO_RUN/server.sock`.
pub fn default_socket() -> PathBuf {
    kobako_runtime::vmdir::run_root().join("server.sock")
}

/// The server's own files: `<state>/server`.
pub fn server_dir(state: &std::path::Path) -> PathBuf {
    state.join("server")
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: db::Pool,
    pub keys: Arc<auth::Keys>,
    pub limiter: Arc<auth::Limiter>,
    pub hooks: Arc<Hooks>,
    pub state_dir: PathBuf,
    /// argon2 hash of a random password, verified for unknown users (constant-ish timing).
    pub dummy_hash: Arc<String>,
    /// Labs with an operation running in this process.
    pub busy: ops::Busy,
    /// Operations of this process that can be cancelled (scenario runs).
    pub cancels: Arc<ops::Cancels>,
    /// Hot read paths served from memory while the database is unchanged.
    pub cache: Arc<cache::ReadCache>,
    /// OpenID Connect login, when configured.
    pub oidc: Option<Arc<oidc::Oidc>>,
    /// Users' token generations (cached) and stream tickets.
    pub sessions: Arc<auth::Sessions>,
}

/// Who made the current request, filled by the [`auth::Caller`] extractor for the audit log.
#[derive(Clone, Default)]
pub struct AuditSlot(pub Arc<Mutex<AuditInfo>>);

#[derive(Default)]
pub struct AuditInfo {
    pub user: Option<String>,
    pub detail: Option<String>,
}

impl AppState {
    pub fn open(state_dir: PathBuf, hooks: Hooks) -> Result<AppState> {
        let dir = server_dir(&state_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        create_private_db(&state_dir)?;
        let db = db::Pool::open(&state_dir, 4).context("open the state database")?;
        secure_state(&state_dir)?;
        let watch = kobako_state::Db::open_in(&state_dir).context("open the state database")?;
        let keys = auth::Keys::load_or_create(&dir)?;
        let dummy =
            auth::hash_password(&auth::random_token(12)).map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(AppState {
            db,
            keys: Arc::new(keys),
            limiter: Arc::new(auth::Limiter::default()),
            hooks: Arc::new(hooks),
            state_dir,
            dummy_hash: Arc::new(dummy),
            busy: Default::default(),
            cancels: Default::default(),
            cache: Arc::new(cache::ReadCache::new(watch)),
            oidc: None,
            sessions: Default::default(),
        })
    }
}

/// Creates `kobako.db` empty with mode 0600 when missing, so SQLite (which gives its `-wal` and
/// `-shm` files the database's mode) never makes it readable by others.
fn create_private_db(state_dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let p = state_dir.join("kobako.db");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create {}", p.display())),
    }
}

/// The server's secrets and private state, as (path, is a directory): the state database
/// (users, token hashes), the JWT and TLS keys, the initial admin password, and the
/// directories of captures, checkpoints, function and warm snapshots (guest memory images).
pub fn private_paths(state_dir: &std::path::Path) -> Vec<(PathBuf, bool)> {
    let srv = server_dir(state_dir);
    let mut v = vec![
        (srv.clone(), true),
        (srv.join("tls"), true),
        (srv.join("captures"), true),
        (state_dir.join("checkpoints"), true),
        (state_dir.join("functions"), true),
        (kobako_lab::controller::warm::root(), true),
        (srv.join("jwt.key"), false),
        (srv.join("tls/key.pem"), false),
        (srv.join("initial-admin-password"), false),
    ];
    for f in ["kobako.db", "kobako.db-wal", "kobako.db-shm"] {
        v.push((state_dir.join(f), false));
    }
    v
}

/// On every start: makes [`private_paths`] 0700 (directories, created when missing) / 0600
/// (files) and owned by this user, logging each change (an install from before this check, or
/// a file someone opened up).
pub fn secure_state(state_dir: &std::path::Path) -> Result<()> {
    for (p, dir) in private_paths(state_dir) {
        for f in tls::make_private(&p, dir, dir)? {
            match f {
                tls::Fixed::Created => {}
                tls::Fixed::Mode { from, to } => tracing::warn!(
                    "{} was mode {from:o}, open to other users: made it {to:o}",
                    p.display()
                ),
                tls::Fixed::Owner { from, to } => tracing::warn!(
                    "{} was owned by uid {from}: gave it to uid {to} (the server)",
                    p.display()
                ),
            }
        }
    }
    Ok(())
}

/// Records every mutating call (method other than GET/HEAD/OPTIONS) in the `audit` table.
async fn audit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let mutating = !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS");
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if mutating {
        let status = resp.status().as_u16();
        let (user, detail) = {
            let mut g = slot.0.lock().unwrap_or_else(|e| e.into_inner());
            (g.user.take(), g.detail.take())
        };
        let user = user.unwrap_or_else(|| "-".into());
        let _ = state
            .db
            .run(move |db| {
                db.insert_audit(&kobako_state::NewAudit {
                    ts_ms: kobako_state::now_ms(),
                    user: &user,
                    method: method.as_str(),
                    path: &path,
                    status,
                    detail: detail.as_deref(),
                })?;
                Ok(())
            })
            .await;
    }
    resp
}

/// The whole application: API routes (with their OpenAPI document), fallbacks, body limit,
/// audit, catch-panic.
pub fn app(state: AppState) -> Router {
    let (router, doc) = api::router().split_for_parts();
    let doc = api::finish_doc(doc);
    let doc = Arc::new(serde_json::to_value(&doc).unwrap_or_default());
    router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let d = doc.clone();
                async move { axum::Json((*d).clone()) }
            }),
        )
        .fallback(web::fallback)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit))
        // Lab files and JSON bodies are small; file uploads have their own larger limit.
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .with_state(state)
}

/// How long the HTTPS listener waits for a whole request head (from the end of the TLS
/// handshake, or of the previous response on a kept-alive connection) before it closes the
/// connection.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a request body may pause (no data while the handler waits for it) before the
/// request is refused with 408: a client that announces a body and then sends it at a trickle
/// or not at all does not hold a handler. A guest that reads an upload slowly does not count.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What `serve` prints once it listens.
pub struct Started {
    pub admin_password: Option<String>,
    pub cert: Option<PathBuf>,
}

/// Starts the server and runs until the process ends.
pub async fn serve(cfg: ServeConfig, hooks: Hooks, on_start: impl FnOnce(&Started)) -> Result<()> {
    // rustls needs one crypto provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut state = AppState::open(cfg.state_dir.clone(), hooks)?;
    if let Some(o) = cfg.oidc.clone() {
        state.oidc = Some(Arc::new(oidc::Oidc::new(o)?));
    }
    let dir = server_dir(&cfg.state_dir);
    let admin_password = auth::bootstrap_admin(&state.db.get(), &dir)?;
    api::policy::configure_controller(&state, cfg.listen.iter().map(|a| a.port()).collect());
    ops::recover(&state).await?;
    let app = app(state.clone());
    tokio::spawn(ops::watch_vms(state.clone()));

    let mut tasks = tokio::task::JoinSet::new();
    let mut cert_path = None;
    if let Some(addr) = cfg.listen {
        let (cert, key, _) = tls::ensure_cert(&dir, cfg.cert.clone(), cfg.key.clone())?;
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
            .await
            .with_context(|| {
                format!(
                    "load the TLS certificate {} and key {}",
                    cert.display(),
                    key.display()
                )
            })?;
        cert_path = Some(cert);
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("listen on {addr} (in use? pick another with --listen)"))?;
        std_listener.set_nonblocking(true)?;
        let app = app.clone();
        let mut server = axum_server::from_tcp_rustls(std_listener, tls);
        // A client that never finishes its request head (slowloris), or keeps a connection
        // idle, is cut after HEADER_TIMEOUT; without a timer hyper ignores its own default.
        // (axum-server already drops a TLS handshake that takes over 10 s.)
        server
            .http_builder()
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        tasks.spawn(async move {
            server
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .context("HTTPS server")
        });
    }
    if let Some(sock) = cfg.socket.clone() {
        if let Some(d) = sock.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let _ = std::fs::remove_file(&sock);
        // Bind with a restrictive umask so the socket is never briefly open to others.
        // SAFETY: umask only changes this process's file creation mask; no memory involved.
        let old = unsafe { libc::umask(0o177) };
        let l = tokio::net::UnixListener::bind(&sock);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let l = l.with_context(|| format!("listen on {}", sock.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        let app = app.clone();
        tasks.spawn(async move {
            axum::serve(
                l,
                app.into_make_service_with_connect_info::<auth::UdsPeer>(),
            )
            .await
            .context("Unix socket server")
        });
    }
    if tasks.is_empty() {
        anyhow::bail!("nothing to serve: give --listen or --socket");
    }
    on_start(&Started {
        admin_password,
        cert: cert_path,
    });
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(r) => r.context("server task")??,
                None => return Ok(()),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    stop_operations(&state).await;
    Ok(())
}

/// On SIGTERM/SIGINT: scenario runs are cancelled so that their faults are undone and they
/// end `cancelled` (instead of leaving links cut for `recover` to call `interrupted`); waits
/// up to 20 s for them. Other operations are left to be marked `interrupted` at the next start.
async fn stop_operations(state: &AppState) {
    let n = state
        .cancels
        .cancel_all("cancelled: the server is stopping");
    if n == 0 {
        return;
    }
    tracing::warn!("stopping: cancelling {n} scenario run(s) and undoing their faults");
    let t0 = std::time::Instant::now();
    while state.cancels.running() > 0 && t0.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
