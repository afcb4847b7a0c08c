//! The lab file model: parse, validate, resolve. No process or network side effects.
//!
//! ```text
//! text ──yaml──> MNode tree (positions, paths) ──serde──> RawLab ──resolve──> Vec<Lab>
//!                     └──────── every error located: file:line:col, path, fix ────────┘
//! ```
//!
//! - [`yaml`]: the document as a tree that keeps line/column and path of every value
//!   (`yaml-rust2` marked events; serde alone loses positions).
//! - [`raw`]: the file as written (serde, `deny_unknown_fields`); the JSON Schema comes from
//!   these types ([`json_schema`]).
//! - [`parse`]: deserialization that collects every structural error (unknown keys with
//!   did-you-mean, bad sizes/durations/percentages, wrong types), not just the first.
//! - [`resolve`]: defaults → template → node → VM, every name and address checked, derived
//!   values computed (MACs, addresses, lab id); [`model`] is the result.
//! - [`templates`]: node templates shipped with kobako.
//! - [`export`]: Mermaid/DOT graphs and the lab as a lab file again (`kobako save`).

pub mod de;
pub mod error;
pub mod export;
pub mod model;
pub mod parse;
pub mod raw;
pub mod resolve;
pub mod templates;
pub mod units;
pub mod yaml;

pub use error::{Path, Pos, SpecError, SpecErrors};
pub use model::*;
pub use raw::{LinkState, RawLab, Restart};
pub use resolve::{load_file, load_one, load_str, parse_lab, resolve, LabFile};
pub use units::{BitRate, MemMib, Micros, Percent};

/// The JSON Schema of lab files, pretty-printed (what `schema/lab.schema.json` holds).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawLab);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}

/// The JSON Schema of node template files (`templates/*.yaml`; `schema/template.schema.json`).
pub fn template_json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawNode);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}
