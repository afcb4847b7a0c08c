//! Packet captures of a lab's links: `POST /labs/{name}/links/{link}/captures` starts one
//! (bounded: at most [`MAX_SECONDS`] s, [`MAX_PACKETS`] frames and [`MAX_BYTES`] bytes) as an
//! operation (202), `GET /labs/{name}/captures` lists the lab's captures,
//! `GET /labs/{name}/captures/{id}` downloads one as pcapng and `POST .../{id}/stop` ends one
//! early.
//!
//! The capture is kobako-net's (an `AF_PACKET` socket on one end's tap in the lab's namespace:
//! both directions, nothing in the guests), started before the 202 so a lab that is down or a
//! missing tap is a 409 at once. Files live in `<state>/server/captures/<lab>/<id>.pcapng`
//! with a `<id>.json` beside (who, what, how many packets); the newest [`KEEP_PER_LAB`] per lab
//! are kept and deleting the lab removes them. Starting and stopping needs the right to change
//! the lab (members: their own labs; viewers: never); listing and downloading, the right to
//! see it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kobako_lab::controller::{self, LabError};
use kobako_state::now_ms;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::lab_for;
use super::links::running_link;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::lab_files::{captures_dir, running, Running};
use crate::ops::{self, Operation};
use crate::AppState;

/// Longest capture.
pub const MAX_SECONDS: f64 = 600.0;
/// Most frames in one capture.
pub const MAX_PACKETS: u64 = 1_000_000;
/// Largest capture file (the capture ends when the next frame would not fit).
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Captures kept per lab (older files are removed when a new one starts).
pub const KEEP_PER_LAB: usize = 10;
/// Captures running at once in this server.
pub const MAX_RUNNING: usize = 8;

/// What to capture.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Seconds to capture (default 10, at most 600).
    #[schema(minimum = 0.1, maximum = 600)]
    pub duration_s: Option<f64>,
    /// Stop after this many frames (default 10000, at most 1000000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_packets: Option<u64>,
    /// Capture at endpoint 1 or 2 of the link (default 1; both see both directions).
    #[schema(minimum = 1, maximum = 2)]
    pub endpoint: Option<u8>,
}

/// A capture (running or done).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CaptureInfo {
    pub id: String,
    pub lab: String,
    pub link: String,
    /// Where it captures: `node.vm:iface (host port TAP)`.
    pub at: String,
    pub user: String,
    /// The operation that runs it.
    pub operation: String,
    /// `running`, `done`, `failed`, or `interrupted` (the server stopped during it).
    pub state: String,
    pub packets: u64,
    pub bytes: u64,
    pub duration_s: f64,
    pub max_packets: u64,
    /// Why it ended: `duration`, `packets`, `size`, `stopped`.
    pub ended_by: Option<String>,
    pub error: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// `GET` this for the pcapng file.
    pub download: String,
}

/// `<state>/server/captures/<lab>`.
fn dir(st: &AppState, lab: &str) -> PathBuf {
    captures_dir(&st.state_dir, lab)
}

fn valid_id(id: &str) -> bool {
    id.starts_with("cap-") && id.len() < 40 && id[4..].chars().all(|c| c.is_ascii_alphanumeric())
}

fn write_info(dir: &Path, info: &CaptureInfo) {
    let tmp = dir.join(format!("{}.json.tmp", info.id));
    let r = serde_json::to_vec_pretty(info)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|_| std::fs::rename(&tmp, dir.join(format!("{}.json", info.id))));
    if let Err(e) = r {
        tracing::warn!("capture {}: cannot record it: {e}", info.id);
    }
}

/// The lab's captures, newest first (a `running` one that is not running here was cut short
/// by a server restart).
fn list_dir(dir: &Path) -> Vec<CaptureInfo> {
    let live = running().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<CaptureInfo> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .map(|mut c: CaptureInfo| {
            if c.state == "running" && !live.contains_key(&c.id) {
                c.state = "interrupted".into();
            }
            if let Some(r) = live.get(&c.id) {
                c.packets = r.packets.load(Ordering::Relaxed);
                c.bytes = std::fs::metadata(dir.join(format!("{}.pcapng", c.id)))
                    .map(|m| m.len())
                    .unwrap_or(0);
            }
            c
        })
        .collect();
    v.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id)));
    v
}

/// Removes all but the newest [`KEEP_PER_LAB`] - 1 finished captures (a new one is coming).
fn prune(dir: &Path) {
    for old in list_dir(dir)
        .into_iter()
        .filter(|c| c.state != "running")
        .skip(KEEP_PER_LAB.saturating_sub(1))
    {
        let _ = std::fs::remove_file(dir.join(format!("{}.pcapng", old.id)));
        let _ = std::fs::remove_file(dir.join(format!("{}.json", old.id)));
    }
}

/// A file that refuses a write that would take it past `cap` (nothing of it is written, so
/// the pcapng ends after the last whole frame), counting what it wrote.
struct Capped {
    f: std::fs::File,
    written: Arc<AtomicU64>,
    cap: u64,
    full: Arc<AtomicBool>,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let w = self.written.load(Ordering::Relaxed);
        if w + buf.len() as u64 > self.cap {
            self.full.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("capture file size limit reached"));
        }
        let n = self.f.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.f.flush()
    }
}

/// A capture the host refused is most likely a stopped VM at that end (409); the rest as
/// every lab error.
fn capture_err(lab: &str, link: &str, e: LabError) -> ApiError {
    match e {
        LabError::Net { source, .. } => ApiError::conflict(format!(
            "cannot capture link '{link}' of lab '{lab}': {source} (is the VM at that end running?)"
        )),
        e => e.into(),
    }
}

/// Capture a link's traffic for a while (202 and an operation; its result names the file).
#[utoipa::path(post, path = "/api/v1/labs/{name}/links/{link}/captures", tag = "links",
    params(("name" = String, Path, description = "Lab name"), ("link" = String, Path, description = "Link name")),
    request_body = CaptureRequest,
    responses((status = 202, description = "Capturing", body = CaptureInfo)))]
pub async fn start_capture(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((lab, link)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<CaptureRequest>,
) -> ApiResult<(StatusCode, Json<CaptureInfo>)> {
    let duration = req.duration_s.unwrap_or(10.0);
    if !(0.1..=MAX_SECONDS).contains(&duration) || !duration.is_finite() {
        return Err(ApiError::unprocessable(
            "invalid_capture",
            format!("duration_s {duration}: give 0.1 to {MAX_SECONDS} seconds"),
        ));
    }
    let max_packets = req.max_packets.unwrap_or(10_000);
    if !(1..=MAX_PACKETS).contains(&max_packets) {
        return Err(ApiError::unprocessable(
            "invalid_capture",
            format!("max_packets {max_packets}: give 1 to {MAX_PACKETS}"),
        ));
    }
    let end = req.endpoint.unwrap_or(1);
    if !(1..=2).contains(&end) {
        return Err(ApiError::unprocessable(
            "invalid_capture",
            format!("endpoint {end}: a link has endpoints 1 and 2"),
        ));
    }
    running_link(&st, &caller, &lab, &link).await?;
    let key = format!("{lab}/{link}");
    {
        let live = running().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, _)) = live.iter().find(|(_, r)| r.link == key) {
            return Err(ApiError::conflict(format!(
                "link '{link}' is being captured already ({id}): wait for it or POST /api/v1/labs/{lab}/captures/{id}/stop"
            )));
        }
        if live.len() >= MAX_RUNNING {
            return Err(ApiError::conflict(format!(
                "{MAX_RUNNING} captures are running on this server: wait for one to end"
            )));
        }
    }

    let id = format!(
        "cap-{}",
        crate::auth::random_token(8).replace(['-', '_'], "x")
    );
    // The file may grow to what is left of the caller's disk quota (at most MAX_BYTES); that
    // much is held until the capture ends.
    let (c, what) = (
        caller.clone(),
        format!("capture of link '{link}' of lab '{lab}'"),
    );
    let claim = ops::Claim::Disk(format!("capture {id}"));
    let (cap_mib, hold) = st
        .db
        .run(move |db| {
            super::quota::disk_reserve_upto(db, &c, claim, (MAX_BYTES >> 20) as i64, &what)
        })
        .await?;
    let cap_bytes = (cap_mib.max(1) as u64) << 20;
    let cap_bytes = cap_bytes.min(MAX_BYTES);
    let d = dir(&st, &lab);
    let path = d.join(format!("{id}.pcapng"));
    let written = Arc::new(AtomicU64::new(0));
    let full = Arc::new(AtomicBool::new(false));
    let (lab2, link2, d2, w2, f2) = (
        lab.clone(),
        link.clone(),
        d.clone(),
        written.clone(),
        full.clone(),
    );
    let (cap, at) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&d2).map_err(ApiError::internal)?;
        prune(&d2);
        let f = std::fs::File::create(&path).map_err(ApiError::internal)?;
        let sink = Capped {
            f,
            written: w2,
            cap: cap_bytes,
            full: f2,
        };
        let opts = kobako_net::capture::CaptureOptions {
            max_packets: Some(max_packets),
            duration: Some(Duration::from_secs_f64(duration)),
            ..Default::default()
        };
        controller::capture(&lab2, &link2, usize::from(end) - 1, sink, opts).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            capture_err(&lab2, &link2, e)
        })
    })
    .await
    .map_err(ApiError::internal)??;

    let stop = Arc::new(AtomicBool::new(false));
    let packets = Arc::new(AtomicU64::new(0));
    running().lock().unwrap_or_else(|e| e.into_inner()).insert(
        id.clone(),
        Running {
            stop: stop.clone(),
            link: key,
            packets: packets.clone(),
        },
    );
    let user = caller.name().to_string();
    let mut info = CaptureInfo {
        id: id.clone(),
        lab: lab.clone(),
        link: link.clone(),
        at,
        user: user.clone(),
        operation: String::new(),
        state: "running".into(),
        packets: 0,
        bytes: written.load(Ordering::Relaxed),
        duration_s: duration,
        max_packets,
        ended_by: None,
        error: None,
        started_ms: now_ms(),
        ended_ms: None,
        download: format!("/api/v1/labs/{lab}/captures/{id}"),
    };
    {
        let (d, i) = (d.clone(), info.clone());
        let _ = tokio::task::spawn_blocking(move || write_info(&d, &i)).await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let i2 = info.clone();
    let id2 = id.clone();
    let started = ops::start_task(
        &st,
        Some(lab.clone()),
        "link.capture",
        user,
        move |_st, _db, _lab, progress| {
            crate::ops::boxed(async move {
                let _hold = hold;
                let mut info = i2;
                info.operation = rx.await.unwrap_or_default();
                let d = d.clone();
                let r = tokio::task::spawn_blocking(move || {
                    write_info(&d, &info);
                    use kobako_lab::controller::Progress;
                    progress.event(&format!(
                        "capturing link {} at {} for {} s or {} packets",
                        info.link, info.at, info.duration_s, info.max_packets
                    ));
                    // Progress every 2 s while frames come in.
                    let (mut last, mut told) = (0, std::time::Instant::now());
                    let mut stopped = false;
                    while !cap.is_finished() {
                        if stop.load(Ordering::Relaxed) {
                            stopped = true;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        let n = cap.packets();
                        packets.store(n, Ordering::Relaxed);
                        if n != last && told.elapsed() >= Duration::from_secs(2) {
                            progress.event(&format!("{n} packets"));
                            (last, told) = (n, std::time::Instant::now());
                        }
                    }
                    let n = cap.packets();
                    let r = if stopped { cap.stop() } else { cap.wait() };
                    info.packets = match &r {
                        Ok(n) => *n,
                        Err(_) => n,
                    };
                    info.bytes = written.load(Ordering::Relaxed);
                    info.ended_ms = Some(now_ms());
                    info.ended_by = Some(
                        if full.load(Ordering::Relaxed) {
                            "size"
                        } else if stopped {
                            "stopped"
                        } else if info.packets >= info.max_packets {
                            "packets"
                        } else {
                            "duration"
                        }
                        .into(),
                    );
                    match r {
                        Err(e) if !full.load(Ordering::Relaxed) => {
                            info.state = "failed".into();
                            info.error = Some(e.to_string());
                        }
                        _ => info.state = "done".into(),
                    }
                    write_info(&d, &info);
                    running()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&info.id);
                    progress.event(&format!(
                        "capture {}: {} packets, {} bytes (ended by {})",
                        info.state,
                        info.packets,
                        info.bytes,
                        info.ended_by.as_deref().unwrap_or("-")
                    ));
                    info
                })
                .await
                .map_err(|e| e.to_string())?;
                match &r.error {
                    Some(e) => Err(format!("capture {}: {e}", r.id)),
                    None => serde_json::to_value(&r).map_err(|e| e.to_string()),
                }
            })
        },
    )
    .await;
    let op: Operation = match started {
        Ok(op) => op,
        Err(e) => {
            // No operation: the capture task was dropped with its closure; stop the capture.
            if let Some(r) = running()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id2)
            {
                r.stop.store(true, Ordering::Relaxed);
            }
            return Err(e);
        }
    };
    let _ = tx.send(op.id.clone());
    info.operation = op.id;
    Ok((StatusCode::ACCEPTED, Json(info)))
}

/// The lab's captures, newest first (at most 10 are kept per lab).
#[utoipa::path(get, path = "/api/v1/labs/{name}/captures", tag = "links",
    params(("name" = String, Path, description = "Lab name")),
    responses((status = 200, description = "Captures", body = [CaptureInfo])))]
pub async fn list_captures(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath(lab): ApiPath<String>,
) -> ApiResult<Json<Vec<CaptureInfo>>> {
    lab_for(&st, &caller, &lab, false).await?;
    let d = dir(&st, &lab);
    Ok(Json(
        tokio::task::spawn_blocking(move || list_dir(&d))
            .await
            .map_err(ApiError::internal)?,
    ))
}

async fn find(st: &AppState, caller: &Caller, lab: &str, id: &str, write: bool) -> ApiResult<()> {
    lab_for(st, caller, lab, write).await?;
    let p = dir(st, lab).join(format!("{id}.pcapng"));
    if !valid_id(id) || !tokio::fs::try_exists(&p).await.unwrap_or(false) {
        return Err(ApiError::not_found(format!(
            "lab '{lab}' has no capture '{id}' (GET /api/v1/labs/{lab}/captures lists them)"
        )));
    }
    Ok(())
}

/// A capture's pcapng file (also while it runs: whole frames so far).
#[utoipa::path(get, path = "/api/v1/labs/{name}/captures/{id}", tag = "links",
    params(("name" = String, Path, description = "Lab name"), ("id" = String, Path, description = "Capture id")),
    responses((status = 200, description = "pcapng", content_type = "application/x-pcapng", body = Vec<u8>)))]
pub async fn download_capture(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((lab, id)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    find(&st, &caller, &lab, &id, false).await?;
    let p = dir(&st, &lab).join(format!("{id}.pcapng"));
    let data = tokio::fs::read(&p).await.map_err(ApiError::internal)?;
    let link = list_dir(&dir(&st, &lab))
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| c.link)
        .unwrap_or_else(|| "link".into());
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pcapng".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{lab}-{link}-{id}.pcapng\""),
            ),
        ],
        Body::from(data),
    )
        .into_response())
}

/// End a running capture now (its file keeps what it has).
#[utoipa::path(post, path = "/api/v1/labs/{name}/captures/{id}/stop", tag = "links",
    params(("name" = String, Path, description = "Lab name"), ("id" = String, Path, description = "Capture id")),
    responses((status = 204, description = "Stopping")))]
pub async fn stop_capture(
    State(st): State<AppState>,
    caller: Caller,
    ApiPath((lab, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    find(&st, &caller, &lab, &id, true).await?;
    let live = running().lock().unwrap_or_else(|e| e.into_inner());
    let r = live
        .get(&id)
        .ok_or_else(|| ApiError::conflict(format!("capture '{id}' is not running")))?;
    r.stop.store(true, Ordering::Relaxed);
    Ok(StatusCode::NO_CONTENT)
}
