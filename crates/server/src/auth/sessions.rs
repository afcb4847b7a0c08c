//! Sessions: the per-user `token_gen` cache, single-use stream tickets, and the periodic
//! credential check that ends long-lived streams ([`session_alive`], [`session_end`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use kobako_state::now_ms;

use super::caller::{Caller, Credential};
use super::secrets::{random_token, token_hash};
use super::users::{current_user, user_gen};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// How often a long-lived stream re-checks its credential.
pub const SESSION_CHECK: Duration = Duration::from_secs(2);
/// Lifetime of a stream ticket (POST /auth/ticket).
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most tickets outstanding.
const TICKET_CAP: usize = 10_000;

/// Why a long-lived stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    #[error("session ended: the access token expired (get a new one and reconnect)")]
    Expired,
    #[error("session ended: the credential was revoked (password changed or token revoked): log in again")]
    Revoked,
    #[error("session ended: the user was removed")]
    UserRemoved,
    #[error("session ended: the user's role changed: reconnect")]
    RoleChanged,
}

struct Ticket {
    name: String,
    cred: Credential,
    at: Instant,
}

/// Per-user `token_gen` cache (valid while the database is unchanged) and stream tickets.
#[derive(Default)]
pub struct Sessions {
    gens: Mutex<(i64, HashMap<String, String>)>,
    tickets: Mutex<HashMap<String, Ticket>>,
}

impl Sessions {
    /// The user's current `token_gen` (`None`: no such user).
    pub async fn gen(&self, state: &AppState, name: &str) -> ApiResult<Option<String>> {
        let version = state.cache.version();
        if let Some(v) = version {
            let g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 == v {
                if let Some(x) = g.1.get(name) {
                    return Ok(Some(x.clone()));
                }
            }
        }
        let n = name.to_string();
        let gen = state.db.run(move |db| user_gen(db, &n)).await?;
        if let (Some(v), Some(x)) = (version, &gen) {
            let mut g = self.gens.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 != v || g.1.len() >= 4096 {
                g.0 = v;
                g.1.clear();
            }
            g.1.insert(name.to_string(), x.clone());
        }
        Ok(gen)
    }

    /// A single-use ticket standing for `caller`'s credential for [`TICKET_TTL`].
    pub fn issue(&self, caller: &Caller) -> ApiResult<String> {
        if caller.local {
            return Err(ApiError::unprocessable(
                "local_admin",
                "root on the Unix socket needs no ticket (and it would not work over HTTPS)",
            ));
        }
        let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= TICKET_CAP {
            t.retain(|_, v| v.at.elapsed() < TICKET_TTL);
        }
        if t.len() >= TICKET_CAP {
            let mut e = ApiError::unavailable("too many stream tickets outstanding: try again");
            e.retry_after = Some(TICKET_TTL.as_secs());
            return Err(e);
        }
        let secret = random_token(24);
        t.insert(
            token_hash(&secret),
            Ticket {
                name: caller.user.name.clone(),
                cred: caller.cred.clone(),
                at: Instant::now(),
            },
        );
        Ok(secret)
    }

    /// The (user, credential) of a ticket, which is used up.
    pub fn redeem(&self, secret: &str) -> Option<(String, Credential)> {
        let t = self
            .tickets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token_hash(secret))?;
        (t.at.elapsed() < TICKET_TTL).then_some((t.name, t.cred))
    }
}

/// Whether `caller`'s credential still holds: not expired, not revoked, the same user row
/// with the same role. Database errors count as alive (a stream is not cut by a hiccup).
pub async fn session_alive(state: &AppState, caller: &Caller) -> Result<(), SessionEnd> {
    let name = caller.user.name.clone();
    match &caller.cred {
        Credential::Local => return Ok(()),
        Credential::Access { gen, exp } => {
            if (now_ms() / 1000) as u64 > *exp {
                return Err(SessionEnd::Expired);
            }
            match state.sessions.gen(state, &name).await {
                Ok(None) => return Err(SessionEnd::UserRemoved),
                Ok(Some(g)) if &g != gen => return Err(SessionEnd::Revoked),
                _ => {}
            }
        }
        Credential::ApiToken { id } => {
            let id = id.clone();
            let row = state
                .db
                .run(move |db| Ok(db.api_token(&id)?.map(|t| (t.revoked, t.expires_ms))))
                .await;
            match row {
                Ok(None) => return Err(SessionEnd::UserRemoved),
                Ok(Some((true, _))) => return Err(SessionEnd::Revoked),
                Ok(Some((_, Some(e)))) if e < now_ms() => return Err(SessionEnd::Expired),
                _ => {}
            }
        }
    }
    match current_user(state, &name).await {
        Ok(u) if u.role != caller.user.role => Err(SessionEnd::RoleChanged),
        Ok(_) => Ok(()),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(SessionEnd::UserRemoved),
        Err(_) => Ok(()),
    }
}

/// Resolves when `caller`'s session ends (checked every [`SESSION_CHECK`]): for a
/// `tokio::select!` next to a WebSocket or stream.
pub async fn session_end(state: AppState, caller: Caller) -> SessionEnd {
    loop {
        tokio::time::sleep(SESSION_CHECK).await;
        if let Err(e) = session_alive(&state, &caller).await {
            return e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::{Role, User};

    #[test]
    fn tickets_are_single_use_and_need_a_stored_user() {
        let s = Sessions::default();
        let user = User {
            name: "ann".into(),
            role: Role::Member,
            max_vms: None,
            max_memory_mib: None,
            max_disk_mib: None,
            created_ms: 0,
        };
        let caller = Caller {
            user: user.clone(),
            local: false,
            cred: Credential::Access {
                gen: "g1".into(),
                exp: 1,
            },
        };
        let t = s.issue(&caller).unwrap();
        assert_eq!(s.redeem(&t), Some(("ann".into(), caller.cred.clone())));
        assert_eq!(s.redeem(&t), None, "used once");
        assert_eq!(s.redeem("made-up"), None);
        let root = Caller {
            user,
            local: true,
            cred: Credential::Local,
        };
        assert!(s.issue(&root).is_err());
    }
}
