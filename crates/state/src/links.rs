//! The `links` table: a lab link's live state (up or down) and impairment; [`LinkRow`] and
//! the `Db` queries on it.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::{Db, Result, StateError};

/// A stored link's live state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkRow {
    pub lab: String,
    pub name: String,
    pub up: bool,
    /// Impairment as JSON (the lab model's `Impairment`), `None` = none.
    pub impairment: Option<serde_json::Value>,
}

impl Db {
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
}
