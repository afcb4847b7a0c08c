//! From text to raw types, collecting every structural error with its position.
//!
//! serde stops at the first error, so the document is deserialized in a loop: each error is
//! recorded with the position of its node in the tree, the offending node is removed from the
//! tree, and deserialization runs again (at most once per node), so one pass reports every
//! unknown key and bad value. A missing required field removes the enclosing entry.

use super::de::De;
use super::error::{suggest, Path, SpecError};
use super::yaml::{self, MNode};
use serde::de::DeserializeOwned;

/// One parsed source: its name and positioned tree (for locating later errors).
#[derive(Debug, Clone)]
pub struct Source {
    /// File name as shown in errors.
    pub file: String,
    /// The document as written (before any error recovery).
    pub root: MNode,
}

impl Source {
    /// An error at `path` (the value's position; the nearest existing parent if it is gone).
    pub fn error(&self, path: &Path, message: String, fix: Option<String>) -> SpecError {
        let n = self.root.deepest(path);
        SpecError {
            file: self.file.clone(),
            pos: n.pos,
            path: path.clone(),
            message,
            fix,
            limit: None,
        }
    }

    /// An error at the key naming the value at `path` (for names).
    pub fn key_error(&self, path: &Path, message: String, fix: Option<String>) -> SpecError {
        let n = self.root.deepest(path);
        SpecError {
            file: self.file.clone(),
            pos: n.key_pos,
            path: path.clone(),
            message,
            fix,
            limit: None,
        }
    }
}

fn convert_path(p: &serde_path_to_error::Path) -> Path {
    use serde_path_to_error::Segment;
    let mut out = Path::root();
    for seg in p.iter() {
        match seg {
            Segment::Seq { index } => out = out.index(*index),
            Segment::Map { key } => out = out.key(key),
            Segment::Enum { variant } => out = out.key(variant),
            Segment::Unknown => {}
        }
    }
    out
}

/// What a containerlab user writes instead, for keys of containerlab's topology format that
/// are not kobako's (`key` unknown at `at`).
fn containerlab_hint(key: &str, at: &Path) -> Option<&'static str> {
    let top = at.segs().len() == 1;
    Some(match key {
        "topology" if top => {
            "this looks like a containerlab topology: kobako runs one as it is when its file \
             is named *.clab.yml (`kobako up topo.clab.yml`), or converts it once with \
             `kobako import clab FILE -o lab.yaml`; a kobako lab file has `nodes:` and \
             `links:` at the top"
        }
        "mgmt" if top => {
            "containerlab's `mgmt`: every kobako VM has eth0 on the lab's management network \
             (`networks:` declares others, `uplink:` gives outbound access)"
        }
        "binds" => {
            "containerlab's `binds`: kobako copies files into the VM with `files:` \
             (`/guest/path: {src: HOST_PATH}` — host paths are for admins — or \
             `{content: ...}`)"
        }
        "kind" => "containerlab's `kind`: a kobako VM boots an `image:` (and `kernel:`)",
        "exec" => {
            "containerlab's `exec`: kobako runs commands as services with `run:` \
             (`- {name: setup, command: ..., restart: never}`)"
        }
        "startup-config" => {
            "containerlab's `startup-config`: put the file in place with `files:` and start \
             the daemon with `run:`"
        }
        _ => return None,
    })
}

/// Backquoted words of a serde message: "unknown field `x`, expected one of `a`, `b`".
fn backquoted(msg: &str) -> Vec<&str> {
    msg.split('`').skip(1).step_by(2).collect()
}

/// Deserializes `T` from a parsed tree, collecting all errors.
pub fn deserialize<T: DeserializeOwned>(src: &Source) -> (Option<T>, Vec<SpecError>) {
    let mut tree = src.root.clone();
    let mut errors = Vec::new();
    let mut removed: Vec<Path> = Vec::new();
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(De(&tree)) {
            Ok(v) => return (Some(v), errors),
            Err(e) => e,
        };
        let path = convert_path(err.path());
        let msg = err.inner().to_string();
        let (target, e) = if let Some(rest) = msg.strip_prefix("unknown field ") {
            let words = backquoted(rest);
            let key = words.first().copied().unwrap_or("?").to_string();
            let expected: Vec<&str> = words.iter().skip(1).copied().collect();
            // The path may or may not already end with the key.
            let target = if path.segs().last().map(String::as_str) == Some(key.as_str())
                && tree.get(&path).is_some()
                && tree.get(&path.key(&key)).is_none()
            {
                path.clone()
            } else {
                path.key(&key)
            };
            let n = tree.deepest(&target);
            let hint = suggest(&key, expected.iter().copied());
            let mut fix = if expected.is_empty() {
                "remove it".to_string()
            } else {
                format!("keys allowed here: {}", expected.join(", "))
            };
            if let Some(h) = containerlab_hint(&key, &target) {
                fix = format!("{h}; {fix}");
            }
            (
                target.clone(),
                SpecError {
                    file: src.file.clone(),
                    pos: n.key_pos,
                    path: n.path.clone(),
                    message: format!("unknown key '{key}'{hint}"),
                    fix: Some(fix),
                    limit: None,
                },
            )
        } else if let Some(rest) = msg.strip_prefix("missing field ") {
            let field = backquoted(rest).first().copied().unwrap_or("?").to_string();
            let n = tree.deepest(&path);
            (
                path.clone(),
                SpecError {
                    file: src.file.clone(),
                    pos: n.pos,
                    path: n.path.clone(),
                    message: format!("missing '{field}'"),
                    fix: Some(format!("add `{field}:` here")),
                    limit: None,
                },
            )
        } else {
            let n = tree.deepest(&path);
            let (message, fix) = explain(&msg, n);
            (
                path.clone(),
                SpecError {
                    file: src.file.clone(),
                    pos: n.pos,
                    path: n.path.clone(),
                    message,
                    fix,
                    limit: None,
                },
            )
        };
        // A field missing because its bad value was just dropped is not another mistake.
        let follow_on =
            e.message.starts_with("missing '") && removed.iter().any(|r| r.parent() == target);
        if !follow_on {
            errors.push(e);
        }
        removed.push(target.clone());
        if target.is_root() || !tree.remove(&target) {
            return (None, errors);
        }
    }
}

/// Turns a serde message into (message, fix).
fn explain(msg: &str, n: &MNode) -> (String, Option<String>) {
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        // "invalid type: string \"x\", expected u32"
        let expected = rest.split(", expected ").nth(1).unwrap_or("another type");
        let what = match expected {
            "u32" | "u16" | "u8" | "u64" | "i64" => "a whole number",
            "a string" => "a string",
            "a sequence" => "a list",
            "a boolean" => "true or false",
            e if e.starts_with("struct ") || e.starts_with("a map") => "a mapping of keys",
            e => e,
        };
        return (
            format!("expected {what}, found {}", n.type_name()),
            Some(format!("write {what} here")),
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let words = backquoted(rest);
        let v = words.first().copied().unwrap_or("?");
        let allowed: Vec<&str> = words.iter().skip(1).copied().collect();
        return (
            format!("unknown value '{v}'{}", suggest(v, allowed.iter().copied())),
            Some(format!("use one of: {}", allowed.join(", "))),
        );
    }
    if msg.starts_with("invalid value: integer") && msg.contains("expected u") {
        return (
            format!(
                "{} is out of range",
                msg.split('`').nth(1).unwrap_or("the number")
            ),
            Some("use a smaller non-negative number".into()),
        );
    }
    // Our own unit messages carry their fix after ": ".
    match msg.split_once(": write ") {
        Some((m, f)) => (m.to_string(), Some(format!("write {f}"))),
        None => (msg.to_string(), None),
    }
}

/// Parses `text` as YAML and deserializes `T`, with every error located.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> (Option<(T, Source)>, Vec<SpecError>) {
    let (root, mut errors) = match yaml::parse(file, text) {
        Ok(r) => r,
        Err(e) => return (None, e),
    };
    let src = Source {
        file: file.to_string(),
        root,
    };
    let (v, errs) = deserialize::<T>(&src);
    errors.extend(errs);
    (v.map(|v| (v, src)), errors)
}
