//! Exports of a resolved lab: Mermaid and Graphviz DOT graphs (`graph`), and the lab as a lab
//! file again (`kobako save`; `labfile`), written by a serde serializer into a YAML tree that
//! keeps mapping order (`yaml_writer`). The lab file written back is self-contained: every
//! value explicit (addresses, node-network addresses, services with names), templates
//! expanded, so it resolves to the same model without the templates it came from.
//!
//! Everything here is a method of [`Lab`](super::model::Lab): `to_mermaid`, `to_dot`, `to_raw`
//! and `to_yaml`.

mod graph;
mod labfile;
mod yaml_writer;
