//! kobako's state store: one SQLite database, `kobako.db` under the state directory
//! (`/var/lib/kobako`, or `$KOBAKO_STATE`), shared by the CLI and the server.
//!
//! - **WAL mode**, `synchronous=NORMAL`, a 5 s busy timeout: readers never block the writer and
//!   the CLI and the server can work on the same file at once; a crash loses at most the last
//!   transactions, never consistency.
//! - **Migrations per component** (`schema_migrations(component, version)`): `core` (labs, VMs,
//!   links, events) and `net_policy` are applied on open; the API server's tables (components
//!   `server` and `tenancy`: users, tokens, operations, audit, see [`server_schema`]) when the
//!   server opens the database ([`Db::migrate_server`]).
//! - **Every query lives here**, next to its table, one module per table family (`labs`, `vms`,
//!   `links`, `events`, `net_policy`; `users`, `tokens`, `operations`, `audit` for the server's
//!   tables), as functions with typed arguments and rows; no other crate sees `rusqlite` or
//!   writes SQL. This file holds the connection, the migrations and the `core` schema.
//! - **Events** are rows with an increasing id, so a reader (the server's event stream) resumes
//!   from the last id it saw, whichever process wrote them.
//! - **Lab locks** ([`LabLock`], module `lock`) are `flock`s on files next to the database: a process that dies
//!   (kill -9) releases its lock with it, so a crashed `up` never blocks the next one.
//!
//! The store holds what was asked and what was seen (desired spec, per-VM state and reason,
//! link state, impairments); what runs is always read back from the host by the controller.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

/// `as_str`, `parse` and `Display` for a state enum stored as its lowercase name.
macro_rules! str_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod audit;
mod events;
mod labs;
mod links;
mod lock;
mod net_policy;
pub mod operations;
pub mod server_schema;
pub mod tokens;
pub mod users;
mod vms;

pub use audit::{AuditRow, NewAudit};
pub use events::{Event, EVENTS_KEPT};
pub use labs::{LabRow, LabState};
pub use links::LinkRow;
pub use lock::LabLock;
pub use net_policy::NetPolicyRow;
pub use operations::OperationRow;
pub use tokens::{ApiTokenRow, RefreshTokenRow};
pub use users::{NewUser, UserRow};
pub use vms::{VmRow, VmState};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sql {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state directory {path}: {source} (kobako keeps its state there; run as root or set KOBAKO_STATE to a writable directory)")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab '{lab}' is busy: another kobako process (pid {pid}) is changing it; wait for it or stop it")]
    Busy { lab: String, pid: String },
    #[error("stored {what} is not valid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// The state directory [`set_state_root`] fixed (the binary passes `$KOBAKO_STATE`), else
/// `/var/lib/kobako`.
pub fn state_root() -> PathBuf {
    STATE_ROOT
        .get_or_init(|| PathBuf::from("/var/lib/kobako"))
        .clone()
}

/// The state directory of this process, fixed by the first [`set_state_root`] or
/// [`state_root`].
static STATE_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the state directory for this process: the binary calls it once at start, before
/// anything asks for [`state_root`]. The first setting (or first use) holds; a later call is
/// ignored and returns false.
pub fn set_state_root(root: PathBuf) -> bool {
    STATE_ROOT.set(root).is_ok()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const CORE: &[&str] = &[r#"
CREATE TABLE labs(
    name        TEXT PRIMARY KEY,
    file        TEXT,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    owner       TEXT,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE vms(
    name        TEXT PRIMARY KEY,
    lab         TEXT NOT NULL REFERENCES labs(name) ON DELETE CASCADE,
    node        TEXT NOT NULL,
    vm          TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    boot_ms     INTEGER,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX vms_lab ON vms(lab);
CREATE TABLE links(
    lab         TEXT NOT NULL REFERENCES labs(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    up          INTEGER NOT NULL DEFAULT 1,
    impairment  TEXT,
    PRIMARY KEY(lab, name)
);
CREATE TABLE events(
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms       INTEGER NOT NULL,
    lab         TEXT,
    vm          TEXT,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX events_lab ON events(lab, id);
"#];

/// A connection to the state database. Cheap to share behind an `Arc`; calls are serialised
/// on its connection (open several for parallel readers).
pub struct Db {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if needed) `kobako.db` in [`state_root`].
    pub fn open() -> Result<Db> {
        Db::open_in(&state_root())
    }

    /// Opens (creating if needed) `kobako.db` in `dir`.
    pub fn open_in(dir: &Path) -> Result<Db> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("kobako.db");
        let sql = |source| StateError::Sql {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let db = Db {
            conn: Mutex::new(conn),
            path,
        };
        db.migrate("core", CORE)?;
        db.migrate("net_policy", net_policy::NET_POLICY)?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| StateError::Sql {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The connection (queries stay in this crate: no other crate runs SQL).
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `steps[v]` for every version `v` of `component` not applied yet, each in its own
    /// transaction (so concurrent openers apply each step once).
    pub(crate) fn migrate(&self, component: &str, steps: &[&str]) -> Result<()> {
        let e = self.err();
        let mut c = self.conn();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations(
                component TEXT NOT NULL, version INTEGER NOT NULL, applied_ms INTEGER NOT NULL,
                PRIMARY KEY(component, version))",
        )
        .map_err(&e)?;
        for (v, sql) in steps.iter().enumerate() {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(&e)?;
            let done: bool = tx
                .query_row(
                    "SELECT 1 FROM schema_migrations WHERE component = ?1 AND version = ?2",
                    params![component, v as i64],
                    |_| Ok(true),
                )
                .optional()
                .map_err(&e)?
                .unwrap_or(false);
            if !done {
                tx.execute_batch(sql).map_err(&e)?;
                tx.execute(
                    "INSERT INTO schema_migrations VALUES (?1, ?2, ?3)",
                    params![component, v as i64, now_ms()],
                )
                .map_err(&e)?;
            }
            tx.commit().map_err(&e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labs_vms_links_and_events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in(dir.path()).unwrap();
        let spec = serde_json::json!({"name": "l1", "nodes": []});
        db.put_lab("l1", Some("lab.yaml"), &spec, Some("alice"))
            .unwrap();
        db.sync_vms(
            "l1",
            &[
                ("l1.a.x".into(), "a".into(), "x".into()),
                ("l1.a.y".into(), "a".into(), "y".into()),
            ],
        )
        .unwrap();
        let start = db.last_event_id().unwrap();
        db.set_vm_state("l1.a.x", VmState::Booting, None, None)
            .unwrap();
        db.set_vm_state("l1.a.x", VmState::Ready, None, Some(812))
            .unwrap();
        // Same state again: no event.
        db.set_vm_state("l1.a.x", VmState::Ready, None, None)
            .unwrap();
        db.set_vm_state("l1.a.y", VmState::Failed, Some("no image 'nope'"), None)
            .unwrap();
        db.set_lab_state("l1", LabState::Degraded, Some("1 of 2 VMs failed"))
            .unwrap();
        db.set_link(
            "l1",
            "uplink",
            false,
            Some(&serde_json::json!({"delay": "100ms"})),
        )
        .unwrap();

        let lab = db.lab("l1").unwrap().unwrap();
        assert_eq!(lab.state, LabState::Degraded);
        assert_eq!(lab.owner.as_deref(), Some("alice"));
        assert_eq!(lab.spec, spec);
        let vms = db.vms("l1").unwrap();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].state, VmState::Ready);
        assert_eq!(vms[0].boot_ms, Some(812));
        assert_eq!(vms[1].reason.as_deref(), Some("no image 'nope'"));
        let links = db.links("l1").unwrap();
        assert!(!links[0].up);

        let ev = db.events_after(start, 100).unwrap();
        let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "vm.state",
                "vm.state",
                "vm.state",
                "lab.state",
                "link.state"
            ]
        );
        assert!(ev.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(ev[1].data["boot_ms"], 812);

        // A redeclared lab keeps surviving VMs' state and drops undeclared ones.
        db.put_lab("l1", Some("lab.yaml"), &spec, None).unwrap();
        db.sync_vms("l1", &[("l1.a.x".into(), "a".into(), "x".into())])
            .unwrap();
        let vms = db.vms("l1").unwrap();
        assert_eq!(vms.len(), 1);
        assert_eq!(vms[0].state, VmState::Ready);
        assert_eq!(
            db.lab("l1").unwrap().unwrap().owner.as_deref(),
            Some("alice")
        );

        assert!(db.delete_lab("l1").unwrap());
        assert!(db.vms("l1").unwrap().is_empty());
        assert!(db.links("l1").unwrap().is_empty());
        assert!(!db.delete_lab("l1").unwrap());
    }

    #[test]
    fn two_connections_share_the_file_and_migrations_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = Db::open_in(dir.path()).unwrap();
        let b = Db::open_in(dir.path()).unwrap();
        let mode: String = a
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        a.put_lab("x", None, &serde_json::json!({}), None).unwrap();
        assert!(b.lab("x").unwrap().is_some());
        b.migrate("extra", &["CREATE TABLE t1(a)", "CREATE TABLE t2(b)"])
            .unwrap();
        a.migrate("extra", &["CREATE TABLE t1(a)", "CREATE TABLE t2(b)"])
            .unwrap();
        let n: i64 = a
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM schema_migrations WHERE component = 'extra'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }
}
