//! The `lab_net_policy` table (migration component `net_policy`): the host-network policy an
//! admin granted a lab; [`NetPolicyRow`] and the `Db` queries on it.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::{now_ms, Db, Result, StateError};

/// Host-network policy of a lab (component `net_policy`): what an admin allowed a lab beyond
/// the member defaults (published host ports, private ranges its uplink may reach). Bound to
/// the lab's owner, so a lab re-created under the same name by someone else gets nothing.
pub(crate) const NET_POLICY: &[&str] = &[r#"
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

impl Db {
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
}
