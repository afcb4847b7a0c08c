//! `/vms/{name}`: state, exec, files, serial console and exec TTY over WebSocket.
//!
//! VMs of labs are authorised through their lab; VMs started with `kobako vm run` (no lab)
//! are for admins only.

use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use kobako_agent::proto::{ExecRequest, TtySize};
use kobako_runtime::agent::{AgentClient, CappedBuf, ExecEvent};
use kobako_runtime::VmDir;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa::{IntoParams, ToSchema};

use super::access::lab_for;
use super::labs::{vm_info, VmInfo};
use crate::auth::Caller;
use crate::error::{body_error, ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::AppState;

/// Largest file moved through the API in one request.
pub const MAX_FILE: u64 = 256 * 1024 * 1024;
/// Downloads up to this size are read whole first (checksum header, error statuses); larger
/// ones are streamed, so a request holds at most this much memory.
pub const BUFFERED_DOWNLOAD: u64 = 16 * 1024 * 1024;

/// The VM row (and its lab) after checking the caller may use it.
async fn vm_for(st: &AppState, caller: &Caller, name: &str, write: bool) -> ApiResult<VmInfo> {
    let n = name.to_string();
    let lab: Option<String> = st.db.run(move |db| Ok(db.vm(&n)?.map(|v| v.lab))).await?;
    match lab {
        Some(lab) => {
            // A VM of a lab the caller cannot see is not there (404 naming the VM, not its lab).
            let row = lab_for(st, caller, &lab, write).await.map_err(|e| {
                if e.status == axum::http::StatusCode::NOT_FOUND {
                    ApiError::not_found(format!("no VM '{name}'"))
                } else {
                    e
                }
            })?;
            let spec: Option<kobako_lab::spec::Lab> = serde_json::from_value(row.spec).ok();
            let n = name.to_string();
            let vms = st.db.run(move |db| Ok(db.vms(&lab)?)).await?;
            let v = vms
                .iter()
                .find(|v| v.name == n)
                .ok_or_else(|| ApiError::not_found(format!("no VM '{n}'")))?;
            Ok(vm_info(v, spec.as_ref()))
        }
        None => {
            let dir = VmDir::for_name(name);
            if !name.is_empty() && !name.contains('/') && dir.exists() && caller.is_admin() {
                let cfg = dir.config().ok();
                let pid = dir.vm_pid();
                return Ok(VmInfo {
                    name: name.to_string(),
                    lab: String::new(),
                    node: String::new(),
                    vm: name.to_string(),
                    state: if pid.is_some() { "ready" } else { "stopped" }.into(),
                    reason: None,
                    boot_ms: dir.ready().map(|r| r.boot_ms as i64),
                    pid,
                    image: None,
                    vcpus: cfg.as_ref().map(|c| c.vcpus),
                    memory_mib: cfg.as_ref().map(|c| u64::from(c.memory_mib)),
                    addresses: Vec::new(),
                    updated_ms: 0,
                });
            }
            Err(ApiError::not_found(format!(
                "no VM '{name}' (lab VMs are named <lab>.<node>.<vm>)"
            )))
        }
    }
}

async fn agent(name: &str) -> ApiResult<AgentClient> {
    let dir = VmDir::for_name(name);
    if dir.vm_pid().is_none() {
        return Err(ApiError::conflict(format!(
            "VM '{name}' is not running: bring its lab up first"
        )));
    }
    let (c, _) = kobako_runtime::wait_ready(&dir, Duration::from_secs(10))
        .await
        .map_err(|e| ApiError::unavailable(format!("VM '{name}': agent not reachable: {e}")))?;
    Ok(c)
}

/// A VM: state, boot time, pid, addresses, size.
#[utoipa::path(get, path = "/api/v1/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = "VM name `<lab>.<node>.<vm>`")),
    responses((status = 200, description = "The VM", body = VmInfo)))]
pub async fn get_vm(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<VmInfo>> {
    Ok(Json(vm_for(&st, &caller, &name, false).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The command and its arguments (not run through a shell).
    pub argv: Vec<String>,
    /// Text fed to the command's standard input.
    pub stdin: Option<String>,
    /// Kill it after this many seconds (default 60, at most 3600).
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout: Option<u64>,
    /// Extra environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// User name or uid in the guest.
    pub user: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecResult {
    /// Exit status as a shell reports it (128 + N when killed by signal N).
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Output as UTF-8 (invalid bytes replaced), at most 16 MiB per stream: longer output is cut
    /// and ends with `[kobako: output truncated after N bytes]`.
    pub stdout: String,
    pub stderr: String,
}

/// Run a command in a VM through its agent and wait for it.
#[utoipa::path(post, path = "/api/v1/vms/{name}/exec", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    request_body = ExecBody,
    responses((status = 200, description = "It ran (see exit_code)", body = ExecResult)))]
pub async fn exec(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Json<ExecResult>> {
    vm_for(&st, &caller, &name, true).await?;
    if body.argv.is_empty() || body.argv[0].is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_argv",
            "argv needs at least the program, e.g. [\"uname\", \"-a\"]",
        ));
    }
    let timeout = body.timeout.unwrap_or(60);
    if timeout == 0 || timeout > 3600 {
        return Err(ApiError::unprocessable(
            "invalid_timeout",
            "timeout is 1 to 3600 seconds",
        ));
    }
    let client = agent(&name).await?;
    let req = ExecRequest {
        argv: body.argv,
        env: body.env.into_iter().collect(),
        cwd: body.cwd,
        timeout_ms: Some(timeout * 1000),
        stdin: body.stdin.is_some(),
        tty: None,
        user: body.user,
    };
    let out = if let Some(input) = body.stdin {
        let mut s = client
            .exec_stream(req)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        s.stdin(input.as_bytes())
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        s.close_stdin()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        // The same cap as `exec` without stdin: what the guest prints past it is dropped.
        let mut stdout = CappedBuf::new(client.max_output());
        let mut stderr = CappedBuf::new(client.max_output());
        let mut out = kobako_runtime::agent::ExecOutput::default();
        loop {
            match s.next().await {
                Ok(Some(ExecEvent::Stdout(b))) => stdout.push(&b),
                Ok(Some(ExecEvent::Stderr(b))) => stderr.push(&b),
                Ok(Some(ExecEvent::Exited {
                    code,
                    signal,
                    timed_out,
                })) => {
                    out.code = code;
                    out.signal = signal;
                    out.timed_out = timed_out;
                    break;
                }
                Ok(None) => break,
                Err(e) => return Err(exec_err(e)),
            }
        }
        out.truncated = stdout.truncated() || stderr.truncated();
        out.stdout = stdout.finish();
        out.stderr = stderr.finish();
        out
    } else {
        client.exec(req).await.map_err(exec_err)?
    };
    Ok(Json(ExecResult {
        exit_code: out.status(),
        signal: out.signal,
        timed_out: out.timed_out,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }))
}

/// Agent errors: channel trouble → 503; anything else is the command failing in the guest
/// (no such program, bad user) → 422.
fn exec_err(e: kobako_runtime::RuntimeError) -> ApiError {
    match e {
        e @ kobako_runtime::RuntimeError::AgentGone(_) => e.into(),
        e => ApiError::unprocessable("exec_failed", e.to_string()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// Absolute path in the guest (no `..`).
    pub path: String,
    /// Permission bits for uploads, octal (default 644).
    pub mode: Option<String>,
}

fn check_guest_path(p: &str) -> ApiResult<()> {
    if !p.starts_with('/')
        || p.len() > 4096
        || p.contains('\0')
        || p.split('/').any(|c| c == "..")
        || p.ends_with('/')
    {
        return Err(ApiError::bad_request(format!(
            "path '{}': give an absolute file path in the guest without '..' (e.g. /tmp/data.txt)",
            p.escape_debug()
        )));
    }
    Ok(())
}

/// Download a file from a VM (`application/octet-stream`). Files up to 16 MiB are read whole
/// first and carry their SHA-256 in `x-kobako-sha256` (a failed read is an error status);
/// larger ones are streamed as the agent reads them (`Content-Length` from the file's size; a
/// failure mid-way aborts the response, so the client sees a short body).
#[utoipa::path(get, path = "/api/v1/vms/{name}/files", tag = "vms",
    params(("name" = String, Path, description = "VM name"), FileQuery),
    responses((status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn download(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<Response> {
    vm_for(&st, &caller, &name, true).await?;
    check_guest_path(&q.path)?;
    let client = agent(&name).await?;
    let info = client
        .stat(&q.path)
        .await
        .map_err(|e| ApiError::not_found(format!("{}: {e}", q.path)))?;
    if info.exists && info.kind == kobako_agent::proto::FileKind::Other {
        // /dev/zero and friends have no end; a fifo may never send anything.
        return Err(ApiError::unprocessable(
            "not_a_file",
            format!(
                "{}: a device node, fifo or socket in the guest; download a regular file (copy the data into one with exec first)",
                q.path
            ),
        ));
    }
    if info.size > BUFFERED_DOWNLOAD {
        return Ok(stream_download(client, q.path, info.size));
    }
    // The buffer holds at most BUFFERED_DOWNLOAD bytes whatever the guest says (the stat
    // describes a symlink itself; the read follows it), and never more than the guest announced
    // when it started sending.
    let mut buf = Vec::with_capacity(info.size as usize);
    let (_, sha, _) = client
        .get_file(&q.path, BUFFERED_DOWNLOAD, &mut buf, &|_| {})
        .await
        .map_err(|e| ApiError::unprocessable("transfer_failed", format!("{}: {e}", q.path)))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::HeaderName::from_static("x-kobako-sha256"), sha),
        ],
        Body::from(buf),
    )
        .into_response())
}

/// The agent writes the file into a pipe from a task; the response body reads the pipe. At the
/// pipe's end the task's result decides: an error ends the body with an error (hyper then
/// aborts the connection instead of ending the response cleanly).
fn stream_download(client: AgentClient, path: String, size: u64) -> Response {
    let (w, r) = tokio::io::duplex(512 * 1024);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // At most the announced size, which is the response's Content-Length.
        let r = client.get_file(&path, size, w, &|_| {}).await;
        let _ = tx.send(r.map(|_| ()).map_err(|e| format!("{path}: {e}")));
    });
    let body = futures_util::stream::unfold((r, Some(rx)), |(mut r, rx)| async move {
        let rx = rx?;
        let mut buf = vec![0u8; 256 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => match rx.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((Err(std::io::Error::other(e)), (r, None))),
                Err(_) => Some((
                    Err(std::io::Error::other("the transfer task ended")),
                    (r, None),
                )),
            },
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), (r, Some(rx))))
            }
            Err(e) => Some((Err(e), (r, None))),
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Upload a file into a VM (raw body; written atomically, SHA-256 checked by the guest). With a
/// `Content-Length` the body is streamed to the guest as it arrives (any size the guest has room
/// for); without one (chunked) it is buffered, up to 256 MiB.
#[utoipa::path(put, path = "/api/v1/vms/{name}/files", tag = "vms",
    params(("name" = String, Path, description = "VM name"), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Written", body = Uploaded)))]
pub async fn upload(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Json<Uploaded>> {
    vm_for(&st, &caller, &name, true).await?;
    check_guest_path(&q.path)?;
    let mode = match &q.mode {
        None => 0o644,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "mode '{m}': octal permission bits, e.g. 644 or 755"
                ))
            })?,
    };
    let failed = |e: kobako_runtime::RuntimeError| {
        ApiError::unprocessable("transfer_failed", format!("{}: {e}", q.path))
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if let Some(size) = length {
        // Streamed: a task feeds the body into a pipe the agent client reads. A body that
        // breaks off ends the pipe early; the guest then refuses the short file (it checks the
        // size) and nothing is written.
        let client = agent(&name).await?;
        let (mut w, r) = tokio::io::duplex(512 * 1024);
        let (tx, rx) = tokio::sync::oneshot::channel::<Option<ApiError>>();
        tokio::spawn(async move {
            let mut why = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => {
                        if w.write_all(&c).await.is_err() {
                            break; // the upload already failed on the agent's side
                        }
                    }
                    Err(e) => {
                        why = Some(body_error(&e, StatusCode::BAD_REQUEST, || {
                            format!("the request body broke off ({e}); nothing was written")
                        }));
                        break;
                    }
                }
            }
            let _ = tx.send(why);
        });
        let r = client.put_file(r, size, &q.path, mode, &|_| {}).await;
        if let Ok(Some(e)) = rx.await {
            return Err(e);
        }
        return Ok(Json(Uploaded {
            size,
            sha256: r.map_err(failed)?,
            path: q.path,
        }));
    }
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| body_error(&e, StatusCode::BAD_REQUEST, || e.to_string()))?;
        if data.len() as u64 + chunk.len() as u64 > MAX_FILE {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "a chunked upload is buffered and may be at most {MAX_FILE} bytes: send a Content-Length to stream a larger file"
                ),
            ));
        }
        data.extend_from_slice(&chunk);
    }
    let client = agent(&name).await?;
    let sha = client
        .put_file(&data[..], data.len() as u64, &q.path, mode, &|_| {})
        .await
        .map_err(failed)?;
    Ok(Json(Uploaded {
        path: q.path,
        size: data.len() as u64,
        sha256: sha,
    }))
}

fn ws_required(_: WebSocketUpgradeRejection) -> ApiError {
    ApiError::bad_request(
        "this endpoint is a WebSocket: connect with `Connection: Upgrade` and `Upgrade: websocket`",
    )
}

/// The VM's serial console over WebSocket: binary frames both ways (the last 8 KiB of the
/// console log first). QEMU's console socket takes one client at a time.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    responses((status = 101, description = "WebSocket: console bytes both ways")))]
pub async fn console(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    vm_for(&st, &caller, &name, true).await?;
    let ws = ws.map_err(ws_required)?;
    let dir = VmDir::for_name(&name);
    if dir.vm_pid().is_none() {
        return Err(ApiError::conflict(format!("VM '{name}' is not running")));
    }
    let sock = kobako_runtime::sock::connect_tokio(&dir.console_socket())
        .map_err(|e| ApiError::unavailable(format!("console of '{name}': {e}")))?;
    let tail = read_tail(&dir.file("console.log"), CONSOLE_TAIL).unwrap_or_default();
    Ok(ws.on_upgrade(move |socket| {
        until_session_end(st, caller, bridge_console(socket, sock, tail))
    }))
}

/// Runs a WebSocket bridge until it ends, or until the caller's session does (token expired
/// or revoked, user removed or role changed: checked every few seconds); then the bridge is
/// dropped, which closes the WebSocket and the console or terminal behind it.
async fn until_session_end(
    st: AppState,
    caller: Caller,
    bridge: impl std::future::Future<Output = ()>,
) {
    let user = caller.user.name.clone();
    tokio::select! {
        _ = bridge => {}
        e = crate::auth::session_end(st, caller) => {
            tracing::info!("WebSocket of user '{user}' closed: {e}");
        }
    }
}

/// How much of the console log a console client gets before the live output.
pub const CONSOLE_TAIL: u64 = 8192;

/// The last `n` bytes of a file, read from `len - n` (the guest fills the console log: it is
/// never read whole).
fn read_tail(path: &std::path::Path, n: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(n)))?;
    let mut out = Vec::with_capacity(n.min(len) as usize);
    f.take(n).read_to_end(&mut out)?;
    Ok(out)
}

async fn bridge_console(mut ws: WebSocket, sock: tokio::net::UnixStream, tail: Vec<u8>) {
    if !tail.is_empty() && ws.send(Message::Binary(tail.into())).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = sock.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        return;
                    }
                }
            },
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if wr.write_all(&b).await.is_err() { break; }
                }
                Some(Ok(Message::Text(t))) => {
                    if wr.write_all(t.as_bytes()).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TtyQuery {
    /// Shell command line to run (default: a login shell).
    pub command: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub rows: Option<u16>,
    #[param(minimum = 1, maximum = 1000)]
    pub cols: Option<u16>,
    pub user: Option<String>,
    /// Bearer token (deprecated: use `ticket`, tokens in URLs end up in proxy logs).
    pub access_token: Option<String>,
    /// Single-use ticket from POST /api/v1/auth/ticket (browsers cannot set headers on
    /// WebSocket requests).
    pub ticket: Option<String>,
}

#[derive(Deserialize)]
struct Resize {
    resize: TtySize,
}

/// A command on a terminal in the VM over WebSocket: binary frames are stdin/terminal output;
/// a text frame `{"resize":{"rows":R,"cols":C}}` resizes; the last text frame is
/// `{"exited":{"code":N}}`.
#[utoipa::path(get, path = "/api/v1/vms/{name}/tty", tag = "vms",
    params(("name" = String, Path, description = "VM name"), TtyQuery),
    responses((status = 101, description = "WebSocket: terminal bytes both ways")))]
pub async fn tty(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<TtyQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    vm_for(&st, &caller, &name, true).await?;
    let ws = ws.map_err(ws_required)?;
    let client = agent(&name).await?;
    let argv = match q.command {
        Some(c) => vec!["/bin/sh".into(), "-c".into(), c],
        None => vec!["/bin/sh".into(), "-l".into()],
    };
    let req = ExecRequest {
        argv,
        env: vec![("TERM".into(), "xterm-256color".into())],
        cwd: None,
        timeout_ms: None,
        stdin: true,
        tty: Some(TtySize {
            rows: q.rows.unwrap_or(24).clamp(1, 1000),
            cols: q.cols.unwrap_or(80).clamp(1, 1000),
        }),
        user: q.user,
    };
    Ok(ws.on_upgrade(move |socket| until_session_end(st, caller, bridge_tty(socket, client, req))))
}

async fn bridge_tty(mut ws: WebSocket, client: AgentClient, req: ExecRequest) {
    let mut s = match client.exec_stream(req).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ws
                .send(Message::Text(
                    serde_json::json!({"error": e.to_string()})
                        .to_string()
                        .into(),
                ))
                .await;
            return;
        }
    };
    loop {
        tokio::select! {
            ev = s.next() => match ev {
                Ok(Some(ExecEvent::Stdout(b))) | Ok(Some(ExecEvent::Stderr(b))) => {
                    if ws.send(Message::Binary(b.into())).await.is_err() {
                        let _ = s.signal(libc::SIGHUP).await;
                        return;
                    }
                }
                Ok(Some(ExecEvent::Exited { code, signal, .. })) => {
                    let _ = ws
                        .send(Message::Text(
                            serde_json::json!({"exited": {"code": code, "signal": signal}})
                                .to_string()
                                .into(),
                        ))
                        .await;
                    break;
                }
                Ok(None) | Err(_) => break,
            },
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if s.stdin(&b).await.is_err() { break; }
                }
                Some(Ok(Message::Text(t))) => {
                    if let Ok(r) = serde_json::from_str::<Resize>(t.as_str()) {
                        let _ = s.resize(r.resize.rows, r.resize.cols).await;
                    } else if s.stdin(t.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = s.signal(libc::SIGHUP).await;
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest that filled its console log: the console reads only the tail, not the file.
    #[test]
    fn console_tail_of_a_huge_log_reads_only_the_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 30).unwrap(); // sparse: 64 GiB that would never fit in memory
        drop(f);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"login: ").unwrap();
        let t = read_tail(&p, CONSOLE_TAIL).unwrap();
        assert_eq!(t.len(), CONSOLE_TAIL as usize);
        assert!(t.ends_with(b"login: "));
        assert_eq!(read_tail(&p, 3).unwrap(), b"n: ");
    }
}
