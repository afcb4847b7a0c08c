//! A small pool of connections to the shared state database, so concurrent requests do not
//! queue on one SQLite connection; opening it creates the server's tables.
//!
//! The tables (`users` with argon2id hashes, role and quotas; `refresh_tokens` and `api_tokens`,
//! only SHA-256 hashes of the random secrets; `operations`, long-running calls and their
//! progress; `audit`, every mutating call: who, what, when, result) and every query on them
//! belong to `kobako-state` (`kobako_state::server_schema` and its modules): the server runs no
//! SQL.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kobako_state::Db;

use crate::error::{ApiError, ApiResult};

/// A few connections to the state database, handed out round-robin. Every call runs on the
/// blocking pool ([`Pool::run`]) so SQLite never blocks the async workers.
#[derive(Clone)]
pub struct Pool {
    dbs: Arc<Vec<Arc<Db>>>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    pub fn open(dir: &Path, size: usize) -> kobako_state::Result<Pool> {
        let mut dbs = Vec::new();
        for _ in 0..size.max(1) {
            let db = Db::open_in(dir)?;
            db.migrate_server()?;
            dbs.push(Arc::new(db));
        }
        Ok(Pool {
            dbs: Arc::new(dbs),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// One connection (for synchronous callers: admin commands, startup).
    pub fn get(&self) -> Arc<Db> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.dbs.len();
        self.dbs[i].clone()
    }

    /// Runs `f` with a connection on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> ApiResult<T> + Send + 'static,
    {
        let db = self.get();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(ApiError::internal)?
    }
}
