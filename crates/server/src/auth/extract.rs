//! The request extractor: turns a request into a [`Caller`] (root on the Unix socket by its
//! peer credentials, a stream ticket, a JWT access token or an API token), re-reading the user
//! on every request; and the client address the login limiter keys on.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::api_tokens::token_user;
use super::caller::{Caller, Credential};
use super::sessions::session_alive;
use super::users::{current_user, Role, User};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Peer of a Unix socket connection.
#[derive(Debug, Clone, Copy)]
pub struct UdsPeer {
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for UdsPeer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        UdsPeer {
            uid: s.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// The client's address for rate limiting ("local" on the Unix socket).
pub fn client_ip(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".into())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Caller> {
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<UdsPeer>>() {
            return local_caller(parts, *peer);
        }
        let bearer = bearer_header(parts);
        // Browsers cannot set headers on WebSocket and EventSource requests: they send a
        // single-use `ticket` (POST /api/v1/auth/ticket). `access_token` in the query is still
        // accepted for older clients (this server logs no URLs; proxies might).
        if bearer.is_none() {
            if let Some(t) = query_param(parts, "ticket=") {
                return ticket_caller(parts, state, &t).await;
            }
        }
        let bearer = bearer.or_else(|| query_param(parts, "access_token="));
        let Some(token) = bearer else {
            return Err(ApiError::unauthorized(
                "no credentials: send `Authorization: Bearer TOKEN` (POST /api/v1/auth/login gives one)",
            ));
        };
        token_caller(parts, state, token).await
    }
}

/// The token of an `Authorization: Bearer ...` header.
fn bearer_header(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|s| s.trim().to_string())
}

/// The value of the first query parameter starting with `key` (which ends in `=`).
fn query_param(parts: &Parts, key: &str) -> Option<String> {
    parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key))
        .map(str::to_string)
}

/// Root over the Unix socket (peer uid 0); anyone else there is refused.
fn local_caller(parts: &Parts, peer: UdsPeer) -> ApiResult<Caller> {
    if let Some(slot) = parts.extensions.get::<crate::AuditSlot>() {
        slot.0.lock().unwrap_or_else(|e| e.into_inner()).user =
            Some(format!("root (uid {:?})", peer.uid));
    }
    match peer.uid {
        Some(0) => Ok(Caller {
            user: User {
                name: "root".into(),
                role: Role::Admin,
                max_vms: None,
                max_memory_mib: None,
                max_disk_mib: None,
                created_ms: 0,
            },
            local: true,
            cred: Credential::Local,
        }),
        _ => Err(ApiError::forbidden(
            "the Unix socket is for root; use HTTPS with a token",
        )),
    }
}

/// The caller a stream ticket stands for (the ticket is used up), if its session still holds.
async fn ticket_caller(parts: &Parts, state: &AppState, ticket: &str) -> ApiResult<Caller> {
    let (name, cred) = state.sessions.redeem(ticket).ok_or_else(|| {
        ApiError::unauthorized(
            "ticket not known, already used or expired (tickets are single-use and \
             live 30 s): get a new one from POST /api/v1/auth/ticket",
        )
    })?;
    let user = current_user(state, &name).await?;
    let caller = Caller {
        user,
        local: false,
        cred,
    };
    session_alive(state, &caller)
        .await
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    audit_caller(parts, &caller.user.name);
    Ok(caller)
}

/// The caller of an API token (`kbk_...`) or of a JWT access token issued under the user
/// row's current `token_gen`.
async fn token_caller(parts: &Parts, state: &AppState, token: String) -> ApiResult<Caller> {
    let keys = state.keys.clone();
    let (name, cred) = if token.starts_with("kbk_") {
        let (id, user) = state.db.run(move |db| token_user(db, &token)).await?;
        (user, Credential::ApiToken { id })
    } else {
        let c = keys.verify(&token)?;
        (
            c.sub,
            Credential::Access {
                gen: c.gen,
                exp: c.exp,
            },
        )
    };
    let user = current_user(state, &name).await?;
    if let Credential::Access { gen, .. } = &cred {
        if state.sessions.gen(state, &name).await?.as_deref() != Some(gen.as_str()) {
            return Err(ApiError::unauthorized(
                "access token is from an earlier session of this user (password changed, \
                 or the user was removed and created again): log in again",
            ));
        }
    }
    audit_caller(parts, &user.name);
    Ok(Caller {
        user,
        local: false,
        cred,
    })
}

fn audit_caller(parts: &Parts, name: &str) {
    if let Some(slot) = parts.extensions.get::<crate::AuditSlot>() {
        slot.0.lock().unwrap_or_else(|e| e.into_inner()).user = Some(name.to_string());
    }
}
