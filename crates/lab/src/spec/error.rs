//! Errors of the lab file model: each one names the file, the line and column, the path in the
//! document and, where there is one, the fix.

use serde::{Serialize, Serializer};
use std::fmt;

/// A position in a lab file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A path in a lab document, e.g. `nodes.web.vms.api.memory` or `links[0].endpoints[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Path(Vec<Seg>);

impl Path {
    /// The document itself.
    pub fn root() -> Path {
        Path(Vec::new())
    }

    /// Parses a dotted path (`a.b[2].c`); keys holding `.` or `[` cannot be written this way.
    pub fn parse(s: &str) -> Path {
        let mut p = Path::root();
        for part in s.split('.').filter(|x| !x.is_empty()) {
            let mut rest = part;
            if let Some(i) = rest.find('[') {
                if i > 0 {
                    p = p.key(&rest[..i]);
                }
                rest = &rest[i..];
                while let Some(r) = rest.strip_prefix('[') {
                    let end = r.find(']').unwrap_or(r.len());
                    if let Ok(n) = r[..end].parse() {
                        p = p.index(n);
                    }
                    rest = r.get(end + 1..).unwrap_or("");
                }
            } else {
                p = p.key(rest);
            }
        }
        p
    }

    /// This path plus a mapping key.
    pub fn key(&self, k: &str) -> Path {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        Path(v)
    }

    /// This path plus a sequence index.
    pub fn index(&self, i: usize) -> Path {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Path(v)
    }

    /// The segments as strings (indices in decimal).
    pub fn segs(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|s| match s {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => i.to_string(),
            })
            .collect()
    }

    /// The path without its last segment.
    pub fn parent(&self) -> Path {
        let mut v = self.0.clone();
        v.pop();
        Path(v)
    }

    /// True for the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Path {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    let plain = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    if !plain {
                        write!(f, "[{k:?}]")?;
                    } else if i == 0 {
                        f.write_str(k)?;
                    } else {
                        write!(f, ".{k}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One mistake in a lab file (serializes as `{file, pos: {line, col}, path, message, fix}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecError {
    /// The file, as given (or `<builtin>/NAME.yaml` for a template shipped with kobako).
    pub file: String,
    /// Where.
    pub pos: Pos,
    /// Path in the document.
    pub path: Path,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: Option<String>,
    /// Set when the document broke one of the parser's limits ([`Limit`]): the file was not
    /// read to its end, so this is the only error reported. Callers answer it differently
    /// (the API: 400/413 instead of 422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
}

/// A limit of the lab and scenario file parser, broken by a document (see
/// [`super::yaml::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The text is larger than [`super::yaml::Limits::max_bytes`].
    Size,
    /// More values than [`super::yaml::Limits::max_values`], aliases expanded.
    Values,
    /// Deeper than [`super::yaml::Limits::max_depth`].
    Depth,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.pos.line, self.pos.col, self.path, self.message
        )?;
        if let Some(fix) = &self.fix {
            write!(f, "\n    fix: {fix}")?;
        }
        Ok(())
    }
}

/// All the mistakes found in a lab file (never empty), in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(transparent)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    /// The errors.
    pub fn errors(&self) -> &[SpecError] {
        &self.0
    }

    /// True if some error's message contains `needle` (for tests and tools).
    pub fn contains(&self, needle: &str) -> bool {
        self.0.iter().any(|e| e.message.contains(needle))
    }

    /// The limit the document broke, if that is why it was refused.
    pub fn limit(&self) -> Option<Limit> {
        self.0.iter().find_map(|e| e.limit)
    }

    pub(crate) fn sorted(mut v: Vec<SpecError>) -> SpecErrors {
        v.sort_by(|a, b| (&a.file, a.pos, &a.message).cmp(&(&b.file, b.pos, &b.message)));
        v.dedup();
        SpecErrors(v)
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} error{} in the lab file:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The closest candidate to `name`, if close enough to be a likely typo.
pub fn did_you_mean<'a, I: IntoIterator<Item = &'a str>>(
    name: &str,
    candidates: I,
) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(name, c);
        let close = score >= 0.8 || strsim::levenshtein(name, c) <= name.len().max(2) / 3 + 1;
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// ` (did you mean 'x'?)` or nothing.
pub fn suggest<'a, I: IntoIterator<Item = &'a str>>(name: &str, candidates: I) -> String {
    match did_you_mean(name, candidates) {
        Some(c) => format!(" (did you mean '{c}'?)"),
        None => String::new(),
    }
}
