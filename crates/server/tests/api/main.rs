//! The API cases that need no VM and no network, against the server's router in process
//! ([`app::App`]): authentication and tokens, what each role may do, and how bad input is
//! answered. What depends on the listeners (TLS, the Unix socket and its peer credentials,
//! the login limiter per client address, connection timeouts) or on the `kobako serve`
//! process is tested over a spawned server in `crates/cli/tests`.

mod app;
mod auth;
mod input;
mod roles;
