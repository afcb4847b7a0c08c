//! Firecracker API conformance, generated from Firecracker's own API description (issue 22
//! item 4).
//!
//! Reads Firecracker's published Swagger 2.0 description (`firecracker-api.yaml`, found by
//! [`locate_spec`]) and, for every path and method in it, sends requests *generated from its
//! schemas* to a real `kobako-vmm` process:
//!
//! - positive bodies: required only, required + defaulted, every property, seeded random
//!   ones, every enum value and boolean of every property, integer bounds, string formats;
//! - negative ones: wrong JSON types for each property (nested ones too), each required
//!   property missing, an unknown property in each closed object, values below the minimum,
//!   above the maximum, outside the enum or the format, malformed JSON, an empty body where
//!   one is required, a path id that differs from the body's, a missing path id;
//! - methods each path does not declare, and paths the description does not have.
//!
//! Every answer must have a status the description declares for the operation (`default` only
//! for 4xx; any 5xx fails), a body matching the declared schema (errors: an object with a
//! string `fault_message`), the process must still be alive, and a refused request must leave
//! the state (`GET /vm/config`, `GET /machine-config`, `GET /mmds`, the instance state) as it
//! was. Positive requests must succeed unless [`refusals`] names them with a reason: that table
//! documents what kobako-vmm does not implement.
//!
//! Phases: pre-boot (a fresh VMM), then post-boot (a tiny guest that keeps running: pre-boot
//! only operations must be refused), snapshots created from the paused guest, then loaded
//! into fresh VMMs. The VMMs run in a private network namespace with two taps.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use common::{elf, guests, vmm_bin, write, Vmm};

/// Where the description is, when not found next to the workspace.
const SPEC_ENV: &str = "KOBAKO_FC_API_SPEC";
const SPEC_REL: &str = "shared/reference/firecracker-api.yaml";
const SPEC_FALLBACK: &str = "/work/shared/reference/firecracker-api.yaml";

/// The generator's seed (override: `KOBAKO_FC_SEED`); the run is deterministic for a seed.
const SEED: u64 = 0x6b6f_6261_6b6f_4643;
/// Random positive bodies per operation.
const RANDOM_BODIES: usize = 3;
/// Deepest property path the negative generator mutates (`rate_limiter.bandwidth.size`).
const MAX_DEPTH: usize = 3;
/// Deepest nesting the positive generator fills in.
const MAX_GEN_DEPTH: usize = 6;
/// The property no schema has.
const UNKNOWN_PROP: &str = "kobako_conformance_unknown";

/// Ids used in paths and bodies.
const IFACE: &str = "eth0";
const DRIVE: &str = "rootfs";
const PMEM: &str = "pmem0";
/// Guest memory of the booted VM (MiB): small, so snapshots are cheap.
const BOOT_MEM_MIB: u64 = 16;

/// Methods tried on every path (those it does not declare must be refused with 400).
const METHODS: &[&str] = &["GET", "PUT", "PATCH", "POST", "DELETE"];
/// Paths the description does not have.
const UNDECLARED_PATHS: &[&str] = &[
    "/nonexistent",
    "/drives",
    "/network-interfaces",
    "/snapshot",
    "/vm/config/extra",
    "/machine-config/extra",
    "/version/1",
];

/// Properties of which exactly one may be given, as the descriptions (not the schemas) say:
/// `Drive` ("path_on_host ... required for virtio-block config and should be omitted for
/// vhost-user-block", and `socket` the other way round) and `SnapshotLoadParams` ("Exactly
/// one of the two `mem_*` fields must be present"). The generator gives one (the first in
/// baseline bodies), and sends "both" and "neither" as negatives.
const EXCLUSIVE: &[(&str, &str, &[&str])] = &[
    ("PUT", "/drives/{drive_id}", &["path_on_host", "socket"]),
    ("PUT", "/snapshot/load", &["mem_backend", "mem_file_path"]),
];

// ---------------------------------------------------------------------------------------------
// The description.
// ---------------------------------------------------------------------------------------------

/// Finds the description: `$KOBAKO_FC_API_SPEC`, else `shared/reference/firecracker-api.yaml`
/// in an ancestor of this crate, else [`SPEC_FALLBACK`].
fn locate_spec() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(SPEC_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{SPEC_ENV}={} is not a readable file: point it at Firecracker's \
                 src/firecracker/swagger/firecracker.yaml",
                p.display()
            ))
        };
    }
    let mut looked = vec![format!("${SPEC_ENV} (not set)")];
    for dir in Path::new(env!("CARGO_MANIFEST_DIR")).ancestors() {
        let p = dir.join(SPEC_REL);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(p.display().to_string());
    }
    let p = PathBuf::from(SPEC_FALLBACK);
    if p.is_file() {
        return Ok(p);
    }
    looked.push(p.display().to_string());
    Err(format!(
        "Firecracker's API description (Swagger 2.0 YAML) was not found; looked at: {}. \
         Set {SPEC_ENV}=/path/to/firecracker.yaml (Firecracker's \
         src/firecracker/swagger/firecracker.yaml) to run the conformance test.",
        looked.join(", ")
    ))
}

fn yaml_key(k: &Yaml) -> String {
    match k {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        _ => String::new(),
    }
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(h.iter().map(|(k, v)| (yaml_key(k), to_json(v))).collect()),
        Yaml::Null | Yaml::Alias(_) | Yaml::BadValue => Value::Null,
    }
}

/// A status an operation declares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Declared {
    Code(u16),
    Default,
}

/// A request body parameter.
#[derive(Debug, Clone)]
struct Body {
    /// With every `$ref` resolved.
    schema: Value,
    required: bool,
    /// A PATCH whose schema is its path's PUT schema: a partial update, no property required
    /// (`PATCH /machine-config`: "A subset of Machine Configuration Parameters").
    partial: bool,
}

/// One method of one path.
#[derive(Debug, Clone)]
struct Op {
    method: String,
    path: String,
    summary: String,
    path_params: Vec<String>,
    body: Option<Body>,
    responses: Vec<(Declared, Option<Value>)>,
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
    fn preboot_only(&self) -> bool {
        self.summary.contains("Pre-boot only")
    }
    fn postboot_only(&self) -> bool {
        self.summary.contains("Post-boot only")
    }
    /// The path with its parameters set to `id` (or their usual values).
    fn url(&self, id: Option<&str>) -> String {
        let mut p = self.path.clone();
        for name in &self.path_params {
            let v = id.unwrap_or_else(|| path_value(name));
            p = p.replace(&format!("{{{name}}}"), v);
        }
        p
    }
    fn exclusive(&self) -> &'static [&'static str] {
        EXCLUSIVE
            .iter()
            .find(|(m, p, _)| *m == self.method && *p == self.path)
            .map_or(&[], |(_, _, g)| g)
    }
}

/// The usual value of a path parameter (and of the body property of the same name).
fn path_value(name: &str) -> &'static str {
    match name {
        "drive_id" => DRIVE,
        "iface_id" => IFACE,
        "id" => PMEM,
        _ => "x",
    }
}

#[derive(Debug)]
struct Spec {
    version: String,
    defs: Map<String, Value>,
    paths: Vec<String>,
    ops: Vec<Op>,
}

impl Spec {
    fn load(path: &Path) -> Result<Spec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let docs = YamlLoader::load_from_str(&text)
            .map_err(|e| format!("{}: not YAML: {e}", path.display()))?;
        let doc = docs.first().ok_or("the description is empty")?;
        if doc["swagger"].as_str() != Some("2.0") {
            return Err(format!("{}: not a Swagger 2.0 description", path.display()));
        }
        let version = doc["info"]["version"]
            .as_str()
            .ok_or("info.version is missing")?
            .to_string();
        let Value::Object(defs) = to_json(&doc["definitions"]) else {
            return Err("definitions is missing".into());
        };
        let mut spec = Spec {
            version,
            defs,
            paths: Vec::new(),
            ops: Vec::new(),
        };
        let Yaml::Hash(paths) = &doc["paths"] else {
            return Err("paths is missing".into());
        };
        for (p, item) in paths {
            let p = yaml_key(p);
            let Yaml::Hash(methods) = item else {
                continue;
            };
            spec.paths.push(p.clone());
            let mut raw_refs: BTreeMap<String, Value> = BTreeMap::new();
            let mut ops = Vec::new();
            for (m, op) in methods {
                let method = yaml_key(m).to_uppercase();
                let op = to_json(op);
                let mut path_params = Vec::new();
                let mut body = None;
                for prm in op["parameters"].as_array().into_iter().flatten() {
                    match prm["in"].as_str() {
                        Some("path") => {
                            path_params.push(prm["name"].as_str().unwrap_or("").to_string())
                        }
                        Some("body") => {
                            raw_refs.insert(method.clone(), prm["schema"].clone());
                            body = Some(Body {
                                schema: spec.resolve(&prm["schema"], 0)?,
                                required: prm["required"].as_bool().unwrap_or(false),
                                partial: false,
                            });
                        }
                        _ => {}
                    }
                }
                let mut responses = Vec::new();
                for (code, r) in op["responses"].as_object().into_iter().flatten() {
                    let status = if code == "default" {
                        Declared::Default
                    } else {
                        Declared::Code(
                            code.parse()
                                .map_err(|_| format!("{method} {p}: response {code}"))?,
                        )
                    };
                    let schema = match r.get("schema") {
                        Some(s) => Some(spec.resolve(s, 0)?),
                        None => None,
                    };
                    responses.push((status, schema));
                }
                ops.push(Op {
                    method,
                    path: p.clone(),
                    summary: op["summary"].as_str().unwrap_or("").to_string(),
                    path_params,
                    body,
                    responses,
                });
            }
            for op in &mut ops {
                if op.method == "PATCH"
                    && raw_refs
                        .get("PATCH")
                        .is_some_and(|r| Some(r) == raw_refs.get("PUT"))
                {
                    if let Some(b) = &mut op.body {
                        b.partial = true;
                    }
                }
            }
            spec.ops.extend(ops);
        }
        Ok(spec)
    }

    /// `s` with every `$ref` to `#/definitions/...` replaced by the definition.
    fn resolve(&self, s: &Value, depth: usize) -> Result<Value, String> {
        if depth > 32 {
            return Err("$ref nesting deeper than 32: a cycle?".into());
        }
        Ok(match s {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let name = r
                        .strip_prefix("#/definitions/")
                        .ok_or_else(|| format!("unsupported $ref {r}"))?;
                    let def = self
                        .defs
                        .get(name)
                        .ok_or_else(|| format!("$ref {r}: no such definition"))?;
                    return self.resolve(def, depth + 1);
                }
                let mut out = Map::new();
                for (k, v) in m {
                    out.insert(k.clone(), self.resolve(v, depth + 1)?);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|v| self.resolve(v, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            _ => s.clone(),
        })
    }

    fn op(&self, method: &str, path: &str) -> Option<&Op> {
        self.ops
            .iter()
            .find(|o| o.method == method && o.path == path)
    }
}

fn ty(s: &Value) -> &str {
    match s.get("type").and_then(Value::as_str) {
        Some(t) => t,
        None if s.get("properties").is_some() => "object",
        None => "",
    }
}

fn required(s: &Value) -> Vec<String> {
    s.get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

fn props(s: &Value) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

/// An object that takes no property but its own: every object with `properties` and no
/// `additionalProperties`. (Swagger's default would allow others, but every Firecracker type
/// refuses unknown fields, and the description never says otherwise.)
fn closed(s: &Value) -> bool {
    ty(s) == "object" && props(s).is_some() && s.get("additionalProperties").is_none()
}

/// The schema of a child: a property, an array's items (`seg` "0"), or a map's values.
fn child<'a>(s: &'a Value, seg: &str) -> Option<&'a Value> {
    if ty(s) == "array" {
        return s.get("items");
    }
    props(s)
        .and_then(|p| p.get(seg))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

// ---------------------------------------------------------------------------------------------
// String formats given as regular expressions (`MmdsConfig.ipv4_address`).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Re {
    Lit(char),
    Class(Vec<(char, char)>),
    Group(Vec<Vec<Re>>),
    Repeat(Box<Re>, u32, u32),
}

/// A format or pattern that is a regular expression (not a name such as `int64`).
fn regex_of(s: &Value) -> Option<Vec<Vec<Re>>> {
    let f = s
        .get("pattern")
        .or_else(|| s.get("format"))
        .and_then(Value::as_str)?;
    if !f.contains(['(', '[', '\\', '|']) {
        return None;
    }
    let cs: Vec<char> = f.chars().collect();
    let mut i = 0;
    Some(re_alt(&cs, &mut i))
}

fn re_alt(cs: &[char], i: &mut usize) -> Vec<Vec<Re>> {
    let mut alts = vec![Vec::new()];
    while *i < cs.len() {
        let c = cs[*i];
        *i += 1;
        let atom = match c {
            ')' => {
                *i -= 1;
                break;
            }
            '|' => {
                alts.push(Vec::new());
                continue;
            }
            '^' | '$' => continue,
            '(' => {
                if cs.get(*i) == Some(&'?') && cs.get(*i + 1) == Some(&':') {
                    *i += 2;
                }
                let inner = re_alt(cs, i);
                *i += 1; // ')'
                Re::Group(inner)
            }
            '[' => {
                let mut ranges = Vec::new();
                while *i < cs.len() && cs[*i] != ']' {
                    let lo = cs[*i];
                    if cs.get(*i + 1) == Some(&'-') && cs.get(*i + 2).is_some_and(|c| *c != ']') {
                        ranges.push((lo, cs[*i + 2]));
                        *i += 3;
                    } else {
                        ranges.push((lo, lo));
                        *i += 1;
                    }
                }
                *i += 1; // ']'
                Re::Class(ranges)
            }
            '\\' => {
                let e = cs.get(*i).copied().unwrap_or('\\');
                *i += 1;
                match e {
                    'd' => Re::Class(vec![('0', '9')]),
                    e => Re::Lit(e),
                }
            }
            // The dots of Firecracker's formats stand for themselves (an address's dots); a
            // literal dot is also what any regex reading of them accepts.
            c => Re::Lit(c),
        };
        let atom = match cs.get(*i) {
            Some('?') => {
                *i += 1;
                Re::Repeat(Box::new(atom), 0, 1)
            }
            Some('*') => {
                *i += 1;
                Re::Repeat(Box::new(atom), 0, 3)
            }
            Some('+') => {
                *i += 1;
                Re::Repeat(Box::new(atom), 1, 3)
            }
            Some('{') => {
                let end = cs[*i..]
                    .iter()
                    .position(|c| *c == '}')
                    .map_or(cs.len(), |p| *i + p);
                let inner: String = cs[*i + 1..end].iter().collect();
                *i = end + 1;
                let (lo, hi) = inner.split_once(',').unwrap_or((&inner, &inner));
                let lo = lo.trim().parse().unwrap_or(0);
                let hi = hi.trim().parse().unwrap_or(lo + 3);
                Re::Repeat(Box::new(atom), lo, hi)
            }
            _ => atom,
        };
        if let Some(last) = alts.last_mut() {
            last.push(atom);
        }
    }
    alts
}

fn re_gen(rng: &mut Rng, alts: &[Vec<Re>], out: &mut String) {
    let seq = rng.pick(alts);
    for r in seq {
        re_gen_one(rng, r, out);
    }
}

fn re_gen_one(rng: &mut Rng, r: &Re, out: &mut String) {
    match r {
        Re::Lit(c) => out.push(*c),
        Re::Class(ranges) => {
            let (lo, hi) = *rng.pick(ranges);
            let span = u64::from(hi) - u64::from(lo) + 1;
            let c = u32::try_from(u64::from(lo) + rng.below(span)).unwrap_or(u32::from(lo));
            out.push(char::from_u32(c).unwrap_or(lo));
        }
        Re::Group(alts) => re_gen(rng, alts, out),
        Re::Repeat(inner, lo, hi) => {
            let n = u64::from(*lo) + rng.below(u64::from(hi - lo) + 1);
            for _ in 0..n {
                re_gen_one(rng, inner, out);
            }
        }
    }
}

/// Every position where `seq` can end when it starts at `pos`.
fn re_ends(seq: &[Re], s: &[char], pos: usize) -> Vec<usize> {
    let Some((first, rest)) = seq.split_first() else {
        return vec![pos];
    };
    let mut out = Vec::new();
    for p in re_one(first, s, pos) {
        for e in re_ends(rest, s, p) {
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out
}

fn re_one(r: &Re, s: &[char], pos: usize) -> Vec<usize> {
    match r {
        Re::Lit(c) => (s.get(pos) == Some(c))
            .then_some(pos + 1)
            .into_iter()
            .collect(),
        Re::Class(ranges) => s
            .get(pos)
            .filter(|c| ranges.iter().any(|(lo, hi)| (lo..=hi).contains(c)))
            .map(|_| pos + 1)
            .into_iter()
            .collect(),
        Re::Group(alts) => {
            let mut out = Vec::new();
            for a in alts {
                for e in re_ends(a, s, pos) {
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
            }
            out
        }
        Re::Repeat(inner, lo, hi) => {
            let mut cur = vec![pos];
            let mut out = if *lo == 0 { vec![pos] } else { Vec::new() };
            for n in 1..=*hi {
                let mut next = Vec::new();
                for p in &cur {
                    for e in re_one(inner, s, *p) {
                        if !next.contains(&e) {
                            next.push(e);
                        }
                    }
                }
                if n >= *lo {
                    for e in &next {
                        if !out.contains(e) {
                            out.push(*e);
                        }
                    }
                }
                cur = next;
            }
            out
        }
    }
}

fn re_matches(alts: &[Vec<Re>], s: &str) -> bool {
    let cs: Vec<char> = s.chars().collect();
    alts.iter().any(|a| re_ends(a, &cs, 0).contains(&cs.len()))
}

// ---------------------------------------------------------------------------------------------
// Validation of answers against the description.
// ---------------------------------------------------------------------------------------------

fn validate(v: &Value, s: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(en) = s.get("enum").and_then(Value::as_array) {
        if !en.contains(v) {
            errs.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(en.clone())
            ));
        }
    }
    let ok = match ty(s) {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errs.push(format!("{at}: {v} is not of type {}", ty(s)));
        return;
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errs.push(format!("{at}: {v} is below the minimum {min}"));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errs.push(format!("{at}: {v} is above the maximum {max}"));
            }
        }
    }
    if let (Some(re), Some(text)) = (regex_of(s), v.as_str()) {
        if !re_matches(&re, text) {
            errs.push(format!("{at}: {text:?} does not match its format"));
        }
    }
    if let Some(o) = v.as_object() {
        for r in required(s) {
            if !o.contains_key(&r) {
                errs.push(format!("{at}: required property {r:?} is missing"));
            }
        }
        for (k, pv) in o {
            if let Some(ps) = props(s).and_then(|p| p.get(k)) {
                validate(pv, ps, &format!("{at}.{k}"), errs);
            } else if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                validate(pv, ap, &format!("{at}.{k}"), errs);
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, item) in a.iter().enumerate() {
            validate(item, items, &format!("{at}[{i}]"), errs);
        }
    }
}

/// What is wrong with an answer, judged by the description alone.
fn check_answer(op: Option<&Op>, status: u16, body: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if status >= 500 {
        errs.push(format!(
            "{status}: a server error (5xx) is never acceptable"
        ));
    }
    let schema = match op {
        None => {
            if status != 400 {
                errs.push(format!(
                    "{status}: a method or path the description does not declare must be answered 400 (Firecracker's behaviour)"
                ));
            }
            None
        }
        Some(op) => {
            let exact = op
                .responses
                .iter()
                .find(|(d, _)| *d == Declared::Code(status));
            let default = op
                .responses
                .iter()
                .find(|(d, _)| *d == Declared::Default)
                .filter(|_| (400..500).contains(&status));
            match exact.or(default) {
                Some((_, s)) => s.clone(),
                None => {
                    let declared: Vec<String> = op
                        .responses
                        .iter()
                        .map(|(d, _)| match d {
                            Declared::Code(c) => c.to_string(),
                            Declared::Default => "default (4xx)".into(),
                        })
                        .collect();
                    errs.push(format!(
                        "{status} is not a status {} declares ({})",
                        op.name(),
                        declared.join(", ")
                    ));
                    None
                }
            }
        }
    };
    if status == 204 && !body.is_empty() {
        errs.push("204 No Content with a body".into());
    }
    if status >= 400 {
        match serde_json::from_str::<Value>(body) {
            Ok(v) if v.get("fault_message").is_some_and(Value::is_string) => {}
            Ok(v) => errs.push(format!(
                "error body is not an object with a string fault_message: {}",
                excerpt(&v.to_string(), 200)
            )),
            Err(e) => errs.push(format!("error body is not JSON ({e})")),
        }
    }
    if let Some(s) = schema {
        if status != 204 {
            match serde_json::from_str::<Value>(body) {
                Ok(v) => validate(&v, &s, "body", &mut errs),
                Err(e) => errs.push(format!("{status} body is not JSON ({e})")),
            }
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// What kobako-vmm refuses on purpose.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    PreBoot,
    PostBoot,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::PreBoot => "pre-boot",
            Phase::PostBoot => "post-boot",
        }
    }
}

/// A positive request kobako-vmm refuses, and why.
#[derive(Debug)]
struct Refusal {
    /// `*`: any method.
    method: &'static str,
    /// A trailing `*` matches a prefix.
    path: &'static str,
    phase: Option<Phase>,
    /// Given the request body and the current `GET /vm/config` (refusals that depend on what
    /// is configured already, such as a second root device).
    when: fn(&Value, &Value) -> bool,
    reason: &'static str,
    /// The fault_message contains one of these, `|`-separated ("" = anything).
    needle: &'static str,
}

impl Refusal {
    fn applies(&self, op: &Op, phase: Phase, body: &Value, config: &Value) -> bool {
        (self.method == "*" || self.method == op.method)
            && match self.path.strip_suffix('*') {
                Some(prefix) => op.path.starts_with(prefix),
                None => op.path == self.path,
            }
            && self.phase.is_none_or(|p| p == phase)
            && (self.when)(body, config)
    }
}

fn always(_: &Value, _: &Value) -> bool {
    true
}

/// Whether the configuration has a root drive (other than `except`'s id) / a root pmem device.
fn root_drive(config: &Value) -> bool {
    config["drives"]
        .as_array()
        .is_some_and(|d| d.iter().any(|d| d["is_root_device"] == json!(true)))
}
fn root_pmem_other_than(config: &Value, id: &str) -> bool {
    config["pmem"].as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p["root_device"] == json!(true) && p["id"] != id)
    })
}

const NOT_SUPPORTED: &str = "is not supported by kobako-vmm";

/// The positive requests kobako-vmm refuses, with the reason. Besides these, operations the
/// description marks "Pre-boot only" are refused after boot and "Post-boot only" ones before.
fn refusals() -> Vec<Refusal> {
    let r = |method, path, phase, when, reason, needle| Refusal {
        method,
        path,
        phase,
        when,
        reason,
        needle,
    };
    vec![
        r("*", "/hotplug/memory", None, always as fn(&Value, &Value) -> bool,
          "not implemented: no memory hotplug (virtio-mem)", NOT_SUPPORTED),
        r("PUT", "/pmem/{id}", Some(Phase::PreBoot),
          |b, c| b["root_device"] == json!(true) && (root_drive(c) || root_pmem_other_than(c, PMEM)),
          "at most one root device among drives and pmem devices (Firecracker's rule)",
          "root device"),
        r("PUT", "/drives/{drive_id}", Some(Phase::PreBoot),
          |b, c| b["is_root_device"] == json!(true) && root_pmem_other_than(c, ""),
          "at most one root device among drives and pmem devices (Firecracker's rule)",
          "root device"),
        r("*", "/machine-config", None, |b, _| b["smt"] == json!(true),
          "kobako-vmm does not enable SMT", "multithreading|SMT"),
        r("*", "/machine-config", None,
          |b, _| b.get("cpu_template").is_some_and(|t| t != "None"),
          "kobako-vmm applies no CPU template (only \"None\" is accepted)", "CPU template"),
        r("*", "/machine-config", None, |b, _| b["huge_pages"] == json!("2M"),
          "hugetlbfs-backed guest memory (huge_pages \"2M\") is not implemented", "2M"),
        r("PUT", "/drives/{drive_id}", None, |b, _| b.get("socket").is_some(),
          "vhost-user block devices (socket) are not implemented", "socket"),
        r("PUT", "/snapshot/create", None, |b, _| b["snapshot_type"] == json!("Diff"),
          "Diff snapshots are not implemented (no dirty page tracking)", "Diff"),
        r("PUT", "/snapshot/load", None, |b, _| b["mem_backend"]["backend_type"] == json!("Uffd"),
          "userfaultfd memory backends are not implemented", "Uffd"),
        r("PUT", "/snapshot/load", None, |b, _| b["clock_realtime"] == json!(true),
          "clock_realtime is not implemented: kvmclock resumes where it was", "clock_realtime"),
        r("PUT", "/snapshot/load", None,
          |b, _| b["huge_pages"] == json!("Transparent") || b["huge_pages"] == json!("2M"),
          "a loaded snapshot's memory is a private file mapping with regular pages", "huge_pages"),
        r("PUT", "/actions", Some(Phase::PreBoot), |b, _| b["action_type"] == json!("SendCtrlAltDel"),
          "no guest to send it to before InstanceStart (a runtime action in Firecracker too)",
          "before starting"),
        r("PUT", "/actions", Some(Phase::PostBoot), |b, _| b["action_type"] == json!("InstanceStart"),
          "InstanceStart is allowed once", "already running"),
        r("PATCH", "/vm", Some(Phase::PreBoot), always,
          "no microVM to pause or resume before InstanceStart", "before starting"),
        r("GET", "/balloon/statistics", Some(Phase::PreBoot), always,
          "the balloon device runs (and has statistics) only after InstanceStart", "not running yet"),
        r("*", "/balloon/hinting/*", Some(Phase::PreBoot), always,
          "the balloon device runs (and hints) only after InstanceStart", "not running yet"),
        r("PUT", "/balloon", Some(Phase::PostBoot), always,
          "the description: \"This will fail after machine startup\"", "after starting"),
        r("PATCH", "/balloon/statistics", Some(Phase::PostBoot),
          |b, _| b["stats_polling_interval_s"] == json!(0),
          "the description: statistics cannot be turned on/off after boot", "turned on or off"),
        r("PUT", "/logger", Some(Phase::PostBoot), always,
          "pre-boot only, as in Firecracker (its runtime controller refuses it; the description does not say)",
          "after starting"),
        r("PUT", "/metrics", Some(Phase::PostBoot), always,
          "pre-boot only, as in Firecracker (its runtime controller refuses it; the description does not say)",
          "after starting"),
        r("PUT", "/serial", Some(Phase::PostBoot), always,
          "pre-boot only, as in Firecracker (its runtime controller refuses it; the description does not say)",
          "after starting"),
    ]
}

// ---------------------------------------------------------------------------------------------
// The generator.
// ---------------------------------------------------------------------------------------------

/// splitmix64: small, seeded, deterministic.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        let n = u64::try_from(xs.len()).unwrap_or(u64::MAX);
        &xs[usize::try_from(self.below(n)).unwrap_or(0)]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Required properties only.
    Minimal,
    /// Required ones and those with a default.
    Baseline,
    /// Every property.
    Full,
    /// Required ones and a random half of the others, random values.
    Random,
}

/// Files and devices the positive requests point at.
#[derive(Debug)]
struct Fixtures {
    dir: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    disks: [PathBuf; 2],
    /// pmem backing files (2 MiB each, the smallest size a pmem device takes).
    pmem: [PathBuf; 2],
    serial: PathBuf,
    log: PathBuf,
    metrics: PathBuf,
    /// Two taps in the VMMs' network namespace (None: could not create them).
    taps: Option<(String, String)>,
    /// The first snapshot created (state file, memory file).
    snapshot: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug)]
struct Gen {
    rng: Rng,
    n: u64,
}

impl Gen {
    fn unique(&mut self, fx: &Fixtures, stem: &str, ext: &str) -> Value {
        self.n += 1;
        Value::String(
            fx.dir
                .join(format!("{stem}-{}.{ext}", self.n))
                .display()
                .to_string(),
        )
    }

    /// A realistic value for a property whose meaning the schema alone does not give (a file
    /// that must exist, a tap, the id of a configured device).
    fn hint(&mut self, fx: &Fixtures, op: &Op, at: &[String], mode: Mode) -> Option<Value> {
        let name = at.last()?.as_str();
        let s = |p: &Path| Value::String(p.display().to_string());
        let load = op.path == "/snapshot/load";
        let under = |p: &str| at.iter().any(|a| a == p);
        Some(match name {
            "kernel_image_path" => s(&fx.kernel),
            "initrd_path" => s(&fx.initrd),
            "path_on_host" => {
                let i = if mode == Mode::Random {
                    self.rng.coin()
                } else {
                    false
                };
                if op.path.starts_with("/pmem") {
                    s(&fx.pmem[usize::from(i)])
                } else {
                    s(&fx.disks[usize::from(i)])
                }
            }
            "socket" => s(&fx.dir.join("vhost-user-blk.sock")),
            "uds_path" => self.unique(fx, "vsock", "sock"),
            "log_path" => s(&fx.log),
            "metrics_path" => s(&fx.metrics),
            "serial_out_path" => s(&fx.serial),
            "snapshot_path" if load => match &fx.snapshot {
                Some((st, _)) => s(st),
                None => self.unique(fx, "no-snapshot", "state"),
            },
            "mem_file_path" | "backend_path" if load => match &fx.snapshot {
                Some((_, mem)) => s(mem),
                None => self.unique(fx, "no-snapshot", "mem"),
            },
            "snapshot_path" => self.unique(fx, "snap", "state"),
            "mem_file_path" => self.unique(fx, "snap", "mem"),
            "host_dev_name" => {
                let (a, b) = fx
                    .taps
                    .clone()
                    .unwrap_or_else(|| ("kbfc-notap0".into(), "kbfc-notap1".into()));
                Value::String(if under("network_overrides") { b } else { a })
            }
            "iface_id" => json!(IFACE),
            "drive_id" => json!(DRIVE),
            "id" if op.path.starts_with("/pmem") => json!(PMEM),
            "network_interfaces" => json!([IFACE]),
            "guest_mac" => json!(format!("06:00:AC:10:00:{:02X}", self.rng.below(256))),
            "partuuid" => json!(format!("{:08x}-01", self.rng.next() & 0xffff_ffff)),
            "boot_args" => json!(format!(
                "console=ttyS0 reboot=k panic=1 pci=off kobako.fc={}",
                self.rng.below(1_000_000)
            )),
            "vsock_id" => json!("vsock0"),
            // Custom CPU templates: the description gives the formats in words only.
            "leaf" if op.path == "/cpu-config" => json!("0x1"),
            "subleaf" if op.path == "/cpu-config" => json!("0x0"),
            "flags" if op.path == "/cpu-config" => json!(0),
            "addr" if under("msr_modifiers") => json!("0x1a0"),
            "bitmap" if under("msr_modifiers") => {
                json!(format!("0b{}11{}", "x".repeat(51), "x".repeat(11)))
            }
            "bitmap" if under("cpuid_modifiers") => json!(format!("0b{}1", "x".repeat(31))),
            // x86_64 only: no KVM capability changes, no aarch64 registers or features.
            "kvm_capabilities" | "reg_modifiers" | "vcpu_features" if op.path == "/cpu-config" => {
                json!([])
            }
            // No bounds in the description; the guest's memory is the limit.
            "amount_mib" => match mode {
                Mode::Random => json!(self.rng.below(BOOT_MEM_MIB + 1)),
                _ => json!(0),
            },
            // No bounds in the description; the host's memory is the limit.
            "mem_size_mib" => match mode {
                Mode::Random => json!(BOOT_MEM_MIB + 2 * self.rng.below(25)),
                _ => json!(BOOT_MEM_MIB),
            },
            _ => return None,
        })
    }

    fn value(&mut self, fx: &Fixtures, op: &Op, at: &[String], s: &Value, mode: Mode) -> Value {
        if let Some(v) = self.hint(fx, op, at, mode) {
            return v;
        }
        if let Some(en) = s
            .get("enum")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
        {
            return match mode {
                Mode::Random => self.rng.pick(en).clone(),
                _ => s
                    .get("default")
                    .filter(|d| en.contains(d))
                    .unwrap_or(&en[0])
                    .clone(),
            };
        }
        match ty(s) {
            "object" => self.object(fx, op, at, s, mode),
            "array" => {
                let n = match mode {
                    Mode::Minimal | Mode::Baseline => 1,
                    Mode::Full => 2,
                    Mode::Random => 1 + self.rng.below(2),
                };
                let items = s.get("items").cloned().unwrap_or(json!({}));
                let mut at = at.to_vec();
                at.push("0".into());
                Value::Array(
                    (0..n)
                        .filter(|_| at.len() < MAX_GEN_DEPTH)
                        .map(|_| self.value(fx, op, &at, &items, mode))
                        .collect(),
                )
            }
            "string" => self.string(s, mode),
            "integer" => self.integer(s, mode),
            "number" => json!(1.5),
            "boolean" => match mode {
                Mode::Random => Value::Bool(self.rng.coin()),
                _ => s
                    .get("default")
                    .filter(|d| d.is_boolean())
                    .cloned()
                    .unwrap_or(Value::Bool(false)),
            },
            _ => json!({}),
        }
    }

    fn string(&mut self, s: &Value, mode: Mode) -> Value {
        if mode != Mode::Random {
            if let Some(d) = s.get("default").filter(|d| d.is_string()) {
                return d.clone();
            }
        }
        if let Some(re) = regex_of(s) {
            let mut out = String::new();
            re_gen(&mut self.rng, &re, &mut out);
            return Value::String(out);
        }
        if let Some(ex) = s.get("example").filter(|d| d.is_string()) {
            return ex.clone();
        }
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let n = 3 + self.rng.below(8);
        let tail: String = (0..n).map(|_| char::from(*self.rng.pick(ALNUM))).collect();
        Value::String(format!("fc-{tail}"))
    }

    fn bounds(s: &Value) -> (i64, i64) {
        let lo = s.get("minimum").and_then(Value::as_i64).unwrap_or(0);
        let hi = s
            .get("maximum")
            .and_then(Value::as_i64)
            .unwrap_or(lo.saturating_add(1000));
        (lo, hi)
    }

    fn integer(&mut self, s: &Value, mode: Mode) -> Value {
        let (lo, hi) = Self::bounds(s);
        match mode {
            Mode::Random => {
                let span = u64::try_from(i128::from(hi) - i128::from(lo) + 1).unwrap_or(u64::MAX);
                match self.rng.below(5) {
                    0 => json!(lo),
                    1 => json!(hi),
                    _ => json!(i128::from(lo) + i128::from(self.rng.below(span))),
                }
            }
            _ => s
                .get("default")
                .filter(|d| d.is_i64() || d.is_u64())
                .cloned()
                .unwrap_or(json!(lo)),
        }
    }

    fn object(&mut self, fx: &Fixtures, op: &Op, at: &[String], s: &Value, mode: Mode) -> Value {
        let mut out = Map::new();
        let top = at.is_empty();
        let partial = top && op.body.as_ref().is_some_and(|b| b.partial);
        let req = if partial { Vec::new() } else { required(s) };
        let excl = if top { op.exclusive() } else { &[] };
        // The one member of an exclusive group this body gets.
        let chosen = match (excl.is_empty(), mode) {
            (true, _) => None,
            (false, Mode::Random) => Some(*self.rng.pick(excl)),
            (false, _) => Some(excl[0]),
        };
        if let Some(ps) = props(s) {
            for (k, ps) in ps {
                let include = if excl.contains(&k.as_str()) {
                    chosen == Some(k.as_str())
                } else {
                    req.contains(k)
                        || match mode {
                            Mode::Minimal => false,
                            Mode::Baseline => ps.get("default").is_some(),
                            Mode::Full => true,
                            Mode::Random => self.rng.coin(),
                        }
                };
                if include && at.len() < MAX_GEN_DEPTH {
                    let mut at = at.to_vec();
                    at.push(k.clone());
                    let v = self.value(fx, op, &at, ps, mode);
                    out.insert(k.clone(), v);
                }
            }
        }
        match s.get("additionalProperties") {
            Some(Value::Bool(true)) if props(s).is_none() && mode != Mode::Minimal => {
                if let Value::Object(m) = self.any_json(0) {
                    out.extend(m);
                }
            }
            Some(ap @ Value::Object(_)) => {
                let n = match mode {
                    Mode::Minimal | Mode::Baseline => 0,
                    Mode::Full => 2,
                    Mode::Random => self.rng.below(3),
                };
                for i in 0..n {
                    let mut at = at.to_vec();
                    at.push(format!("key{i}"));
                    let v = self.value(fx, op, &at, ap, mode);
                    out.insert(format!("key{i}"), v);
                }
            }
            _ => {}
        }
        Value::Object(out)
    }

    /// Any JSON object (the contents of an open object: the MMDS data store).
    fn any_json(&mut self, depth: usize) -> Value {
        const KEYS: &[&str] = &[
            "latest",
            "meta-data",
            "instance-id",
            "local-ipv4",
            "tags",
            "v",
        ];
        let mut m = Map::new();
        for i in 0..1 + self.rng.below(3) {
            let k = format!("{}{i}", self.rng.pick(KEYS));
            let v = match self.rng.below(6) {
                0 | 1 if depth < 2 => self.any_json(depth + 1),
                2 => json!(self.rng.below(1000)),
                3 => json!(["a", "b"]),
                _ => json!(format!("value-{}", self.rng.below(1000))),
            };
            m.insert(k, v);
        }
        Value::Object(m)
    }

    /// `v` with the property at `path` set to `leaf` (None: removed); missing parents are
    /// generated in baseline mode. Returns false if the path does not exist in the schema.
    fn set_at(
        &mut self,
        fx: &Fixtures,
        op: &Op,
        v: &mut Value,
        s: &Value,
        path: &[String],
        leaf: Option<Value>,
    ) -> bool {
        let mut cur = v;
        let mut sch = s;
        for (i, seg) in path.iter().enumerate() {
            let Some(cs) = child(sch, seg) else {
                return false;
            };
            let last = i + 1 == path.len();
            if cur.is_array() {
                let a = cur.as_array_mut().expect("array");
                if last {
                    match leaf {
                        Some(l) if a.is_empty() => a.push(l),
                        Some(l) => a[0] = l,
                        None => {
                            a.clear();
                        }
                    }
                    return true;
                }
                if a.is_empty() {
                    let item = self.value(fx, op, &path[..=i], cs, Mode::Baseline);
                    a.push(item);
                }
                cur = &mut a[0];
            } else {
                if !cur.is_object() {
                    return false;
                }
                let o = cur.as_object_mut().expect("object");
                if last {
                    match leaf {
                        Some(l) => {
                            o.insert(seg.clone(), l);
                        }
                        None => {
                            o.remove(seg);
                        }
                    }
                    return true;
                }
                if !o.contains_key(seg) {
                    let fresh = self.value(fx, op, &path[..=i], cs, Mode::Baseline);
                    o.insert(seg.clone(), fresh);
                }
                cur = o.get_mut(seg).expect("just inserted");
            }
            sch = cs;
        }
        true
    }

    /// The positive bodies of an operation (description, body).
    fn positives(&mut self, fx: &Fixtures, op: &Op) -> Vec<(String, Value)> {
        let Some(b) = &op.body else {
            return vec![("no body".into(), Value::Null)];
        };
        let s = &b.schema;
        let mut out = vec![
            (
                "minimal".to_string(),
                self.value(fx, op, &[], s, Mode::Minimal),
            ),
            (
                "baseline".to_string(),
                self.value(fx, op, &[], s, Mode::Baseline),
            ),
            (
                "every property".to_string(),
                self.value(fx, op, &[], s, Mode::Full),
            ),
        ];
        for i in 0..RANDOM_BODIES {
            out.push((
                format!("random #{i}"),
                self.value(fx, op, &[], s, Mode::Random),
            ));
        }
        let base = out[1].1.clone();
        for alt in op.exclusive().iter().skip(1) {
            let mut v = base.clone();
            let leaf = self.value(
                fx,
                op,
                &[alt.to_string()],
                &s["properties"][*alt],
                Mode::Baseline,
            );
            if let Some(o) = v.as_object_mut() {
                for other in op.exclusive() {
                    o.remove(*other);
                }
                o.insert(alt.to_string(), leaf);
                out.push((format!("{alt} instead"), v));
            }
        }
        for (path, ps) in leaves(s, op) {
            let mut values: Vec<Value> = Vec::new();
            if let Some(en) = ps.get("enum").and_then(Value::as_array) {
                values.extend(en.iter().cloned());
            } else if ty(&ps) == "boolean" {
                values.extend([json!(true), json!(false)]);
            } else if ty(&ps) == "integer" {
                values.extend(
                    ["minimum", "maximum"]
                        .iter()
                        .filter_map(|k| ps.get(*k).cloned()),
                );
            } else if let Some(re) = regex_of(&ps) {
                let mut text = String::new();
                re_gen(&mut self.rng, &re, &mut text);
                values.push(Value::String(text));
            }
            for val in values {
                let mut v = base.clone();
                if self.set_at(fx, op, &mut v, s, &path, Some(val.clone())) {
                    out.push((format!("{} = {val}", path.join(".")), v));
                }
            }
        }
        let mut seen = Vec::new();
        out.retain(|(_, v)| {
            let k = v.to_string();
            let new = !seen.contains(&k);
            seen.push(k);
            new
        });
        out
    }

    /// A value of another JSON type than `s` takes (two of them, seeded).
    fn wrong_types(&mut self, s: &Value) -> Vec<Value> {
        let t = ty(s);
        if t.is_empty() {
            return Vec::new();
        }
        let mut cands: Vec<Value> = [
            json!("text"),
            json!(42),
            json!(1.5),
            json!(true),
            json!([]),
            json!({}),
        ]
        .into_iter()
        .filter(|c| match t {
            "string" => !c.is_string(),
            "integer" => !(c.is_i64() || c.is_u64()),
            "number" => !c.is_number(),
            "boolean" => !c.is_boolean(),
            "array" => !c.is_array(),
            "object" => !c.is_object(),
            _ => true,
        })
        .collect();
        let mut out = Vec::new();
        // The subtle ones, always: a number that is not an integer, and an array for an object
        // (a derived serde deserializer takes a struct's fields from an array, by position).
        let subtle = match t {
            "integer" => Some(json!(1.5)),
            "object" => Some(json!([])),
            _ => None,
        };
        if let Some(v) = subtle {
            cands.retain(|c| *c != v);
            out.push(v);
        }
        while out.len() < 2 && !cands.is_empty() {
            let n = u64::try_from(cands.len()).unwrap_or(1);
            let i = usize::try_from(self.rng.below(n)).unwrap_or(0);
            out.push(cands.remove(i));
        }
        out
    }

    /// The negative bodies of an operation (description, raw body). The path is the usual one.
    fn negatives(&mut self, fx: &Fixtures, op: &Op) -> Vec<(String, Vec<u8>)> {
        let Some(b) = &op.body else {
            return Vec::new();
        };
        let s = &b.schema;
        let base = self.value(fx, op, &[], s, Mode::Baseline);
        let base_text = base.to_string();
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut push = |d: String, v: &Value| out.push((d, v.to_string().into_bytes()));
        // Malformed JSON.
        let half = &base_text[..base_text.len() / 2];
        let mut raw = vec![
            (
                "malformed JSON: truncated".to_string(),
                half.as_bytes().to_vec(),
            ),
            (
                "malformed JSON: trailing garbage".to_string(),
                format!("{base_text}}}").into_bytes(),
            ),
            ("malformed JSON: not JSON".to_string(), b"not json".to_vec()),
            (
                "malformed JSON: unquoted key".to_string(),
                b"{key: 1}".to_vec(),
            ),
        ];
        if base_text.contains('"') {
            raw.push((
                "malformed JSON: single quotes".to_string(),
                base_text.replace('"', "'").into_bytes(),
            ));
        }
        if b.required {
            raw.push(("empty body".to_string(), Vec::new()));
        }
        // The body itself of another type.
        for w in self.wrong_types(s) {
            push(format!("body of the wrong type: {w}"), &w);
        }
        push("body of the wrong type: null".into(), &Value::Null);
        // The root object closed: an unknown property.
        if closed(s) {
            let mut v = base.clone();
            if let Some(o) = v.as_object_mut() {
                o.insert(UNKNOWN_PROP.into(), json!(1));
            }
            push(format!("unknown property {UNKNOWN_PROP}"), &v);
        }
        // Exclusive groups: both, neither.
        let excl = op.exclusive();
        if !excl.is_empty() {
            let mut both = base.clone();
            let mut neither = base.clone();
            for k in excl {
                let leaf = self.value(
                    fx,
                    op,
                    &[k.to_string()],
                    &s["properties"][*k],
                    Mode::Baseline,
                );
                self.set_at(fx, op, &mut both, s, &[k.to_string()], Some(leaf));
                self.set_at(fx, op, &mut neither, s, &[k.to_string()], None);
            }
            push(
                format!("both of {} (the description: exactly one)", excl.join(", ")),
                &both,
            );
            push(
                format!("none of {} (the description: exactly one)", excl.join(", ")),
                &neither,
            );
        }
        // Per property.
        for (path, ps, req) in tree(s, op) {
            let name = path.join(".");
            for w in self.wrong_types(&ps) {
                let mut v = base.clone();
                if self.set_at(fx, op, &mut v, s, &path, Some(w.clone())) {
                    push(format!("wrong type at {name}: {w}"), &v);
                }
            }
            if req {
                let mut v = base.clone();
                // Make sure the parent is there, then take the property out.
                let leaf = self.value(fx, op, &path, &ps, Mode::Baseline);
                self.set_at(fx, op, &mut v, s, &path, Some(leaf));
                self.set_at(fx, op, &mut v, s, &path, None);
                push(format!("required {name} missing"), &v);
            }
            if ps.get("enum").is_some() {
                let mut v = base.clone();
                if self.set_at(fx, op, &mut v, s, &path, Some(json!("NotInTheEnum"))) {
                    push(format!("{name} not in the enum"), &v);
                }
            }
            if ty(&ps) == "integer" {
                for (k, delta) in [("minimum", -1i64), ("maximum", 1)] {
                    if let Some(lim) = ps.get(k).and_then(Value::as_i64) {
                        let mut v = base.clone();
                        let bad = json!(i128::from(lim) + i128::from(delta));
                        if self.set_at(fx, op, &mut v, s, &path, Some(bad.clone())) {
                            push(format!("{name} = {bad} beyond the {k}"), &v);
                        }
                    }
                }
            }
            if let Some(re) = regex_of(&ps) {
                let mut good = String::new();
                re_gen(&mut self.rng, &re, &mut good);
                for bad in [format!("{good}x"), "0.0.0.0".to_string(), String::new()] {
                    if re_matches(&re, &bad) {
                        continue;
                    }
                    let mut v = base.clone();
                    if self.set_at(fx, op, &mut v, s, &path, Some(json!(bad))) {
                        push(format!("{name} = {bad:?} outside its format"), &v);
                    }
                }
            }
            if closed(&ps) {
                let mut v = base.clone();
                let leaf = self.value(fx, op, &path, &ps, Mode::Baseline);
                self.set_at(fx, op, &mut v, s, &path, Some(leaf));
                let mut p = path.clone();
                p.push(UNKNOWN_PROP.into());
                // Not in the schema: insert by hand.
                if let Some(o) = pointer_mut(&mut v, &path).and_then(Value::as_object_mut) {
                    o.insert(UNKNOWN_PROP.into(), json!(1));
                    push(format!("unknown property {}", p.join(".")), &v);
                }
            }
        }
        raw.extend(out);
        raw
    }
}

fn pointer_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match cur {
            Value::Object(o) => o.get_mut(seg)?,
            Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Every property path of a body schema down to [`MAX_DEPTH`] (arrays: their first item),
/// with its schema and whether its parent requires it.
fn tree(s: &Value, op: &Op) -> Vec<(Vec<String>, Value, bool)> {
    fn walk(
        s: &Value,
        at: &mut Vec<String>,
        partial: bool,
        out: &mut Vec<(Vec<String>, Value, bool)>,
    ) {
        if at.len() >= MAX_DEPTH {
            return;
        }
        let req = if partial && at.is_empty() {
            Vec::new()
        } else {
            required(s)
        };
        let mut kids: Vec<(String, Value, bool)> = Vec::new();
        if let Some(p) = props(s) {
            kids.extend(
                p.iter()
                    .map(|(k, v)| (k.clone(), v.clone(), req.contains(k))),
            );
        }
        if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
            kids.push(("key0".into(), ap.clone(), false));
        }
        if ty(s) == "array" {
            if let Some(items) = s.get("items") {
                kids.push(("0".into(), items.clone(), false));
            }
        }
        for (k, v, r) in kids {
            at.push(k);
            out.push((at.clone(), v.clone(), r));
            walk(&v, at, partial, out);
            at.pop();
        }
    }
    let mut out = Vec::new();
    walk(
        s,
        &mut Vec::new(),
        op.body.as_ref().is_some_and(|b| b.partial),
        &mut out,
    );
    out
}

/// The property paths whose values the positives cover one by one (enums, booleans, integer
/// bounds, formats).
fn leaves(s: &Value, op: &Op) -> Vec<(Vec<String>, Value)> {
    tree(s, op)
        .into_iter()
        .filter(|(_, ps, _)| {
            ps.get("enum").is_some()
                || ty(ps) == "boolean"
                || (ty(ps) == "integer"
                    && (ps.get("minimum").is_some() || ps.get("maximum").is_some()))
                || regex_of(ps).is_some()
        })
        .map(|(p, s, _)| (p, s))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The VMM processes.
// ---------------------------------------------------------------------------------------------

/// A private network namespace with two taps, deleted on drop.
#[derive(Debug)]
struct Netns(String);

impl Netns {
    fn create() -> Result<(Netns, String, String), String> {
        let name = format!("kbfc{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let (a, b) = ("kbfc0".to_string(), "kbfc1".to_string());
        let script = format!(
            "ip netns add {name} && ip -n {name} link set lo up && \
             ip -n {name} tuntap add dev {a} mode tap && ip -n {name} link set {a} up && \
             ip -n {name} tuntap add dev {b} mode tap && ip -n {name} link set {b} up"
        );
        let ns = Netns(name);
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .map_err(|e| format!("sh: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok((ns, a, b))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Starts `kobako-vmm` (in `netns` when given) with its console and log to files of `dir`.
fn spawn_vmm(dir: &Path, tag: &str, netns: Option<&str>) -> (Vmm, PathBuf) {
    let sock = dir.join(format!("{tag}.sock"));
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(vmm_bin());
            c
        }
        None => Command::new(vmm_bin()),
    };
    cmd.arg("--api-sock")
        .arg(&sock)
        .args(["--id", "fc-conformance"]);
    let out = std::fs::File::create(dir.join(format!("{tag}.stdout"))).unwrap();
    let err_path = dir.join(format!("{tag}.stderr"));
    let err = std::fs::File::create(&err_path).unwrap();
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = Vmm(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
            panic!(
                "kobako-vmm ({tag}) never opened its API socket: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, sock)
}

/// One HTTP exchange on a fresh connection, without panicking: (status, body).
fn exchange(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let b = body.unwrap_or(b"");
    let ctype = if body.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n{ctype}Content-Length: {}\r\nConnection: close\r\n\r\n",
        b.len()
    )
    .into_bytes();
    req.extend_from_slice(b);
    s.write_all(&req).map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let body = rest.get(..len).unwrap_or(rest).to_string();
    Ok((status, body))
}

fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

// ---------------------------------------------------------------------------------------------
// The runner.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Positive,
    Negative,
    /// A body the description allows to be absent, absent: any declared answer.
    Edge,
    Undeclared,
    /// Preparation (boot configuration, pause before a snapshot): checked like positives.
    Setup,
}

#[derive(Debug, Clone)]
enum Expect {
    Success,
    /// Refused for one of these reasons; the fault_message names one of their needles.
    Refused {
        reason: String,
        needles: Vec<&'static str>,
    },
    Reject,
    Any,
}

#[derive(Debug)]
struct Failure {
    phase: &'static str,
    what: String,
    method: String,
    path: String,
    body: String,
    status: u16,
    response: String,
    problem: String,
}

/// The state a refused request must not change.
#[derive(Debug, Clone, PartialEq)]
struct State(Vec<(String, u16, Value)>);

#[derive(Debug, Default)]
struct Counts {
    positive: usize,
    refused_expected: usize,
    negative: usize,
    edge: usize,
    undeclared: usize,
    setup: usize,
    statuses: BTreeMap<u16, usize>,
}

struct Runner<'a> {
    spec: &'a Spec,
    fx: Fixtures,
    gen: Gen,
    refusals: Vec<Refusal>,
    refusal_hits: Vec<usize>,
    netns: Option<String>,
    vmm: Vmm,
    sock: PathBuf,
    vmm_no: usize,
    phase: Phase,
    /// Loading snapshots into fresh VMMs (a pre-boot phase of its own).
    loading: bool,
    dead: bool,
    state: State,
    counts: Counts,
    failures: Vec<Failure>,
    notes: Vec<String>,
    /// `KOBAKO_FC_VERBOSE`: print every exchange.
    verbose: bool,
}

impl Runner<'_> {
    fn phase_name(&self) -> &'static str {
        if self.loading {
            "snapshot load"
        } else {
            self.phase.name()
        }
    }

    fn new_vmm(&mut self) {
        self.vmm_no += 1;
        let (vmm, sock) = spawn_vmm(
            &self.fx.dir,
            &format!("vmm{}", self.vmm_no),
            self.netns.as_deref(),
        );
        self.vmm = vmm;
        self.sock = sock;
        self.dead = false;
        self.state = self.fetch_state().unwrap_or(State(Vec::new()));
    }

    /// `GET /vm/config` as of the last state read (Null if none).
    fn vm_config(&self) -> Value {
        self.state
            .0
            .iter()
            .find(|(p, _, _)| p == "/vm/config")
            .map_or(Value::Null, |(_, _, v)| v.clone())
    }

    fn fetch_state(&self) -> Result<State, String> {
        let mut parts = Vec::new();
        for path in ["/vm/config", "/machine-config", "/mmds", "/"] {
            let (st, body) = exchange(&self.sock, "GET", path, None)?;
            let v = serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body));
            parts.push((path.to_string(), st, v));
        }
        Ok(State(parts))
    }

    fn classify(&self, op: &Op, body: &Value) -> Expect {
        if self.phase == Phase::PostBoot && op.preboot_only() {
            return Expect::Refused {
                reason: "the description: Pre-boot only".into(),
                needles: vec![""],
            };
        }
        if self.phase == Phase::PreBoot && op.postboot_only() {
            return Expect::Refused {
                reason: "the description: Post-boot only".into(),
                needles: vec![""],
            };
        }
        let hits: Vec<&Refusal> = self
            .refusals
            .iter()
            .filter(|r| r.applies(op, self.phase, body, &self.vm_config()))
            .collect();
        if hits.is_empty() {
            return Expect::Success;
        }
        Expect::Refused {
            reason: hits
                .iter()
                .map(|r| r.reason)
                .collect::<Vec<_>>()
                .join("; or "),
            needles: hits.iter().flat_map(|r| r.needle.split('|')).collect(),
        }
    }

    /// Sends one request and checks everything about its answer; None if the VMM is gone.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        op: Option<&Op>,
        kind: Kind,
        what: &str,
        expect: Expect,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Option<(u16, String)> {
        if self.dead {
            return None;
        }
        match (kind, &expect) {
            (Kind::Positive, Expect::Refused { .. }) => self.counts.refused_expected += 1,
            (Kind::Positive, _) => self.counts.positive += 1,
            (Kind::Negative, _) => self.counts.negative += 1,
            (Kind::Edge, _) => self.counts.edge += 1,
            (Kind::Undeclared, _) => self.counts.undeclared += 1,
            (Kind::Setup, _) => self.counts.setup += 1,
        }
        if let (Some(op), Expect::Refused { .. }, Kind::Positive) = (op, &expect, kind) {
            let body_v = body
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .unwrap_or(Value::Null);
            let config = self.vm_config();
            for (i, r) in self.refusals.iter().enumerate() {
                if r.applies(op, self.phase, &body_v, &config) {
                    self.refusal_hits[i] += 1;
                }
            }
        }
        let mut problems = Vec::new();
        let (status, resp) = match exchange(&self.sock, method, path, body) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("no HTTP answer: {e}"));
                (0, String::new())
            }
        };
        if status != 0 {
            *self.counts.statuses.entry(status).or_default() += 1;
            problems.extend(check_answer(op, status, &resp));
            let fault = serde_json::from_str::<Value>(&resp)
                .ok()
                .and_then(|v| v["fault_message"].as_str().map(String::from))
                .unwrap_or_default();
            match &expect {
                Expect::Success => {
                    let found = status == 404 && method == "GET";
                    if !(200..300).contains(&status) && !found {
                        problems.push("a valid request was refused".into());
                    }
                }
                Expect::Refused { reason, needles } => {
                    if status < 400 {
                        problems.push(format!(
                            "accepted, but the table of expected refusals says it is refused ({reason}): update the table"
                        ));
                    } else if !needles.iter().any(|n| fault.contains(n)) {
                        problems.push(format!(
                            "refused as expected ({reason}), but the fault_message says none of {needles:?}"
                        ));
                    }
                }
                Expect::Reject => {
                    if status < 400 {
                        problems.push("an invalid request was accepted".into());
                    }
                }
                Expect::Any => {}
            }
        }
        let alive = matches!(self.vmm.try_wait(), Ok(None));
        if !alive {
            problems.push("the kobako-vmm process exited".into());
            self.dead = true;
        } else if status >= 400 || status == 0 {
            match self.fetch_state() {
                Ok(now) if now != self.state => {
                    let changed: Vec<String> = now
                        .0
                        .iter()
                        .zip(&self.state.0)
                        .filter(|(a, b)| a != b)
                        .map(|(a, b)| {
                            format!(
                                "GET {}: {} {} -> {} {}",
                                a.0,
                                b.1,
                                excerpt(&b.2.to_string(), 300),
                                a.1,
                                excerpt(&a.2.to_string(), 300)
                            )
                        })
                        .collect();
                    problems.push(format!(
                        "a refused request changed the state: {}",
                        changed.join("; ")
                    ));
                    self.state = now;
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("cannot read the state afterwards: {e}")),
            }
        } else if method != "GET" {
            match self.fetch_state() {
                Ok(now) => self.state = now,
                Err(e) => problems.push(format!("cannot read the state afterwards: {e}")),
            }
        }
        let body_text = body.map(String::from_utf8_lossy).unwrap_or_default();
        if self.verbose {
            println!(
                "[{}] {what}: {method} {path} {} -> {status} {}",
                self.phase_name(),
                excerpt(&body_text, 120),
                excerpt(&resp, 120)
            );
        }
        for problem in problems {
            self.failures.push(Failure {
                phase: self.phase_name(),
                what: what.to_string(),
                method: method.to_string(),
                path: path.to_string(),
                body: excerpt(&body_text, 200),
                status,
                response: excerpt(&resp, 300),
                problem,
            });
        }
        (status != 0).then_some((status, resp))
    }

    fn send_json(
        &mut self,
        op: &Op,
        kind: Kind,
        what: &str,
        expect: Expect,
        path: &str,
        body: &Value,
    ) -> Option<(u16, String)> {
        let raw = (!body.is_null()).then(|| body.to_string().into_bytes());
        let method = op.method.clone();
        self.send(Some(op), kind, what, expect, &method, path, raw.as_deref())
    }

    /// A generated request of the spec's own operation (`method path`) in baseline form.
    fn setup(&mut self, method: &str, path: &str, body: Option<Value>) -> bool {
        let Some(op) = self.spec.op(method, path) else {
            self.notes.push(format!(
                "{method} {path} is not in the description: cannot prepare"
            ));
            return false;
        };
        let op = op.clone();
        let body = body.unwrap_or_else(|| match &op.body {
            Some(b) => self
                .gen
                .value(&self.fx, &op, &[], &b.schema.clone(), Mode::Baseline),
            None => Value::Null,
        });
        let r = self.send_json(
            &op,
            Kind::Setup,
            "setup",
            Expect::Success,
            &op.url(None),
            &body,
        );
        r.is_some_and(|(st, _)| (200..300).contains(&st))
    }

    /// [`Runner::setup`] with the baseline body's top-level properties overridden.
    fn setup_with(&mut self, method: &str, path: &str, overrides: Value) -> bool {
        let Some(op) = self.spec.op(method, path).cloned() else {
            self.notes.push(format!(
                "{method} {path} is not in the description: cannot prepare"
            ));
            return false;
        };
        let mut body = match &op.body {
            Some(b) => self
                .gen
                .value(&self.fx, &op, &[], &b.schema.clone(), Mode::Baseline),
            None => Value::Null,
        };
        if let (Some(o), Some(add)) = (body.as_object_mut(), overrides.as_object()) {
            o.extend(add.clone());
        }
        self.setup(method, path, Some(body))
    }

    /// The operations in the order they run: the description's, except network interfaces
    /// before the MMDS configuration (it names them) before the MMDS data, `/actions` last (its
    /// InstanceStart ends the pre-boot phase), and within a path PUT, PATCH, then the others.
    fn ordered(&self) -> Vec<Op> {
        let rank = |p: &str| match p {
            "/network-interfaces/{iface_id}" => 0,
            "/mmds/config" => 1,
            "/mmds" => 2,
            "/actions" => 9,
            _ => 5,
        };
        // Within a path, writes before reads (a GET of a device not created yet is refused).
        let order: Vec<String> = self.spec.paths.clone();
        let method_rank = |m: &str| match m {
            "PUT" => 0,
            "PATCH" => 1,
            _ => 2,
        };
        let mut ops = self.spec.ops.clone();
        ops.sort_by_key(|o| {
            (
                rank(&o.path),
                order.iter().position(|p| *p == o.path),
                method_rank(&o.method),
            )
        });
        ops
    }

    /// Every operation of the description, then undeclared methods and paths.
    fn run_phase(&mut self, held_start: &mut Vec<(String, Value)>) {
        let mut paths_done = Vec::new();
        for op in self.ordered() {
            if self.dead {
                return;
            }
            let load = op.path == "/snapshot/load";
            let create = op.path == "/snapshot/create";
            let positives = self.gen.positives(&self.fx, &op);
            let mut paused = false;
            let mut refused_sent = 0;
            for (what, body) in positives {
                let expect = self.classify(&op, &body);
                if self.phase == Phase::PreBoot
                    && op.path == "/actions"
                    && body["action_type"] == json!("InstanceStart")
                {
                    held_start.push((what, body));
                    continue;
                }
                if load && self.phase == Phase::PreBoot {
                    // Needs a snapshot and a VMM nothing was configured on: see `run_loads`.
                    continue;
                }
                if !matches!(expect, Expect::Success) {
                    // Refusals cost little, but keep the count bounded after boot.
                    refused_sent += 1;
                    if self.phase == Phase::PostBoot && refused_sent > 3 && op.preboot_only() {
                        continue;
                    }
                }
                if self.taps_missing(&op, &body) {
                    self.notes.push(format!(
                        "{} positive skipped: no tap could be created",
                        op.name()
                    ));
                    continue;
                }
                if create
                    && self.phase == Phase::PostBoot
                    && !paused
                    && matches!(expect, Expect::Success)
                {
                    self.setup("PATCH", "/vm", Some(json!({"state": "Paused"})));
                    paused = true;
                }
                let path = op.url(None);
                let r = self.send_json(
                    &op,
                    Kind::Positive,
                    &format!("positive ({what})"),
                    expect.clone(),
                    &path,
                    &body,
                );
                if create && r.as_ref().is_some_and(|(st, _)| (200..300).contains(st)) {
                    self.keep_snapshot(&body);
                }
            }
            if op.body.as_ref().is_some_and(|b| !b.required) {
                let expect = Expect::Any;
                let path = op.url(None);
                self.send(
                    Some(&op),
                    Kind::Edge,
                    "edge (optional body absent)",
                    expect,
                    &op.method.clone(),
                    &path,
                    None,
                );
            }
            self.run_negatives(&op);
            if paused {
                self.setup("PATCH", "/vm", Some(json!({"state": "Resumed"})));
            }
            if !paths_done.contains(&op.path) {
                paths_done.push(op.path.clone());
                self.undeclared_methods(&op.path);
            }
        }
        for path in UNDECLARED_PATHS {
            for method in ["GET", "PUT"] {
                let body = (method == "PUT").then_some(&b"{}"[..]);
                self.send(
                    None,
                    Kind::Undeclared,
                    "undeclared path",
                    Expect::Reject,
                    method,
                    path,
                    body,
                );
            }
        }
    }

    /// A positive that needs the taps when there are none (then it is skipped, with a note).
    fn taps_missing(&self, op: &Op, body: &Value) -> bool {
        self.fx.taps.is_none()
            && (op.path == "/network-interfaces/{iface_id}"
                || op.path == "/mmds/config"
                || body.get("network_overrides").is_some())
    }

    fn run_negatives(&mut self, op: &Op) {
        let path = op.url(None);
        for (what, raw) in self.gen.negatives(&self.fx, op) {
            self.send(
                Some(op),
                Kind::Negative,
                &format!("negative ({what})"),
                Expect::Reject,
                &op.method.clone(),
                &path,
                Some(&raw),
            );
        }
        if op.path_params.is_empty() {
            return;
        }
        let Some(b) = &op.body else {
            return;
        };
        let base = self
            .gen
            .value(&self.fx, op, &[], &b.schema.clone(), Mode::Baseline);
        let base_raw = base.to_string().into_bytes();
        let method = op.method.clone();
        // A path id that differs from the body's.
        if op.path_params.iter().any(|p| base.get(p).is_some()) {
            let path = op.url(Some("other_id"));
            self.send(
                Some(op),
                Kind::Negative,
                "negative (path id differs from the body's)",
                Expect::Reject,
                &method,
                &path,
                Some(&base_raw),
            );
        }
        // No id at all.
        let path = op.url(Some(""));
        self.send(
            Some(op),
            Kind::Negative,
            "negative (empty path id)",
            Expect::Reject,
            &method,
            &path,
            Some(&base_raw),
        );
        // An update of a device that does not exist.
        if op.method == "PATCH" {
            let mut v = base.clone();
            for p in &op.path_params {
                if let Some(o) = v.as_object_mut().filter(|o| o.contains_key(p)) {
                    o.insert(p.clone(), json!("nosuch"));
                }
            }
            let path = op.url(Some("nosuch"));
            self.send(
                Some(op),
                Kind::Negative,
                "negative (no such device)",
                Expect::Reject,
                &method,
                &path,
                Some(v.to_string().as_bytes()),
            );
        }
    }

    fn undeclared_methods(&mut self, template: &str) {
        let declared: Vec<String> = self
            .spec
            .ops
            .iter()
            .filter(|o| o.path == template)
            .map(|o| o.method.clone())
            .collect();
        let Some(op) = self.spec.ops.iter().find(|o| o.path == template).cloned() else {
            return;
        };
        let path = op.url(None);
        for m in METHODS {
            if declared.iter().any(|d| d == m) {
                continue;
            }
            let body = (*m != "GET" && *m != "DELETE").then_some(&b"{}"[..]);
            self.send(
                None,
                Kind::Undeclared,
                "undeclared method",
                Expect::Reject,
                m,
                &path,
                body,
            );
        }
    }

    /// Keeps the first snapshot for the loads, removes the others.
    fn keep_snapshot(&mut self, body: &Value) {
        let st = body["snapshot_path"].as_str().map(PathBuf::from);
        let mem = body["mem_file_path"].as_str().map(PathBuf::from);
        let (Some(st), Some(mem)) = (st, mem) else {
            return;
        };
        if self.fx.snapshot.is_none() && st.is_file() && mem.is_file() {
            self.fx.snapshot = Some((st, mem));
        } else {
            let _ = std::fs::remove_file(st);
            let _ = std::fs::remove_file(mem);
        }
    }

    /// `PUT /snapshot/load` on fresh VMMs: each positive on a VMM nothing was configured on.
    fn run_loads(&mut self) {
        let Some(op) = self.spec.op("PUT", "/snapshot/load").cloned() else {
            return;
        };
        if self.fx.snapshot.is_none() {
            self.failures.push(Failure {
                phase: "snapshot load",
                what: "positive".into(),
                method: op.method.clone(),
                path: op.path.clone(),
                body: String::new(),
                status: 0,
                response: String::new(),
                problem: "no snapshot was created, so no load could be tried".into(),
            });
            return;
        }
        self.phase = Phase::PreBoot;
        self.loading = true;
        self.new_vmm();
        for (what, body) in self.gen.positives(&self.fx, &op) {
            if self.taps_missing(&op, &body) {
                self.notes.push(format!(
                    "{} positive skipped: no tap could be created",
                    op.name()
                ));
                continue;
            }
            let expect = self.classify(&op, &body);
            let ok = matches!(expect, Expect::Success);
            let path = op.url(None);
            let r = self.send_json(
                &op,
                Kind::Positive,
                &format!("positive on a fresh VMM ({what})"),
                expect,
                &path,
                &body,
            );
            if ok && r.as_ref().is_some_and(|(st, _)| (200..300).contains(st)) {
                let want = if body["resume_vm"] == json!(true) {
                    "Running"
                } else {
                    "Paused"
                };
                let got = exchange(&self.sock, "GET", "/", None)
                    .ok()
                    .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                    .map(|v| v["state"].clone())
                    .unwrap_or(Value::Null);
                if got != json!(want) {
                    self.failures.push(Failure {
                        phase: "snapshot load",
                        what: format!("positive ({what})"),
                        method: "GET".into(),
                        path: "/".into(),
                        body: String::new(),
                        status: 200,
                        response: got.to_string(),
                        problem: format!("after the load the state is {got}, not {want:?}"),
                    });
                }
            }
            if self.dead || r.is_some_and(|(st, _)| st < 400) {
                // Loaded (or gone): the next load needs a fresh process.
                self.new_vmm();
            }
        }
        // The negatives on a fresh VMM (with the real snapshot as their base).
        self.new_vmm();
        self.run_negatives(&op);
    }
}

// ---------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------

#[test]
fn firecracker_api_conformance() {
    let t0 = Instant::now();
    let spec_path = locate_spec().unwrap_or_else(|e| panic!("{e}"));
    let spec = Spec::load(&spec_path).unwrap_or_else(|e| panic!("{}: {e}", spec_path.display()));
    println!("kobako-vmm tracks Firecracker API {}", spec.version);
    println!("description: {}", spec_path.display());
    let seed = std::env::var("KOBAKO_FC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if std::env::var_os("KOBAKO_FC_KEEP").is_some() {
        println!("keeping the files in {}", d.display());
    }
    let mut notes = Vec::new();
    let (netns, taps) = match Netns::create() {
        Ok((ns, a, b)) => (Some(ns), Some((a, b))),
        Err(e) => {
            notes.push(format!(
                "no network namespace with taps ({e}): network-interface and MMDS configuration positives are skipped, the VMMs run in this namespace"
            ));
            (None, None)
        }
    };
    let fx = Fixtures {
        dir: d.to_path_buf(),
        kernel: write(d, "vmlinux", &elf(guests::TICKER, false)),
        initrd: write(d, "initrd.img", &[0u8; 4096]),
        disks: [
            write(d, "disk0.img", &[0u8; 65536]),
            write(d, "disk1.img", &[0u8; 65536]),
        ],
        pmem: [
            write(d, "pmem0.img", &vec![0u8; 2 << 20]),
            write(d, "pmem1.img", &vec![0u8; 2 << 20]),
        ],
        serial: d.join("serial.out"),
        log: d.join("vmm.log"),
        metrics: d.join("metrics.json"),
        taps,
        snapshot: None,
    };
    let ns_name = netns.as_ref().map(|n| n.0.clone());
    let (vmm, sock) = spawn_vmm(d, "vmm0", ns_name.as_deref());
    let refusals = refusals();
    let mut run = Runner {
        spec: &spec,
        fx,
        gen: Gen {
            rng: Rng(seed),
            n: 0,
        },
        refusal_hits: vec![0; refusals.len()],
        refusals,
        netns: ns_name,
        vmm,
        sock,
        vmm_no: 0,
        phase: Phase::PreBoot,
        loading: false,
        dead: false,
        state: State(Vec::new()),
        counts: Counts::default(),
        failures: Vec::new(),
        notes,
        verbose: std::env::var_os("KOBAKO_FC_VERBOSE").is_some(),
    };
    run.state = run.fetch_state().expect("the state of a fresh VMM");

    // Pre-boot.
    let mut held_start = Vec::new();
    run.run_phase(&mut held_start);
    let t_pre = t0.elapsed();

    // Boot: a configuration that boots (baseline bodies of the description's own operations),
    // then the InstanceStart the pre-boot phase held back.
    let mut booted = false;
    if !run.dead {
        run.setup("PUT", "/machine-config", None);
        run.setup("PUT", "/boot-source", None);
        run.setup("PUT", "/logger", None);
        run.setup("PUT", "/serial", None);
        // A balloon with everything its post-boot operations need.
        run.setup_with(
            "PUT",
            "/balloon",
            json!({"free_page_hinting": true, "stats_polling_interval_s": 1}),
        );
        match (
            run.spec.op("PUT", "/actions").cloned(),
            held_start.first().cloned(),
        ) {
            (Some(op), Some((what, body))) => {
                let r = run.send_json(
                    &op,
                    Kind::Positive,
                    &format!("positive ({what})"),
                    Expect::Success,
                    "/actions",
                    &body,
                );
                booted = r.is_some_and(|(st, _)| st == 204);
            }
            _ => run
                .notes
                .push("no InstanceStart body was generated from the description".into()),
        }
    }
    if booted {
        run.phase = Phase::PostBoot;
        let running = common::wait_for(10, || {
            exchange(&run.sock, "GET", "/", None).is_ok_and(|(_, b)| b.contains("\"Running\""))
        });
        if !running {
            run.notes
                .push("the guest never reported Running after InstanceStart".into());
        }
        run.state = run.fetch_state().unwrap_or(State(Vec::new()));
        let mut none = Vec::new();
        run.run_phase(&mut none);
    } else {
        run.failures.push(Failure {
            phase: "boot",
            what: "InstanceStart".into(),
            method: "PUT".into(),
            path: "/actions".into(),
            body: String::new(),
            status: 0,
            response: String::new(),
            problem: "the microVM did not start: the post-boot phase did not run".into(),
        });
    }
    let t_post = t0.elapsed();
    let guest_out = std::fs::metadata(d.join("vmm0.stdout")).map_or(0, |m| m.len())
        + std::fs::metadata(&run.fx.serial).map_or(0, |m| m.len());

    // Snapshot loads, each into a fresh VMM (replacing the booted one stops it: it holds the
    // tap the snapshot names).
    run.run_loads();
    let _ = run.vmm.0.kill();
    let _ = run.vmm.0.wait();

    // The summary.
    let c = &run.counts;
    let total = c.positive + c.refused_expected + c.negative + c.edge + c.undeclared + c.setup;
    println!("kobako-vmm tracks Firecracker API {}", spec.version);
    println!(
        "operations: {} ({} paths) ; seed {seed:#x}",
        spec.ops.len(),
        spec.paths.len()
    );
    println!(
        "requests: {total}: positive {} ({} to succeed, {} expected refusals), negative {}, \
         optional body absent {}, undeclared method or path {}, setup {}",
        c.positive + c.refused_expected,
        c.positive,
        c.refused_expected,
        c.negative,
        c.edge,
        c.undeclared,
        c.setup
    );
    println!("statuses: {:?}", c.statuses);
    println!(
        "time: pre-boot {:.1} s, post-boot {:.1} s, all {:.1} s; the guest wrote {guest_out} bytes of console",
        t_pre.as_secs_f64(),
        (t_post - t_pre).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "expected refusals (what kobako-vmm does not implement, and other documented refusals):"
    );
    for (r, hits) in run.refusals.iter().zip(&run.refusal_hits) {
        let phase = r.phase.map_or("any phase", Phase::name);
        println!(
            "  {:>4}x {} {} [{phase}]: {}",
            hits, r.method, r.path, r.reason
        );
    }
    run.notes.dedup();
    for n in &run.notes {
        println!("note: {n}");
    }
    println!("failures: {}", run.failures.len());
    for (i, f) in run.failures.iter().enumerate() {
        println!(
            "#{} [{}] {} {} {}\n    body: {}\n    -> {} {}\n    problem: {}",
            i + 1,
            f.phase,
            f.what,
            f.method,
            f.path,
            if f.body.is_empty() { "(none)" } else { &f.body },
            f.status,
            f.response,
            f.problem
        );
    }
    drop(netns);
    if std::env::var_os("KOBAKO_FC_KEEP").is_some() {
        let _ = dir.keep();
    }
    assert!(
        run.failures.is_empty(),
        "{} conformance failures (listed above)",
        run.failures.len()
    );
}
