//! `GET /api/v1/events`: server-sent events from the state database's `events` table.
//!
//! Events are rows with increasing ids written by whichever process changed something (this
//! server, a CLI `up`), so the stream polls the table (every 200 ms) rather than an in-process
//! channel. Each SSE event carries the row id as `id:`, so a client that reconnects with
//! `Last-Event-ID` (browsers do this by themselves) resumes exactly after the last one it saw,
//! also across a server restart. Members only get events of their own labs.
//!
//! The stream re-checks the caller's credential every [`auth::SESSION_CHECK`]: when the token
//! expired or was revoked, or the user was removed or changed role, a last `session.ended`
//! event (data: `{"reason": ...}`) is sent and the stream ends. Browsers authenticate with a
//! single-use `ticket` (POST /api/v1/auth/ticket) instead of a token in the URL.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use kobako_state::Event;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{self, Caller, Role};
use crate::error::{ApiError, ApiQuery, ApiResult};
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Start after this event id (default: `Last-Event-ID`, else only new events).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Only events of this lab.
    pub lab: Option<String>,
    /// Bearer token (deprecated: use `ticket`, tokens in URLs end up in proxy logs).
    pub access_token: Option<String>,
    /// Single-use ticket from POST /api/v1/auth/ticket (EventSource cannot set headers).
    pub ticket: Option<String>,
}

struct Cursor {
    st: AppState,
    caller: Caller,
    lab: Option<String>,
    last: i64,
    buf: VecDeque<Event>,
    /// Owner and creation time of labs by name (a lab deleted and created again under the
    /// same name, maybe by another member, is another lab: older events are not its own).
    owners: HashMap<String, (Option<String>, i64)>,
    checked: Instant,
    ended: bool,
}

impl Cursor {
    async fn visible(&mut self, e: &Event) -> bool {
        if let Some(l) = &self.lab {
            if e.lab.as_deref() != Some(l.as_str()) {
                return false;
            }
        }
        if self.caller.user.role != Role::Member {
            return true;
        }
        let Some(lab) = e.lab.clone() else {
            return false;
        };
        if !self.owners.contains_key(&lab) {
            let l2 = lab.clone();
            let owner = self
                .st
                .db
                .run(move |db| Ok(db.lab(&l2)?.map(|r| (r.owner, r.created_ms))))
                .await
                .unwrap_or(None)
                .unwrap_or((None, i64::MAX));
            self.owners.insert(lab.clone(), owner);
        }
        self.owners.get(&lab).is_some_and(|(owner, created_ms)| {
            owner.as_deref() == Some(self.caller.name()) && e.ts_ms >= *created_ms
        })
    }
}

/// State changes as server-sent events (`event:` is the kind: `lab.state`, `vm.state`,
/// `link.state`, `op.progress`, `op.state`, `lab.created`, `lab.deleted`; `data:` is JSON
/// with `id`, `ts_ms`, `lab`, `vm`, `kind`, `data`).
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this id")),
    responses((status = 200, description = "An endless text/event-stream", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    let from_header = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is an event id (a number)"))?,
        ),
    };
    let last = match q.after.or(from_header) {
        Some(a) if a < 0 => return Err(ApiError::bad_request("after is an event id (0 or more)")),
        Some(a) => a,
        None => st.db.run(|db| Ok(db.last_event_id()?)).await?,
    };
    let cursor = Cursor {
        st,
        caller,
        lab: q.lab,
        last,
        buf: VecDeque::new(),
        owners: HashMap::new(),
        checked: Instant::now(),
        ended: false,
    };
    let s = stream::unfold(cursor, |mut c| async move {
        loop {
            if c.ended {
                return None;
            }
            if c.checked.elapsed() >= auth::SESSION_CHECK {
                c.checked = Instant::now();
                if let Err(e) = auth::session_alive(&c.st, &c.caller).await {
                    c.ended = true;
                    let ev = SseEvent::default()
                        .event("session.ended")
                        .data(serde_json::json!({ "reason": e.to_string() }).to_string());
                    return Some((Ok::<_, Infallible>(ev), c));
                }
            }
            while let Some(e) = c.buf.pop_front() {
                if c.visible(&e).await {
                    let ev = SseEvent::default()
                        .id(e.id.to_string())
                        .event(e.kind.clone())
                        .data(serde_json::to_string(&e).unwrap_or_default());
                    return Some((Ok::<_, Infallible>(ev), c));
                }
            }
            let after = c.last;
            match c
                .st
                .db
                .run(move |db| Ok(db.events_after(after, 500)?))
                .await
            {
                Ok(v) if !v.is_empty() => {
                    c.last = v.last().map(|e| e.id).unwrap_or(after);
                    // A lab's owner may change (created after we cached "unknown").
                    c.owners.clear();
                    c.buf.extend(v);
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    Ok(Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
