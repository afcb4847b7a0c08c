//! A YAML tree that keeps positions.
//!
//! serde loses positions once a document is deserialized, so the lab file is first read into
//! this tree from `yaml-rust2`'s marked events. Every node keeps its line/column and its path
//! in the document as written. The raw serde types are then deserialized from a JSON value
//! made from this tree, and every error (serde's or the resolver's) is located by its path in
//! the tree.

use super::error::{Limit, Path, Pos, SpecError};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

/// A YAML node with its position and its path as written.
#[derive(Debug, Clone)]
pub struct MNode {
    /// The value.
    pub kind: MKind,
    /// Where the value starts.
    pub pos: Pos,
    /// Where the key naming this value starts (the value's position for the root and for
    /// sequence items).
    pub key_pos: Pos,
    /// Path of the value in the document, as written.
    pub path: Path,
}

/// The value of a [`MNode`].
#[derive(Debug, Clone)]
pub enum MKind {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<MNode>),
    /// A mapping, in document order; keys are strings.
    Map(Vec<(String, MNode)>),
}

impl MNode {
    /// Short name of the value's YAML type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            MKind::Null => "null",
            MKind::Bool(_) => "a boolean",
            MKind::Int(_) => "an integer",
            MKind::Float(_) => "a number",
            MKind::Str(_) => "a string",
            MKind::Seq(_) => "a list",
            MKind::Map(_) => "a mapping",
        }
    }

    /// The node at `path` (segments as in [`Path`]), if any.
    pub fn get(&self, path: &Path) -> Option<&MNode> {
        let mut n = self;
        for seg in path.segs() {
            n = n.child(&seg)?;
        }
        Some(n)
    }

    fn child(&self, seg: &str) -> Option<&MNode> {
        match &self.kind {
            MKind::Map(entries) => entries.iter().find(|(k, _)| k == seg).map(|(_, v)| v),
            MKind::Seq(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
    }

    /// The deepest existing node along `path`.
    pub fn deepest(&self, path: &Path) -> &MNode {
        let mut n = self;
        for seg in path.segs() {
            match n.child(&seg) {
                Some(c) => n = c,
                None => break,
            }
        }
        n
    }

    /// Removes the node at `path`; false if there is none (or `path` is the root).
    pub fn remove(&mut self, path: &Path) -> bool {
        let segs = path.segs();
        let Some((last, parents)) = segs.split_last() else {
            return false;
        };
        let mut n = self;
        for seg in parents {
            let next = match &mut n.kind {
                MKind::Map(entries) => entries.iter_mut().find(|(k, _)| k == seg).map(|(_, v)| v),
                MKind::Seq(items) => seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            };
            match next {
                Some(c) => n = c,
                None => return false,
            }
        }
        match &mut n.kind {
            MKind::Map(entries) => {
                let before = entries.len();
                entries.retain(|(k, _)| k != last);
                entries.len() != before
            }
            MKind::Seq(items) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => {
                    items.remove(i);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// The JSON value serde deserializes the raw types from.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.kind {
            MKind::Null => J::Null,
            MKind::Bool(b) => J::Bool(*b),
            MKind::Int(i) => J::from(*i),
            MKind::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            MKind::Str(s) => J::String(s.clone()),
            MKind::Seq(items) => J::Array(items.iter().map(MNode::to_json).collect()),
            MKind::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 markers: 1-based lines, 0-based columns.
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

/// What one document may cost to read: lab and scenario files come from members of a shared
/// server, so the tree built from them is bounded in bytes, values and depth. Aliases count
/// with their whole expansion (a "billion laughs" document of a few hundred bytes would
/// otherwise expand to gigabytes), and the parse stops at the first limit broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of text.
    pub max_bytes: usize,
    /// Values (scalars, lists, mappings) in the tree, aliases expanded.
    pub max_values: usize,
    /// Nesting of lists and mappings.
    pub max_depth: usize,
}

impl Limits {
    /// The limits of lab and scenario files: far above any real lab (the largest example
    /// has ~600 values; a 200-VM generated lab ~12,000) and far below what hurts a server.
    pub const FILES: Limits = Limits {
        max_bytes: 1024 * 1024,
        max_values: 100_000,
        max_depth: 64,
    };
}

/// Values in a tree (the node itself included).
fn count(n: &MNode) -> usize {
    match &n.kind {
        MKind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        MKind::Map(entries) => 1 + entries.iter().map(|(_, v)| count(v)).sum::<usize>(),
        _ => 1,
    }
}

enum Frame {
    Seq(Vec<MNode>, Marker, usize),
    /// Entries, pending key (name, position), start, anchor.
    Map(Vec<(String, MNode)>, Option<(String, Pos)>, Marker, usize),
}

struct Builder {
    stack: Vec<Frame>,
    /// Anchor id, value, and how many values it expands to.
    anchors: Vec<(usize, MNode, usize)>,
    limits: Limits,
    /// Values built so far (aliases expanded).
    values: usize,
    /// The limit broken, where: once set, events are ignored.
    broken: Option<(Limit, Pos, String)>,
    root: Option<MNode>,
    errors: Vec<(Pos, Path, String, String)>,
    docs: usize,
    /// Path segment of each open frame (none for the root).
    segs: Vec<Option<String>>,
}

impl Builder {
    fn next_seg(&self) -> Option<String> {
        match self.stack.last() {
            None => None,
            Some(Frame::Seq(items, _, _)) => Some(items.len().to_string()),
            Some(Frame::Map(_, pending, _, _)) => pending.as_ref().map(|(k, _)| k.clone()),
        }
    }

    fn open(&mut self, f: Frame) {
        let seg = self.next_seg();
        self.segs.push(seg);
        self.stack.push(f);
    }

    fn push_value(&mut self, mut node: MNode, anchor: usize) {
        if anchor != 0 {
            let n = count(&node);
            self.anchors.push((anchor, node.clone(), n));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, pending, _, _)) => match pending.take() {
                None => {
                    // A key. Complex keys are not used by lab files: take their text.
                    let k = match &node.kind {
                        MKind::Str(s) => s.clone(),
                        MKind::Int(i) => i.to_string(),
                        MKind::Float(f) => f.to_string(),
                        MKind::Bool(b) => b.to_string(),
                        MKind::Null => "null".to_string(),
                        _ => {
                            let path = {
                                let mut p = Path::root();
                                for s in self.segs.iter().flatten() {
                                    p = p.key(s);
                                }
                                p
                            };
                            self.errors.push((
                                node.pos,
                                path,
                                "a mapping key must be a plain value".into(),
                                "write the key as a string".into(),
                            ));
                            "?".to_string()
                        }
                    };
                    *pending = Some((k, node.pos));
                }
                Some((k, kpos)) => {
                    if let Some((_, first)) = entries.iter().find(|(e, _)| *e == k) {
                        let line = first.key_pos.line;
                        let path = {
                            let segs = &self.segs;
                            let mut p = Path::root();
                            for s in segs.iter().flatten() {
                                p = p.key(s);
                            }
                            p.key(&k)
                        };
                        self.errors.push((
                            kpos,
                            path,
                            format!("duplicate key '{k}' (first at line {line})"),
                            "names must be unique: rename or remove one of them".into(),
                        ));
                    } else {
                        node.key_pos = kpos;
                        entries.push((k, node));
                    }
                }
            },
        }
    }
}

impl Builder {
    /// Counts `n` more values; false (and the limit recorded) when that is too many.
    fn take(&mut self, n: usize, at: &Marker) -> bool {
        self.values = self.values.saturating_add(n);
        if self.values > self.limits.max_values {
            self.broken = Some((
                Limit::Values,
                pos(at),
                format!(
                    "the document holds more than {} values (YAML aliases count with everything they repeat)",
                    self.limits.max_values
                ),
            ));
            return false;
        }
        true
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.broken.is_some() {
            return;
        }
        let cost = match &ev {
            Event::Alias(id) => self
                .anchors
                .iter()
                .rev()
                .find(|(a, _, _)| a == id)
                .map_or(1, |(_, _, n)| *n),
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) => 1,
            _ => 0,
        };
        if cost > 0 && !self.take(cost, &mark) {
            return;
        }
        if matches!(ev, Event::SequenceStart(..) | Event::MappingStart(..))
            && self.stack.len() >= self.limits.max_depth
        {
            self.broken = Some((
                Limit::Depth,
                pos(&mark),
                format!(
                    "the document nests lists and mappings more than {} deep",
                    self.limits.max_depth
                ),
            ));
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.docs += 1;
                if self.docs == 2 {
                    self.errors.push((
                        pos(&mark),
                        Path::root(),
                        "more than one YAML document".into(),
                        "a lab file holds one document: remove the extra `---`".into(),
                    ));
                }
            }
            Event::Scalar(v, style, anchor, tag) => {
                let kind = if style != TScalarStyle::Plain
                    || tag.as_ref().is_some_and(|t| t.suffix == "str")
                {
                    MKind::Str(v)
                } else {
                    match Yaml::from_str(&v) {
                        Yaml::Null => MKind::Null,
                        Yaml::Boolean(b) => MKind::Bool(b),
                        Yaml::Integer(i) => MKind::Int(i),
                        Yaml::Real(r) => match r.parse::<f64>() {
                            Ok(f) => MKind::Float(f),
                            Err(_) => MKind::Str(r),
                        },
                        _ => MKind::Str(v),
                    }
                };
                let p = pos(&mark);
                self.push_value(
                    MNode {
                        kind,
                        pos: p,
                        key_pos: p,
                        path: Path::root(),
                    },
                    anchor,
                );
            }
            Event::Alias(id) => {
                let p = pos(&mark);
                let node = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _, _)| *a == id)
                    .map(|(_, n, _)| n.clone())
                    .unwrap_or(MNode {
                        kind: MKind::Null,
                        pos: p,
                        key_pos: p,
                        path: Path::root(),
                    });
                self.push_value(node, 0);
            }
            Event::SequenceStart(anchor, _) => self.open(Frame::Seq(Vec::new(), mark, anchor)),
            Event::MappingStart(anchor, _) => self.open(Frame::Map(Vec::new(), None, mark, anchor)),
            Event::SequenceEnd => {
                self.segs.pop();
                if let Some(Frame::Seq(items, m, anchor)) = self.stack.pop() {
                    let p = pos(&m);
                    self.push_value(
                        MNode {
                            kind: MKind::Seq(items),
                            pos: p,
                            key_pos: p,
                            path: Path::root(),
                        },
                        anchor,
                    );
                }
            }
            Event::MappingEnd => {
                self.segs.pop();
                if let Some(Frame::Map(entries, _, m, anchor)) = self.stack.pop() {
                    // A block mapping's start marker is where the parser noticed it; its
                    // first key is where a reader sees it.
                    let p = entries.first().map_or(pos(&m), |(_, n)| n.key_pos);
                    self.push_value(
                        MNode {
                            kind: MKind::Map(entries),
                            pos: p,
                            key_pos: p,
                            path: Path::root(),
                        },
                        anchor,
                    );
                }
            }
            _ => {}
        }
    }
}

fn set_paths(n: &mut MNode, path: Path) {
    n.path = path.clone();
    match &mut n.kind {
        MKind::Seq(items) => {
            for (i, c) in items.iter_mut().enumerate() {
                set_paths(c, path.index(i));
            }
        }
        MKind::Map(entries) => {
            for (k, c) in entries.iter_mut() {
                set_paths(c, path.key(k));
            }
        }
        _ => {}
    }
}

/// Parses `src` (named `file` in errors) into a positioned tree, within [`Limits::FILES`].
/// Syntax errors stop the parse; duplicate keys are reported and the later entry dropped.
pub fn parse(file: &str, src: &str) -> Result<(MNode, Vec<SpecError>), Vec<SpecError>> {
    parse_within(file, src, Limits::FILES)
}

/// [`parse`] within `limits`. A broken limit stops the parse: its error is the only one.
pub fn parse_within(
    file: &str,
    src: &str,
    limits: Limits,
) -> Result<(MNode, Vec<SpecError>), Vec<SpecError>> {
    let limit_error = |limit, pos, message: String, fix: &str| SpecError {
        file: file.to_string(),
        pos,
        path: Path::root(),
        message,
        fix: Some(fix.to_string()),
        limit: Some(limit),
    };
    if src.len() > limits.max_bytes {
        return Err(vec![limit_error(
            Limit::Size,
            Pos { line: 1, col: 1 },
            format!(
                "the document is {} bytes, more than the {} bytes a file may have",
                src.len(),
                limits.max_bytes
            ),
            "split it, or generate fewer labs per file (`copies:` makes many from one)",
        )]);
    }
    let mut b = Builder {
        stack: Vec::new(),
        anchors: Vec::new(),
        limits,
        values: 0,
        broken: None,
        root: None,
        errors: Vec::new(),
        docs: 0,
        segs: Vec::new(),
    };
    let mut parser = Parser::new_from_str(src);
    let loaded = parser.load(&mut b, true);
    // yaml-rust2's scanner has its own nesting limit (a few hundred flow levels) and may hit
    // it while scanning ahead, before the builder saw 64 levels: that is the same limit.
    if let Err(e) = &loaded {
        if b.broken.is_none() && e.info().contains("recursion limit") {
            b.broken = Some((
                Limit::Depth,
                pos(e.marker()),
                format!(
                    "the document nests lists and mappings more than {} deep",
                    limits.max_depth
                ),
            ));
        }
    }
    if let Some((limit, pos, message)) = b.broken {
        return Err(vec![limit_error(
            limit,
            pos,
            message,
            "write the values out plainly: lab files need neither deep nesting nor aliases that repeat large parts",
        )]);
    }
    if let Err(e) = loaded {
        return Err(vec![SpecError {
            file: file.to_string(),
            pos: pos(e.marker()),
            path: Path::root(),
            message: format!("YAML syntax error: {}", e.info()),
            fix: Some("check indentation, quoting and `key: value` pairs near here".into()),
            limit: None,
        }]);
    }
    let mut root = b.root.unwrap_or(MNode {
        kind: MKind::Null,
        pos: Pos { line: 1, col: 1 },
        key_pos: Pos { line: 1, col: 1 },
        path: Path::root(),
    });
    set_paths(&mut root, Path::root());
    let errors = b
        .errors
        .into_iter()
        .map(|(p, path, message, fix)| SpecError {
            file: file.to_string(),
            pos: p,
            path,
            message,
            fix: Some(fix),
            limit: None,
        })
        .collect();
    Ok((root, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nine levels of nine aliases: ~387 million values once expanded, 700 bytes of text.
    fn billion_laughs() -> String {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            s += &format!("a{i}: &a{i} [{}]\n", vec![prev; 9].join(", "));
        }
        s
    }

    #[test]
    fn an_alias_bomb_stops_at_the_value_limit_without_expanding() {
        let t0 = std::time::Instant::now();
        let errs = parse("bomb.yaml", &billion_laughs()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].limit, Some(Limit::Values));
        assert!(
            errs[0].message.contains("more than 100000 values"),
            "{}",
            errs[0]
        );
        // Bounded work: the tree stops growing at the limit.
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn deep_nesting_stops_at_the_depth_limit() {
        let deep = format!("a: {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let errs = parse("deep.yaml", &deep).unwrap_err();
        assert_eq!(errs[0].limit, Some(Limit::Depth), "{errs:?}");
        assert!(errs[0].message.contains("more than 64 deep"));
        let ok = format!("a: {}1{}\n", "[".repeat(60), "]".repeat(60));
        assert!(parse("ok.yaml", &ok).is_ok());
    }

    #[test]
    fn a_document_over_the_size_limit_is_not_parsed() {
        let big = format!("a: \"{}\"\n", "x".repeat(2 * 1024 * 1024));
        let errs = parse("big.yaml", &big).unwrap_err();
        assert_eq!(errs[0].limit, Some(Limit::Size));
        assert!(errs[0].message.contains("more than the 1048576 bytes"));
    }

    #[test]
    fn small_aliases_still_work() {
        let (root, errs) = parse("a.yaml", "d: &d {image: tiny}\nx: *d\ny: *d\n").unwrap();
        assert!(errs.is_empty());
        assert_eq!(root.to_json()["y"]["image"], "tiny");
    }
}
