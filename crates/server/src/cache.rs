//! Read cache for the hot read paths (`GET /labs/{name}`, the caller's user row).
//!
//! Every reader used to pay three trips to the blocking pool and five SQL queries per request
//! (user row, lab row, VMs twice, links) plus a JSON re-parse of the stored spec. Now a lab's
//! response body is built once and served as bytes until the database changes.
//!
//! Validity comes from SQLite itself: `PRAGMA data_version` on a connection that never writes
//! changes whenever *any* other connection — this server's pool, the CLI, a lab controller in
//! another process — commits. One such check costs a few microseconds (it reads the WAL index
//! header), so it is done on every lookup, inline on the async worker. Lab bodies also expire
//! after [`LAB_TTL`], because one field is not in the database: whether a VM's process is still
//! alive (its pid), which the body reports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use kobako_state::Db;

use crate::auth::User;

/// How long a lab body may be served without re-reading pids from the host.
pub const LAB_TTL: Duration = Duration::from_millis(250);

/// Most labs kept (bodies are small; this only bounds a flood of distinct names).
const MAX_LABS: usize = 4096;

/// A lab's ready-to-send `GET /labs/{name}` body and the owner it was authorised against.
pub struct CachedLab {
    pub owner: Option<String>,
    pub body: Bytes,
    at: Instant,
}

impl CachedLab {
    pub fn new(owner: Option<String>, body: Bytes) -> CachedLab {
        CachedLab {
            owner,
            body,
            at: Instant::now(),
        }
    }
}

#[derive(Default)]
struct Inner {
    version: i64,
    users: HashMap<String, User>,
    labs: HashMap<String, Arc<CachedLab>>,
}

pub struct ReadCache {
    watch: Db,
    inner: Mutex<Inner>,
}

impl ReadCache {
    pub fn new(watch: Db) -> ReadCache {
        ReadCache {
            watch,
            inner: Mutex::new(Inner {
                version: i64::MIN,
                ..Default::default()
            }),
        }
    }

    /// The database's change counter as seen by the watch connection (`None`: unreadable,
    /// then nothing is served from the cache).
    pub fn version(&self) -> Option<i64> {
        self.watch.data_version().ok()
    }

    /// The inner maps, emptied first if the database changed since they were filled.
    fn current(&self) -> Option<(std::sync::MutexGuard<'_, Inner>, i64)> {
        let v = self.version()?;
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.version != v {
            g.users.clear();
            g.labs.clear();
            g.version = v;
        }
        Some((g, v))
    }

    pub fn user(&self, name: &str) -> Option<User> {
        let (g, _) = self.current()?;
        g.users.get(name).cloned()
    }

    /// Remembers `user` as read when the database was at `version`.
    pub fn put_user(&self, version: i64, user: &User) {
        if let Some((mut g, v)) = self.current() {
            if v == version && g.users.len() < MAX_LABS {
                g.users.insert(user.name.clone(), user.clone());
            }
        }
    }

    pub fn lab(&self, name: &str) -> Option<Arc<CachedLab>> {
        let (g, _) = self.current()?;
        g.labs
            .get(name)
            .filter(|c| c.at.elapsed() < LAB_TTL)
            .cloned()
    }

    /// Remembers a lab body built from reads that started when the database was at `version`
    /// (a commit in between leaves it out: the next reader builds it again).
    pub fn put_lab(&self, version: i64, name: &str, owner: Option<String>, body: Bytes) {
        if let Some((mut g, v)) = self.current() {
            if v != version {
                return;
            }
            if g.labs.len() >= MAX_LABS {
                g.labs.clear();
            }
            g.labs
                .insert(name.to_string(), Arc::new(CachedLab::new(owner, body)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn user(name: &str, role: Role) -> User {
        User {
            name: name.into(),
            role,
            max_vms: None,
            max_memory_mib: None,
            max_disk_mib: None,
            created_ms: 0,
        }
    }

    /// A commit by another connection (another process in real life) empties the cache.
    #[test]
    fn a_commit_elsewhere_invalidates() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReadCache::new(Db::open_in(dir.path()).unwrap());
        let writer = Db::open_in(dir.path()).unwrap();
        let v = cache.version().unwrap();
        cache.put_user(v, &user("ann", Role::Member));
        cache.put_lab(v, "l1", Some("ann".into()), Bytes::from_static(b"{}"));
        assert_eq!(cache.user("ann").unwrap().role, Role::Member);
        assert_eq!(&cache.lab("l1").unwrap().body[..], b"{}");
        writer
            .put_lab("other", None, &serde_json::json!({}), None)
            .unwrap();
        assert!(
            cache.user("ann").is_none(),
            "a commit must invalidate users"
        );
        assert!(cache.lab("l1").is_none(), "a commit must invalidate labs");
    }

    /// A body built from reads that straddled a commit is not kept.
    #[test]
    fn stale_builds_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReadCache::new(Db::open_in(dir.path()).unwrap());
        let writer = Db::open_in(dir.path()).unwrap();
        let v = cache.version().unwrap();
        writer
            .put_lab("other", None, &serde_json::json!({}), None)
            .unwrap();
        cache.put_lab(v, "l1", None, Bytes::from_static(b"{}"));
        assert!(cache.lab("l1").is_none());
    }

    #[test]
    fn lab_bodies_expire() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ReadCache::new(Db::open_in(dir.path()).unwrap());
        let v = cache.version().unwrap();
        cache.put_lab(v, "l1", None, Bytes::from_static(b"{}"));
        assert!(cache.lab("l1").is_some());
        std::thread::sleep(LAB_TTL + Duration::from_millis(20));
        assert!(cache.lab("l1").is_none());
    }
}
