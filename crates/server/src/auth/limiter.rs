//! The login limiter: failed logins per (user, client address) and per user in bounded
//! tables, and the gate on concurrent password hashes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{ApiError, ApiResult};

const LOGIN_WINDOW: Duration = Duration::from_secs(300);
const LOGIN_MAX_FAILURES: u32 = 5;
/// Failures of one user name (from any address) after which its password checks are delayed.
const USER_SLOW_AFTER: u32 = 20;
/// The delay of each password check of such a user name.
const USER_SLOW_DELAY: Duration = Duration::from_secs(1);
/// Most keys each table of the [`Limiter`] keeps (expired ones first, then the oldest go).
const LIMITER_CAP: usize = 10_000;
/// Password hashes (argon2id: ~19 MiB and tens of ms each) running at once.
pub const HASH_CONCURRENCY: usize = 2;
/// Password checks that may wait for a hashing slot; more are refused at once (503).
const HASH_QUEUE: usize = 16;
/// How long a password check waits for a hashing slot before 503.
const HASH_WAIT: Duration = Duration::from_secs(5);

/// What the [`Limiter`] says about a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Check after this delay (the user name is under attack from many addresses).
    Slow(Duration),
    /// Refuse (429) for this long: this address failed too often for this user.
    Locked(Duration),
}

struct Window {
    n: u32,
    since: Instant,
}

/// A bounded map of failure windows: at [`LIMITER_CAP`] keys, expired windows go first, then
/// the oldest.
#[derive(Default)]
struct Windows(HashMap<String, Window>);

impl Windows {
    fn get(&self, key: &str) -> Option<u32> {
        self.0
            .get(key)
            .filter(|w| w.since.elapsed() < LOGIN_WINDOW)
            .map(|w| w.n)
    }
    fn age(&self, key: &str) -> Duration {
        self.0
            .get(key)
            .map(|w| w.since.elapsed())
            .unwrap_or_default()
    }
    fn bump(&mut self, key: &str) {
        if !self.0.contains_key(key) && self.0.len() >= LIMITER_CAP {
            self.0.retain(|_, w| w.since.elapsed() < LOGIN_WINDOW);
            if self.0.len() >= LIMITER_CAP {
                if let Some(k) = self
                    .0
                    .iter()
                    .min_by_key(|(_, w)| w.since)
                    .map(|(k, _)| k.clone())
                {
                    self.0.remove(&k);
                }
            }
        }
        let w = self.0.entry(key.to_string()).or_insert(Window {
            n: 0,
            since: Instant::now(),
        });
        if w.since.elapsed() >= LOGIN_WINDOW {
            *w = Window {
                n: 0,
                since: Instant::now(),
            };
        }
        w.n += 1;
    }
}

#[derive(Default)]
struct Tables {
    /// Key `user \0 address`.
    pairs: Windows,
    /// Key `user`.
    users: Windows,
}

/// Failed logins per (user, client address) and per user, in bounded tables; and the gate on
/// concurrent password hashes.
pub struct Limiter {
    t: Mutex<Tables>,
    hashes: tokio::sync::Semaphore,
    waiting: AtomicUsize,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            t: Mutex::default(),
            hashes: tokio::sync::Semaphore::new(HASH_CONCURRENCY),
            waiting: AtomicUsize::new(0),
        }
    }
}

fn pair_key(user: &str, ip: &str) -> String {
    format!("{user}\0{ip}")
}

impl Limiter {
    pub fn check(&self, user: &str, ip: &str) -> Gate {
        let t = self.t.lock().unwrap_or_else(|e| e.into_inner());
        let k = pair_key(user, ip);
        if t.pairs.get(&k).is_some_and(|n| n >= LOGIN_MAX_FAILURES) {
            return Gate::Locked(LOGIN_WINDOW.saturating_sub(t.pairs.age(&k)));
        }
        if t.users.get(user).is_some_and(|n| n >= USER_SLOW_AFTER) {
            return Gate::Slow(USER_SLOW_DELAY);
        }
        Gate::Open
    }
    pub fn fail(&self, user: &str, ip: &str) {
        let mut t = self.t.lock().unwrap_or_else(|e| e.into_inner());
        t.pairs.bump(&pair_key(user, ip));
        t.users.bump(user);
    }
    /// A right password: this address's failures for the user are forgotten (the user's
    /// total is not: an attacker elsewhere is still guessing).
    pub fn clear(&self, user: &str, ip: &str) {
        let mut t = self.t.lock().unwrap_or_else(|e| e.into_inner());
        t.pairs.0.remove(&pair_key(user, ip));
    }
    /// Keys held (pairs, users).
    pub fn sizes(&self) -> (usize, usize) {
        let t = self.t.lock().unwrap_or_else(|e| e.into_inner());
        (t.pairs.0.len(), t.users.0.len())
    }
    /// A slot to hash a password in: waits up to [`HASH_WAIT`] behind at most [`HASH_QUEUE`]
    /// others, else 503 with `Retry-After`.
    pub async fn hashing(&self) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(p) = self.hashes.try_acquire() {
            return Ok(p);
        }
        let busy = || {
            let mut e = ApiError::unavailable(
                "the server is busy checking other passwords: try again in a second",
            );
            e.retry_after = Some(1);
            e
        };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= HASH_QUEUE {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy());
        }
        let r = tokio::time::timeout(HASH_WAIT, self.hashes.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match r {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::sync::Arc;

    #[test]
    fn a_pair_locks_after_five_failures_and_others_are_not_locked_out() {
        let l = Limiter::default();
        for _ in 0..LOGIN_MAX_FAILURES {
            assert_eq!(l.check("ann", "10.0.0.1"), Gate::Open);
            l.fail("ann", "10.0.0.1");
        }
        assert!(
            matches!(l.check("ann", "10.0.0.1"), Gate::Locked(d) if d > Duration::from_secs(290))
        );
        assert_eq!(l.check("ann", "10.0.0.2"), Gate::Open, "another address");
        assert_eq!(l.check("bob", "10.0.0.1"), Gate::Open, "another user");
    }

    #[test]
    fn many_addresses_slow_a_user_down_but_never_lock_it() {
        let l = Limiter::default();
        for i in 0..USER_SLOW_AFTER {
            l.fail("ann", &format!("10.0.{i}.1"));
        }
        assert_eq!(l.check("ann", "192.168.1.1"), Gate::Slow(USER_SLOW_DELAY));
        assert_eq!(l.check("bob", "192.168.1.1"), Gate::Open);
        l.clear("ann", "192.168.1.1");
        assert_eq!(l.check("ann", "192.168.1.1"), Gate::Slow(USER_SLOW_DELAY));
    }

    #[test]
    fn the_tables_are_bounded() {
        let l = Limiter::default();
        for i in 0..LIMITER_CAP + 500 {
            l.fail(&format!("u{i}"), "10.0.0.1");
        }
        let (pairs, users) = l.sizes();
        assert!(
            pairs <= LIMITER_CAP && users <= LIMITER_CAP,
            "{pairs} {users}"
        );
        // The newest key is there, the oldest went.
        let t = l.t.lock().unwrap();
        assert!(t.users.get(&format!("u{}", LIMITER_CAP + 499)).is_some());
        assert!(t.users.get("u0").is_none());
    }

    #[tokio::test]
    async fn hashing_slots_are_capped_and_excess_is_refused() {
        let l = Arc::new(Limiter::default());
        let held: Vec<_> = (0..HASH_CONCURRENCY)
            .map(|_| l.hashes.try_acquire().unwrap())
            .collect();
        // The queue fills; one more is refused at once with Retry-After.
        let mut waiters = Vec::new();
        for _ in 0..HASH_QUEUE {
            let l = l.clone();
            waiters.push(tokio::spawn(async move { l.hashing().await.map(|_| ()) }));
        }
        while l.waiting.load(Ordering::SeqCst) < HASH_QUEUE {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        let e = l.hashing().await.expect_err("refused");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(1));
        assert!(t0.elapsed() < Duration::from_millis(100));
        drop(held);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
    }
}
