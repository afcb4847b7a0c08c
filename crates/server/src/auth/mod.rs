//! Authentication and authorisation.
//!
//! - **Users** have an argon2id password hash (PHC string), a role and optional quotas.
//! - **Login** returns a short-lived HS256 JWT access token (15 min) and a refresh token: 32
//!   random bytes, stored as a SHA-256 hash, valid 30 days, revocable, and rotated on every use
//!   (the old one is revoked when the new pair is issued).
//! - **API tokens** (`kbk_...`) for scripts: random, stored hashed, revocable, optional expiry.
//! - **The Unix socket** authenticates by the peer's credentials (`SO_PEERCRED`): uid 0 is the
//!   local admin `root`; the socket itself is `0600 root`.
//! - Every request re-reads the user, so a deleted user or a changed role takes effect at once.
//!   The JWT carries the name and the user row's `token_gen`, a random value made when the row
//!   is created and again when the password changes: a user deleted and created again under
//!   the same name, or whose password changed, does not accept the old access tokens. API and
//!   refresh tokens belong to the row (deleted with it) and are revoked by a password change.
//! - **Long-lived streams** (events, console, tty) re-check their credential every
//!   [`SESSION_CHECK`] ([`session_alive`]) and end when it expired, was revoked, or the user
//!   was removed or changed role. Browsers, which cannot set headers on EventSource and
//!   WebSocket requests, trade their token for a single-use 30 s `ticket` ([`Sessions`]).
//! - **Failed logins** ([`Limiter`]): 5 failures in 5 minutes lock a (user, client address)
//!   pair out for the rest of the window (429 with `Retry-After`), so one address cannot lock
//!   out a user for everybody else behind another proxy. Across all addresses, a user name with
//!   20 failures in the window gets every further password check delayed by 1 s (not refused):
//!   guessing from many addresses slows down, while the right password from a new address
//!   still gets in after that second. At most [`HASH_CONCURRENCY`] password hashes run at once;
//!   a few more wait up to 5 s, the rest are answered 503 with `Retry-After` at once. Login
//!   names over 64 bytes and passwords over 1024 bytes are refused (400) before any hashing.
//!
//! One file per concern: `users` (rows, roles, quotas), `passwords` (argon2id, policy,
//! input limits), `secrets` (random tokens and their hashes), `jwt` (access tokens),
//! `login` (password login, refresh-token rotation, logout), `api_tokens`, `caller` (who
//! is calling and what they may do), `extract` (the axum extractor), `sessions` (tickets and
//! stream checks) and `limiter` (failed logins, hashing slots). Everything is re-exported
//! here, so callers name `crate::auth::X`.

mod api_tokens;
mod caller;
mod extract;
mod jwt;
mod limiter;
mod login;
mod passwords;
mod secrets;
mod sessions;
mod users;

pub use api_tokens::{create_token, list_tokens, revoke_token, ApiToken};
pub use caller::{Caller, Credential};
pub use extract::{client_ip, UdsPeer};
pub use jwt::{Claims, Keys, ACCESS_TTL};
pub use limiter::{Gate, Limiter, HASH_CONCURRENCY};
pub use login::{check_password_of, issue_pair, login, logout, refresh, TokenPair, REFRESH_TTL};
pub use passwords::{
    check_login_input, check_password, hash_password, verify_or_dummy, verify_password,
    MAX_LOGIN_NAME, MAX_PASSWORD,
};
pub use secrets::{random_bytes, random_token, token_hash};
pub use sessions::{session_alive, session_end, SessionEnd, Sessions, SESSION_CHECK, TICKET_TTL};
pub use users::{
    add_user, bootstrap_admin, check_disk_quota, check_quota, check_user_name, count_users,
    delete_user, get_user, list_users, set_max_disk_mib, set_password, update_user, user_gen, Role,
    User,
};
