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
//! - **Every query lives here**, next to its table (`users`, `tokens`, `operations`, `audit`
//!   modules for the server's tables), as functions with typed arguments and rows; no other
//!   crate sees `rusqlite` or writes SQL.
//! - **Events** are rows with an increasing id, so a reader (the server's event stream) resumes
//!   from the last id it saw, whichever process wrote them.
//! - **Lab locks** ([`LabLock`]) are `flock`s on files next to the database: a process that dies
//!   (kill -9) releases its lock with it, so a crashed `up` never blocks the next one.
//!
//! The store holds what was asked and what was seen (desired spec, per-VM state and reason,
//! link state, impairments); what runs is always read back from the host by the controller.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

pub mod audit;
pub mod operations;
pub mod server_schema;
pub mod tokens;
pub mod users;

pub use audit::{AuditRow, NewAudit};
pub use operations::OperationRow;
pub use tokens::{ApiTokenRow, RefreshTokenRow};
pub use users::{NewUser, UserRow};

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

/// State of one VM as the controller saw it last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Declared, not started yet.
    Pending,
    /// Its process runs; the agent has not said Ready yet (or it is being configured).
    Booting,
    /// Agent ready and configured.
    Ready,
    /// Could not be started or configured; `reason` says why.
    Failed,
    /// Not running (stopped by a user, or found gone).
    Stopped,
}

/// State of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabState {
    Pending,
    Starting,
    /// Every VM ready.
    Ready,
    /// Up, but some VMs failed or stopped.
    Degraded,
    /// `up` failed before any VM could start (network, bad image, ...).
    Failed,
    Stopping,
    Stopped,
}

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

str_enum!(VmState { Pending => "pending", Booting => "booting", Ready => "ready", Failed => "failed", Stopped => "stopped" });
str_enum!(LabState { Pending => "pending", Starting => "starting", Ready => "ready", Degraded => "degraded", Failed => "failed", Stopping => "stopping", Stopped => "stopped" });

/// A stored lab.
#[derive(Debug, Clone, Serialize)]
pub struct LabRow {
    pub name: String,
    /// The lab file it came from, if any.
    pub file: Option<String>,
    /// The resolved lab (JSON of `kobako_lab::spec::Lab`).
    pub spec: serde_json::Value,
    pub state: LabState,
    pub reason: Option<String>,
    /// User who owns it (the server's users; `None` = created locally by root).
    pub owner: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A stored VM.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VmRow {
    /// Runtime name `<lab>.<node>.<vm>`.
    pub name: String,
    pub lab: String,
    pub node: String,
    pub vm: String,
    pub state: VmState,
    pub reason: Option<String>,
    pub boot_ms: Option<i64>,
    pub updated_ms: i64,
}

/// A stored link's live state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkRow {
    pub lab: String,
    pub name: String,
    pub up: bool,
    /// Impairment as JSON (the lab model's `Impairment`), `None` = none.
    pub impairment: Option<serde_json::Value>,
}

/// One state change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: i64,
    pub ts_ms: i64,
    pub lab: Option<String>,
    pub vm: Option<String>,
    /// `lab.state`, `vm.state`, `link.state`, `link.impairment`, `op.progress`, ...
    pub kind: String,
    pub data: serde_json::Value,
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

/// Host-network policy of a lab (component `net_policy`): what an admin allowed a lab beyond
/// the member defaults (published host ports, private ranges its uplink may reach). Bound to
/// the lab's owner, so a lab re-created under the same name by someone else gets nothing.
const NET_POLICY: &[&str] = &[r#"
CREATE TABLE lab_net_policy(
    lab         TEXT PRIMARY KEY,
    owner       TEXT,
    policy      TEXT NOT NULL,
    set_by      TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);
"#];

/// A lab's stored host-network policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetPolicyRow {
    pub lab: String,
    /// The owner the policy was granted to (`None`: a lab without owner, i.e. local).
    pub owner: Option<String>,
    /// The policy as JSON (the lab controller's `NetPolicy`).
    pub policy: serde_json::Value,
    /// The admin who set it.
    pub set_by: String,
    pub updated_ms: i64,
}

/// How many events are kept (older ones are pruned as new ones arrive).
pub const EVENTS_KEPT: i64 = 20_000;

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
        db.migrate("net_policy", NET_POLICY)?;
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

    // ---- labs ----------------------------------------------------------------------------

    /// Inserts or replaces a lab's desired spec (keeps its VMs' rows and creation time).
    pub fn put_lab(
        &self,
        name: &str,
        file: Option<&str>,
        spec: &serde_json::Value,
        owner: Option<&str>,
    ) -> Result<()> {
        let now = now_ms();
        self.conn()
            .execute(
                "INSERT INTO labs(name, file, spec, state, owner, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?5)
                 ON CONFLICT(name) DO UPDATE SET file = excluded.file, spec = excluded.spec,
                     owner = COALESCE(labs.owner, excluded.owner), updated_ms = excluded.updated_ms",
                params![name, file, spec.to_string(), owner, now],
            )
            .map_err(self.err())?;
        Ok(())
    }

    fn lab_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(LabRow, String)> {
        let spec: String = r.get(2)?;
        let state: String = r.get(3)?;
        Ok((
            LabRow {
                name: r.get(0)?,
                file: r.get(1)?,
                spec: serde_json::Value::Null,
                state: LabState::parse(&state).unwrap_or(LabState::Failed),
                reason: r.get(4)?,
                owner: r.get(5)?,
                created_ms: r.get(6)?,
                updated_ms: r.get(7)?,
            },
            spec,
        ))
    }

    fn finish_lab((mut row, spec): (LabRow, String)) -> Result<LabRow> {
        row.spec = serde_json::from_str(&spec).map_err(|source| StateError::Json {
            what: format!("spec of lab '{}'", row.name),
            source,
        })?;
        Ok(row)
    }

    const LAB_COLS: &'static str = "name, file, spec, state, reason, owner, created_ms, updated_ms";

    pub fn lab(&self, name: &str) -> Result<Option<LabRow>> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {} FROM labs WHERE name = ?1", Self::LAB_COLS),
                params![name],
                Self::lab_from_row,
            )
            .optional()
            .map_err(self.err())?;
        row.map(Self::finish_lab).transpose()
    }

    pub fn labs(&self) -> Result<Vec<LabRow>> {
        let rows = {
            let c = self.conn();
            let mut st = c
                .prepare(&format!(
                    "SELECT {} FROM labs ORDER BY name",
                    Self::LAB_COLS
                ))
                .map_err(self.err())?;
            let it = st.query_map([], Self::lab_from_row).map_err(self.err())?;
            it.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.err())?
        };
        rows.into_iter().map(Self::finish_lab).collect()
    }

    /// Sets a lab's state (and records a `lab.state` event when it changed).
    pub fn set_lab_state(&self, name: &str, state: LabState, reason: Option<&str>) -> Result<()> {
        let changed = self
            .conn()
            .execute(
                "UPDATE labs SET state = ?2, reason = ?3, updated_ms = ?4
                 WHERE name = ?1 AND (state IS NOT ?2 OR reason IS NOT ?3)",
                params![name, state.as_str(), reason, now_ms()],
            )
            .map_err(self.err())?;
        if changed > 0 {
            self.event(
                Some(name),
                None,
                "lab.state",
                &serde_json::json!({"state": state, "reason": reason}),
            )?;
        }
        Ok(())
    }

    /// Removes a lab and everything stored about it (VMs, links; events stay).
    pub fn delete_lab(&self, name: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM labs WHERE name = ?1", params![name])
            .map_err(self.err())?;
        Ok(n > 0)
    }

    // ---- host-network policy ---------------------------------------------------------------

    /// The policy stored for lab `lab` (whoever it was granted to).
    pub fn net_policy(&self, lab: &str) -> Result<Option<NetPolicyRow>> {
        let row = self
            .conn()
            .query_row(
                "SELECT lab, owner, policy, set_by, updated_ms FROM lab_net_policy WHERE lab = ?1",
                params![lab],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(self.err())?;
        row.map(|(lab, owner, policy, set_by, updated_ms)| {
            let policy = serde_json::from_str(&policy).map_err(|source| StateError::Json {
                what: format!("network policy of lab '{lab}'"),
                source,
            })?;
            Ok(NetPolicyRow {
                lab,
                owner,
                policy,
                set_by,
                updated_ms,
            })
        })
        .transpose()
    }

    /// Stores (replaces) the policy of lab `lab`, granted to `owner`.
    pub fn put_net_policy(
        &self,
        lab: &str,
        owner: Option<&str>,
        policy: &serde_json::Value,
        set_by: &str,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO lab_net_policy(lab, owner, policy, set_by, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(lab) DO UPDATE SET owner = excluded.owner, policy = excluded.policy,
                     set_by = excluded.set_by, updated_ms = excluded.updated_ms",
                params![lab, owner, policy.to_string(), set_by, now_ms()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    // ---- VMs -----------------------------------------------------------------------------

    /// Makes the lab's VM rows exactly `vms` (`(name, node, vm)`): new ones `pending`, existing
    /// ones keep their state, rows of VMs no longer declared are removed.
    pub fn sync_vms(&self, lab: &str, vms: &[(String, String, String)]) -> Result<()> {
        let e = self.err();
        let mut c = self.conn();
        let tx = c.transaction().map_err(&e)?;
        let now = now_ms();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO vms(name, lab, node, vm, state, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5) ON CONFLICT(name) DO NOTHING",
                )
                .map_err(&e)?;
            for (name, node, vm) in vms {
                ins.execute(params![name, lab, node, vm, now]).map_err(&e)?;
            }
        }
        let keep: Vec<&str> = vms.iter().map(|v| v.0.as_str()).collect();
        let existing: Vec<String> = {
            let mut st = tx
                .prepare("SELECT name FROM vms WHERE lab = ?1")
                .map_err(&e)?;
            let it = st.query_map(params![lab], |r| r.get(0)).map_err(&e)?;
            it.collect::<rusqlite::Result<_>>().map_err(&e)?
        };
        for n in existing.iter().filter(|n| !keep.contains(&n.as_str())) {
            tx.execute("DELETE FROM vms WHERE name = ?1", params![n])
                .map_err(&e)?;
        }
        tx.commit().map_err(&e)
    }

    /// Sets a VM's state; `boot_ms` is kept when `None`. Records a `vm.state` event on change.
    pub fn set_vm_state(
        &self,
        name: &str,
        state: VmState,
        reason: Option<&str>,
        boot_ms: Option<i64>,
    ) -> Result<()> {
        let (lab, changed) = {
            let c = self.conn();
            let changed = c
                .execute(
                    "UPDATE vms SET state = ?2, reason = ?3, boot_ms = COALESCE(?4, boot_ms),
                         updated_ms = ?5
                     WHERE name = ?1 AND (state IS NOT ?2 OR reason IS NOT ?3
                         OR (?4 IS NOT NULL AND boot_ms IS NOT ?4))",
                    params![name, state.as_str(), reason, boot_ms, now_ms()],
                )
                .map_err(self.err())?;
            let lab: Option<String> = c
                .query_row("SELECT lab FROM vms WHERE name = ?1", params![name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(self.err())?;
            (lab, changed)
        };
        if changed > 0 {
            self.event(
                lab.as_deref(),
                Some(name),
                "vm.state",
                &serde_json::json!({"state": state, "reason": reason, "boot_ms": boot_ms}),
            )?;
        }
        Ok(())
    }

    fn vm_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VmRow> {
        let s: String = r.get(4)?;
        Ok(VmRow {
            name: r.get(0)?,
            lab: r.get(1)?,
            node: r.get(2)?,
            vm: r.get(3)?,
            state: VmState::parse(&s).unwrap_or(VmState::Failed),
            reason: r.get(5)?,
            boot_ms: r.get(6)?,
            updated_ms: r.get(7)?,
        })
    }

    const VM_COLS: &'static str = "name, lab, node, vm, state, reason, boot_ms, updated_ms";

    pub fn vms(&self, lab: &str) -> Result<Vec<VmRow>> {
        let c = self.conn();
        let mut st = c
            .prepare(&format!(
                "SELECT {} FROM vms WHERE lab = ?1 ORDER BY rowid",
                Self::VM_COLS
            ))
            .map_err(self.err())?;
        let it = st
            .query_map(params![lab], Self::vm_from_row)
            .map_err(self.err())?;
        it.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// The VM row with runtime name `name` (`<lab>.<node>.<vm>`).
    pub fn vm(&self, name: &str) -> Result<Option<VmRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {} FROM vms WHERE name = ?1", Self::VM_COLS),
                params![name],
                Self::vm_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    // ---- links ---------------------------------------------------------------------------

    /// Stores a link's state and impairment (an event records the change).
    pub fn set_link(
        &self,
        lab: &str,
        link: &str,
        up: bool,
        impairment: Option<&serde_json::Value>,
    ) -> Result<()> {
        let imp = impairment.map(|v| v.to_string());
        let changed = self
            .conn()
            .execute(
                "INSERT INTO links(lab, name, up, impairment) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(lab, name) DO UPDATE SET up = excluded.up,
                     impairment = excluded.impairment
                 WHERE links.up IS NOT excluded.up OR links.impairment IS NOT excluded.impairment",
                params![lab, link, up, imp],
            )
            .map_err(self.err())?;
        if changed > 0 {
            self.event(
                Some(lab),
                None,
                "link.state",
                &serde_json::json!({"link": link, "up": up, "impairment": impairment}),
            )?;
        }
        Ok(())
    }

    pub fn links(&self, lab: &str) -> Result<Vec<LinkRow>> {
        let rows: Vec<(String, String, bool, Option<String>)> = {
            let c = self.conn();
            let mut st = c
                .prepare("SELECT lab, name, up, impairment FROM links WHERE lab = ?1 ORDER BY name")
                .map_err(self.err())?;
            let it = st
                .query_map(params![lab], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(self.err())?;
            it.collect::<rusqlite::Result<_>>().map_err(self.err())?
        };
        rows.into_iter()
            .map(|(lab, name, up, imp)| {
                let impairment =
                    imp.map(|s| serde_json::from_str(&s))
                        .transpose()
                        .map_err(|source| StateError::Json {
                            what: format!("impairment of link '{name}'"),
                            source,
                        })?;
                Ok(LinkRow {
                    lab,
                    name,
                    up,
                    impairment,
                })
            })
            .collect()
    }

    // ---- events --------------------------------------------------------------------------

    /// Appends an event; returns its id.
    pub fn event(
        &self,
        lab: Option<&str>,
        vm: Option<&str>,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<i64> {
        let c = self.conn();
        c.execute(
            "INSERT INTO events(ts_ms, lab, vm, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), lab, vm, kind, data.to_string()],
        )
        .map_err(self.err())?;
        let id = c.last_insert_rowid();
        if id % 1000 == 0 {
            c.execute(
                "DELETE FROM events WHERE id <= ?1",
                params![id - EVENTS_KEPT],
            )
            .map_err(self.err())?;
        }
        Ok(id)
    }

    /// Events with an id greater than `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<Event>> {
        let c = self.conn();
        let mut st = c
            .prepare(
                "SELECT id, ts_ms, lab, vm, kind, data FROM events WHERE id > ?1
                 ORDER BY id LIMIT ?2",
            )
            .map_err(self.err())?;
        let it = st
            .query_map(params![after, limit as i64], |r| {
                let data: String = r.get(5)?;
                Ok(Event {
                    id: r.get(0)?,
                    ts_ms: r.get(1)?,
                    lab: r.get(2)?,
                    vm: r.get(3)?,
                    kind: r.get(4)?,
                    data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                })
            })
            .map_err(self.err())?;
        it.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// The id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> Result<i64> {
        self.conn()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))
            .map_err(self.err())
    }
}

/// An exclusive lock on one lab (`<state>/locks/<lab>.lock`, `flock`): held by the process that
/// changes the lab, released when it drops the lock or dies.
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Takes the lock, waiting up to `wait`; [`StateError::Busy`] names the holder's pid.
    pub fn acquire(lab: &str, wait: Duration) -> Result<LabLock> {
        Self::acquire_in(&state_root(), lab, wait)
    }

    pub fn acquire_in(root: &Path, lab: &str, wait: Duration) -> Result<LabLock> {
        let dir = root.join("locks");
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(format!("{lab}.lock"));
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            if Instant::now() >= deadline {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(StateError::Busy {
                    lab: lab.into(),
                    pid: pid.trim().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        use std::io::{Seek, Write};
        let mut f = &file;
        let _ = f.set_len(0);
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = write!(f, "{}", std::process::id());
        Ok(LabLock { _file: file })
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

    #[test]
    fn lab_lock_is_exclusive_and_dies_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let l = LabLock::acquire_in(dir.path(), "lab", Duration::ZERO).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        let e = LabLock::acquire_in(dir.path(), "lab", Duration::from_millis(120)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("busy") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(l);
        LabLock::acquire_in(dir.path(), "lab", Duration::ZERO).unwrap();
    }
}
