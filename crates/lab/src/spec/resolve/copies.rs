//! `copies:`: which copies a lab file makes, and what the copies must not share (host ports).

use super::{spec_path, Resolver};
use crate::spec::model::*;
use std::collections::{HashMap, HashSet};

impl Resolver<'_> {
    /// The copies `copies:` asks for as (copy name, index); `[None]` for a lab without copies
    /// (or with broken `copies:`, already reported).
    pub(super) fn copies(&mut self) -> Vec<Option<(String, u32)>> {
        let Some(c) = &self.raw.copies else {
            return vec![None];
        };
        let at = self.lab_at(spec_path("copies"));
        match (&c.count, &c.names) {
            (Some(_), Some(_)) => {
                self.err(
                    &at,
                    "both `count` and `names` given".into(),
                    "keep one of them".to_string(),
                );
                vec![None]
            }
            (None, None) => {
                self.err(
                    &at,
                    "copies need `count` or `names`".into(),
                    "add `count: 3` or `names: [alice, bob]`".to_string(),
                );
                vec![None]
            }
            (Some(n), None) => {
                if *n == 0 || *n > 200 {
                    let at = self.lab_at(spec_path("copies.count"));
                    self.err(
                        &at,
                        format!("{n} copies: between 1 and 200 are allowed"),
                        "change the count".to_string(),
                    );
                    return vec![None];
                }
                (1..=*n).map(|i| Some((i.to_string(), i - 1))).collect()
            }
            (None, Some(names)) => {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    let at = self.lab_at(spec_path("copies.names").index(i));
                    if let Err(why) = check_name(n, 24, true) {
                        self.err(&at, format!("copy name '{n}' {why}"), None);
                    } else if !seen.insert(n.clone()) {
                        self.err(
                            &at,
                            format!("copy name '{n}' given twice"),
                            "names must be unique".to_string(),
                        );
                    }
                    out.push(Some((n.clone(), i as u32)));
                }
                if out.is_empty() {
                    self.err(
                        &at,
                        "no copy names".into(),
                        "list at least one name".to_string(),
                    );
                    return vec![None];
                }
                out
            }
        }
    }

    /// Copies must not publish the same host port (the first clash is reported).
    pub(super) fn check_copies_ports(&mut self, labs: &[Lab]) {
        if labs.len() < 2 {
            return;
        }
        let mut seen: HashMap<(u16, Proto), &str> = HashMap::new();
        for l in labs {
            for pp in &l.publish {
                if let Some(prev) = seen.insert((pp.host_port, pp.proto), l.name.as_str()) {
                    let at = self.lab_at(spec_path("copies"));
                    self.err(
                        &at,
                        format!(
                            "host port {} is published by copies '{prev}' and '{}'",
                            pp.host_port, l.name
                        ),
                        Some(format!(
                            "set copies.port_stride to at least {} (the number of published ports)",
                            l.publish.len()
                        )),
                    );
                    return;
                }
            }
        }
    }
}
