//! A YAML tree that keeps positions.
//!
//! serde loses positions once a document is deserialized, so the lab file is first read into
//! this tree from `yaml-rust2`'s marked events. Every node keeps its line/column and its path
//! in the document as written. The raw serde types are then deserialized from a JSON value
//! made from this tree, and every error (serde's or the resolver's) is located by its path in
//! the tree.

use super::error::{Path, Pos, SpecError};
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

enum Frame {
    Seq(Vec<MNode>, Marker, usize),
    /// Entries, pending key (name, position), start, anchor.
    Map(Vec<(String, MNode)>, Option<(String, Pos)>, Marker, usize),
}

struct Builder {
    stack: Vec<Frame>,
    anchors: Vec<(usize, MNode)>,
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
            self.anchors.push((anchor, node.clone()));
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

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
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
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
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

/// Parses `src` (named `file` in errors) into a positioned tree. Syntax errors stop the parse;
/// duplicate keys are reported and the later entry dropped.
pub fn parse(file: &str, src: &str) -> Result<(MNode, Vec<SpecError>), Vec<SpecError>> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: Vec::new(),
        root: None,
        errors: Vec::new(),
        docs: 0,
        segs: Vec::new(),
    };
    let mut parser = Parser::new_from_str(src);
    if let Err(e) = parser.load(&mut b, true) {
        return Err(vec![SpecError {
            file: file.to_string(),
            pos: pos(e.marker()),
            path: Path::root(),
            message: format!("YAML syntax error: {}", e.info()),
            fix: Some("check indentation, quoting and `key: value` pairs near here".into()),
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
        })
        .collect();
    Ok((root, errors))
}
