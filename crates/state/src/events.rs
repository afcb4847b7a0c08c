//! The `events` table: state changes as rows with an increasing id, pruned to the newest
//! [`EVENTS_KEPT`]; [`Event`] and the `Db` queries that append and read them.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::{now_ms, Db, Result};

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

/// How many events are kept (older ones are pruned as new ones arrive).
pub const EVENTS_KEPT: i64 = 20_000;

impl Db {
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
