//! The scenario file: its steps, their timing and what they expect, as parsed; and the checks
//! made before anything runs (one action per step, assertion syntax, names against the lab).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::error::{suggest, Path, SpecError, SpecErrors};
use crate::spec::parse::Source;
use crate::spec::units::{BitRate, MemMib, Micros, Percent};
use crate::spec::Lab;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The running lab it is for (`--lab` overrides).
    #[serde(default)]
    pub lab: Option<String>,
    /// Leave the faults in place at the end (default: undo them).
    #[serde(default)]
    pub keep: bool,
    pub steps: Vec<Step>,
    /// The parsed document, for locating errors found later (names against a lab).
    #[serde(skip)]
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: Option<String>,
    // ---- timing ----
    /// Start no earlier than this long after the start of the run.
    #[serde(default)]
    pub at: Option<Micros>,
    /// Wait this long before the step (in a parallel group: after the group starts).
    #[serde(default)]
    pub after: Option<Micros>,
    /// Repeat the step at this interval (with `for`: that long; with `within`: until it holds).
    #[serde(default)]
    pub every: Option<Micros>,
    /// With `every`: repeat for this long. On a fault step: undo the fault after this long.
    #[serde(default, rename = "for")]
    pub for_: Option<Micros>,
    /// Retry (every `every`, default 500ms) until the expectations hold, at most this long,
    /// counted from the end of step `since` (default: this step's start).
    #[serde(default)]
    pub within: Option<Micros>,
    #[serde(default)]
    pub since: Option<String>,
    /// Leave this step's fault in place at the end of the run.
    #[serde(default)]
    pub keep: bool,
    // ---- checks ----
    #[serde(default)]
    pub expect: Option<Expect>,
    /// Assertions on the step's measured numbers: `rtt_ms < 250`, `loss_pct <= 5`, `mbps >= 1`.
    #[serde(default)]
    pub assert: Vec<String>,
    // ---- actions (exactly one) ----
    #[serde(default)]
    pub wait_ready: Option<Micros>,
    #[serde(default)]
    pub impair: Option<ImpairStep>,
    /// Clear the impairments of this link.
    #[serde(default)]
    pub clear: Option<String>,
    #[serde(default)]
    pub link: Option<LinkStep>,
    #[serde(default)]
    pub exec: Option<ExecStep>,
    #[serde(default)]
    pub rtt: Option<RttStep>,
    #[serde(default)]
    pub sleep: Option<Micros>,
    #[serde(default)]
    pub pause: Option<String>,
    #[serde(default)]
    pub resume: Option<String>,
    #[serde(default)]
    pub restart: Option<String>,
    /// Kill a VM's process (a crash); it is restarted at the end unless kept.
    #[serde(default)]
    pub kill: Option<String>,
    /// Bring the lab back to one of its checkpoints (`kobako checkpoint LAB NAME`).
    #[serde(default)]
    pub restore: Option<String>,
    /// Cut these VMs off from the rest of the lab.
    #[serde(default)]
    pub partition: Option<Vec<String>>,
    /// Undo faults now: `all`, or one link's name.
    #[serde(default)]
    pub heal: Option<String>,
    #[serde(default)]
    pub http: Option<HttpStep>,
    /// Who reaches whom: every listed VM pings every other's first address.
    #[serde(default)]
    pub reach: Option<ReachStep>,
    #[serde(default)]
    pub throughput: Option<ThroughputStep>,
    /// The route packets take (`traceroute`), checked with `expect: { via: ADDRESS }`.
    #[serde(default)]
    pub path: Option<PathStep>,
    /// Run these steps at the same time; the group ends when all have.
    #[serde(default)]
    pub parallel: Option<Vec<Step>>,
    /// Run these steps in order (a branch of a parallel group).
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    /// A WebAssembly module run against the lab (`scenario::wasm`).
    #[serde(default)]
    pub wasm: Option<super::wasm::WasmStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpairStep {
    pub link: String,
    #[serde(default)]
    pub delay: Option<Micros>,
    #[serde(default)]
    pub jitter: Option<Micros>,
    #[serde(default)]
    pub loss: Option<Percent>,
    #[serde(default)]
    pub rate: Option<BitRate>,
    #[serde(default)]
    pub corrupt: Option<Percent>,
    #[serde(default)]
    pub duplicate: Option<Percent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpDown {
    Up,
    Down,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStep {
    pub link: String,
    pub state: UpDown,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStep {
    pub vm: String,
    /// `sh -c` command.
    pub cmd: String,
    #[serde(default)]
    pub timeout: Option<Micros>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttStep {
    pub from: String,
    /// An address, or a VM of the lab (its first address).
    pub to: String,
    #[serde(default = "three")]
    pub count: u32,
}

fn three() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// The VM the request is made from (with its `wget`).
    pub from: String,
    pub url: String,
    #[serde(default)]
    pub timeout: Option<Micros>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachStep {
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThroughputStep {
    /// The VM that downloads…
    pub from: String,
    /// …from this VM (a throwaway busybox `httpd` serves `size` bytes, default 4M, on a port from 5201).
    pub to: String,
    /// The address of `to` to download from (default: its address as seen from `from`).
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub size: Option<MemMib>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathStep {
    pub from: String,
    /// An address, or a VM of the lab.
    pub to: String,
}

/// What a step must observe. Unset fields are not checked; an `exec` without `expect` must
/// exit 0.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub exit: Option<i32>,
    #[serde(default)]
    pub stdout_contains: Option<String>,
    #[serde(default)]
    pub stdout_not_contains: Option<String>,
    /// Round trip (rtt: the average), milliseconds; for `http`: the response time.
    #[serde(default)]
    pub max_ms: Option<f64>,
    #[serde(default)]
    pub min_ms: Option<f64>,
    /// Packet loss of an `rtt` step, percent.
    #[serde(default)]
    pub max_loss: Option<f64>,
    #[serde(default)]
    pub min_loss: Option<f64>,
    /// HTTP status of an `http` step (default 200).
    #[serde(default)]
    pub status: Option<u16>,
    /// Throughput, megabits per second.
    #[serde(default)]
    pub min_mbps: Option<f64>,
    #[serde(default)]
    pub max_mbps: Option<f64>,
    /// `reach`: for each listed VM, exactly which of the others it reaches.
    #[serde(default)]
    pub reach: Option<BTreeMap<String, Vec<String>>>,
    /// `path`: an address that must be a hop of the route.
    #[serde(default)]
    pub via: Option<String>,
    /// A repeated step (`every` + `for`) passes when at least this share of its samples
    /// passed (default 100).
    #[serde(default)]
    pub min_pass_pct: Option<f64>,
}

/// The actions a step may have, in the order `Step::actions` reports them.
pub const ACTIONS: &[&str] = &[
    "wait_ready",
    "impair",
    "clear",
    "link",
    "exec",
    "rtt",
    "sleep",
    "pause",
    "resume",
    "restart",
    "kill",
    "restore",
    "partition",
    "heal",
    "http",
    "reach",
    "throughput",
    "path",
    "parallel",
    "steps",
    "wasm",
];

impl Step {
    pub fn actions(&self) -> Vec<&'static str> {
        let set = [
            self.wait_ready.is_some(),
            self.impair.is_some(),
            self.clear.is_some(),
            self.link.is_some(),
            self.exec.is_some(),
            self.rtt.is_some(),
            self.sleep.is_some(),
            self.pause.is_some(),
            self.resume.is_some(),
            self.restart.is_some(),
            self.kill.is_some(),
            self.restore.is_some(),
            self.partition.is_some(),
            self.heal.is_some(),
            self.http.is_some(),
            self.reach.is_some(),
            self.throughput.is_some(),
            self.path.is_some(),
            self.parallel.is_some(),
            self.steps.is_some(),
            self.wasm.is_some(),
        ];
        ACTIONS
            .iter()
            .zip(set)
            .filter(|(_, b)| *b)
            .map(|(a, _)| *a)
            .collect()
    }

    pub fn action(&self) -> &'static str {
        self.actions().first().copied().unwrap_or("?")
    }

    pub fn title(&self, id: &str) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("step {id} ({})", self.action()))
    }

    /// The numbers this step's kind measures (names usable in `assert`).
    pub fn metrics(&self) -> &'static [&'static str] {
        match self.action() {
            "rtt" => &["rtt_ms", "loss_pct"],
            "exec" => &["exit", "time_ms"],
            "http" => &["status", "time_ms"],
            "throughput" => &["mbps", "bytes", "time_ms"],
            "reach" => &["mismatches", "reachable"],
            "path" => &["hops"],
            "wasm" => &["fuel", "host_calls"],
            _ => &[],
        }
    }

    /// Whether the step leaves a fault that the end of the run (or `for`) undoes.
    pub fn is_fault(&self) -> bool {
        matches!(
            self.action(),
            "impair" | "link" | "pause" | "kill" | "partition"
        )
    }
}

/// `METRIC OP NUMBER` (`rtt_ms <= 250`); also `elapsed_ms`, the time from `since` to success.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assertion {
    pub metric: String,
    pub op: String,
    pub value: f64,
}

/// Why a text is not an [`Assertion`]; `input` is the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("'{input}' has no comparison: write METRIC OP NUMBER with OP one of {ops}")]
    NoComparison { input: String, ops: String },
    #[error("'{input}': '{metric}' is not a metric name")]
    BadMetric { input: String, metric: String },
    #[error("'{input}': '{number}' is not a number")]
    NotANumber { input: String, number: String },
}

impl Assertion {
    pub fn parse(s: &str) -> std::result::Result<Assertion, AssertionError> {
        let s = s.trim();
        let ops = ["<=", ">=", "==", "!=", "<", ">"];
        let Some((i, op)) = ops
            .iter()
            .filter_map(|op| s.find(op).map(|i| (i, *op)))
            .min_by_key(|(i, op)| (*i, std::cmp::Reverse(op.len())))
        else {
            return Err(AssertionError::NoComparison {
                input: s.into(),
                ops: ops.join(" "),
            });
        };
        let metric = s[..i].trim();
        let num = s[i + op.len()..].trim();
        if metric.is_empty()
            || !metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(AssertionError::BadMetric {
                input: s.into(),
                metric: metric.into(),
            });
        }
        let num_clean = num
            .trim_end_matches("ms")
            .trim_end_matches('%')
            .trim_end_matches("mbps")
            .trim();
        let value: f64 = num_clean.parse().map_err(|_| AssertionError::NotANumber {
            input: s.into(),
            number: num.into(),
        })?;
        Ok(Assertion {
            metric: metric.into(),
            op: op.into(),
            value,
        })
    }

    pub fn holds(&self, v: f64) -> bool {
        match self.op.as_str() {
            "<=" => v <= self.value,
            ">=" => v >= self.value,
            "==" => (v - self.value).abs() < 1e-9,
            "!=" => (v - self.value).abs() >= 1e-9,
            "<" => v < self.value,
            _ => v > self.value,
        }
    }
}

impl std::fmt::Display for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op, self.value)
    }
}

/// Every step with its id (`3`, `3.2`) and path in the document, depth first.
pub fn walk(steps: &[Step]) -> Vec<(String, Path, &Step)> {
    fn go<'a>(
        steps: &'a [Step],
        id: &str,
        path: &Path,
        key: &str,
        out: &mut Vec<(String, Path, &'a Step)>,
    ) {
        for (i, st) in steps.iter().enumerate() {
            let sid = if id.is_empty() {
                format!("{}", i + 1)
            } else {
                format!("{id}.{}", i + 1)
            };
            let p = path.key(key).index(i);
            out.push((sid.clone(), p.clone(), st));
            if let Some(g) = &st.parallel {
                go(g, &sid, &p, "parallel", out);
            }
            if let Some(g) = &st.steps {
                go(g, &sid, &p, "steps", out);
            }
        }
    }
    let mut out = Vec::new();
    go(steps, "", &Path::root(), "steps", &mut out);
    out
}

fn err(src: &Source, path: &Path, message: String, fix: &str) -> SpecError {
    src.error(path, message, Some(fix.into()))
}

/// Parses and checks a scenario file (structure, one action per step, timing, assertions);
/// the module of each `wasm` step is read from disk (relative to `file`'s directory).
pub fn load_str(file: &str, text: &str) -> std::result::Result<Scenario, SpecErrors> {
    load_with(file, text, true)
}

/// [`load_str`] for a scenario from someone who may not read the server's files (a member
/// over the API): a `wasm` step is an error at its `module`, and no module file is opened.
pub fn load_str_untrusted(file: &str, text: &str) -> std::result::Result<Scenario, SpecErrors> {
    load_with(file, text, false)
}

fn load_with(
    file: &str,
    text: &str,
    read_modules: bool,
) -> std::result::Result<Scenario, SpecErrors> {
    let (v, mut errs) = crate::spec::parse::parse::<Scenario>(file, text);
    let Some((mut s, src)) = v else {
        return Err(SpecErrors(errs));
    };
    let mut names: Vec<String> = Vec::new();
    for (id, path, st) in walk(&s.steps) {
        let acts = st.actions();
        if acts.len() != 1 {
            errs.push(err(
                &src,
                &path,
                format!(
                    "step {id} has {} actions: {}",
                    acts.len(),
                    if acts.is_empty() {
                        "none".to_string()
                    } else {
                        acts.join(", ")
                    }
                ),
                &format!("give each step exactly one of {}", ACTIONS.join(", ")),
            ));
            continue;
        }
        if st.for_.is_some() && st.every.is_none() && !st.is_fault() {
            errs.push(err(
                &src,
                &path.key("for"),
                format!("`for` on a `{}` step: it is neither repeated nor a fault", st.action()),
                "add `every: INTERVAL` to repeat the step for that long, or use `for` on impair, link, pause, kill or partition (the fault is undone after that long)",
            ));
        }
        if st.every.is_some() && st.for_.is_none() && st.within.is_none() {
            errs.push(err(
                &src,
                &path.key("every"),
                "`every` without `for` or `within` would repeat forever".into(),
                "add `for: DURATION` (repeat that long) or `within: DURATION` (repeat until the expectations hold)",
            ));
        }
        if st.every.is_some_and(|e| e.0 == 0) {
            errs.push(err(
                &src,
                &path.key("every"),
                "`every: 0s` never waits".into(),
                "give an interval such as `every: 500ms`",
            ));
        }
        if let Some(since) = &st.since {
            if st.within.is_none() {
                errs.push(err(
                    &src,
                    &path.key("since"),
                    "`since` without `within`".into(),
                    "add `within: DURATION`: the step must succeed that long after the end of step `since`",
                ));
            }
            if !names.contains(since) {
                errs.push(err(
                    &src,
                    &path.key("since"),
                    format!(
                        "no earlier step named '{since}'{}",
                        suggest(since, names.iter().map(|s| s.as_str()))
                    ),
                    "name a step that runs before this one (`name:` of an earlier step)",
                ));
            }
        }
        let metrics = st.metrics();
        for (i, a) in st.assert.iter().enumerate() {
            match Assertion::parse(a) {
                Err(m) => errs.push(err(
                    &src,
                    &path.key("assert").index(i),
                    m.to_string(),
                    "write an assertion as METRIC OP NUMBER, e.g. `rtt_ms <= 250`",
                )),
                Ok(a) if a.metric != "elapsed_ms" && !metrics.contains(&a.metric.as_str()) => errs
                    .push(err(
                        &src,
                        &path.key("assert").index(i),
                        format!(
                            "a `{}` step measures no '{}'{}",
                            st.action(),
                            a.metric,
                            suggest(&a.metric, metrics.iter().copied())
                        ),
                        &format!(
                            "use one of: {}",
                            metrics
                                .iter()
                                .copied()
                                .chain(["elapsed_ms"])
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )),
                Ok(_) => {}
            }
        }
        if let Some(n) = &st.name {
            names.push(n.clone());
        }
    }
    check_wasm(
        file,
        &mut s.steps,
        &Path::root(),
        "steps",
        &src,
        read_modules,
        &mut errs,
    );
    if errs.is_empty() {
        s.source = Some(src);
        Ok(s)
    } else {
        errs.sort_by_key(|e| (e.pos.line, e.pos.col));
        Err(SpecErrors(errs))
    }
}

/// Checks every VM and link a scenario names against lab `lab`, before anything runs.
pub fn check_against(s: &Scenario, lab: &Lab) -> std::result::Result<(), SpecErrors> {
    let Some(src) = &s.source else {
        return Ok(());
    };
    let vms: Vec<String> = lab
        .vms()
        .map(|v| format!("{}.{}", v.id.node.as_str(), v.id.vm.as_str()))
        .collect();
    let links: Vec<String> = lab.links.iter().map(|l| l.name.as_str().into()).collect();
    let mut errs = Vec::new();
    let lab_name = lab.name.as_str();
    let vm = |errs: &mut Vec<SpecError>, path: Path, v: &str| {
        let short = v.strip_prefix(&format!("{lab_name}/")).unwrap_or(v);
        if lab.find_vm(short).is_err() {
            errs.push(err(
                src,
                &path,
                format!(
                    "lab '{lab_name}' has no VM '{v}'{}",
                    suggest(short, vms.iter().map(|s| s.as_str()))
                ),
                &format!("write NODE.VM, one of: {}", vms.join(", ")),
            ));
        }
    };
    let link = |errs: &mut Vec<SpecError>, path: Path, l: &str| {
        if lab.link(l).is_none() {
            errs.push(err(
                src,
                &path,
                format!(
                    "lab '{lab_name}' has no link '{l}'{}",
                    suggest(l, links.iter().map(|s| s.as_str()))
                ),
                &if links.is_empty() {
                    format!("lab '{lab_name}' declares no links (`links:` in its file)")
                } else {
                    format!("use one of: {}", links.join(", "))
                },
            ));
        }
    };
    // An address, or a VM name (it has a dot and is not an address).
    let target = |errs: &mut Vec<SpecError>, path: Path, t: &str| {
        if t.parse::<std::net::IpAddr>().is_err() && t.contains('.') && lab.find_vm(t).is_ok() {
            return;
        }
        if t.parse::<std::net::IpAddr>().is_err()
            && t.contains('.')
            && t.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && t.split('.').count() == 2
        {
            vm(errs, path, t);
        }
    };
    for (_, p, st) in walk(&s.steps) {
        if let Some(i) = &st.impair {
            link(&mut errs, p.key("impair").key("link"), &i.link);
        }
        if let Some(l) = &st.clear {
            link(&mut errs, p.key("clear"), l);
        }
        if let Some(l) = &st.link {
            link(&mut errs, p.key("link").key("link"), &l.link);
        }
        if let Some(h) = &st.heal {
            if h != "all" {
                link(&mut errs, p.key("heal"), h);
            }
        }
        if let Some(e) = &st.exec {
            vm(&mut errs, p.key("exec").key("vm"), &e.vm);
        }
        if let Some(r) = &st.rtt {
            vm(&mut errs, p.key("rtt").key("from"), &r.from);
            target(&mut errs, p.key("rtt").key("to"), &r.to);
        }
        for (k, v) in [
            ("pause", &st.pause),
            ("resume", &st.resume),
            ("kill", &st.kill),
        ] {
            if let Some(v) = v {
                vm(&mut errs, p.key(k), v);
            }
        }
        if let Some(r) = &st.restart {
            let short = r.strip_prefix(&format!("{lab_name}/")).unwrap_or(r);
            if short.contains('.') {
                vm(&mut errs, p.key("restart"), r);
            } else if !lab.nodes.iter().any(|n| n.name.as_str() == short) {
                errs.push(err(
                    src,
                    &p.key("restart"),
                    format!("lab '{lab_name}' has no node '{r}'"),
                    "write NODE or NODE.VM",
                ));
            }
        }
        if let Some(ps) = &st.partition {
            for (i, v) in ps.iter().enumerate() {
                vm(&mut errs, p.key("partition").index(i), v);
            }
        }
        if let Some(h) = &st.http {
            vm(&mut errs, p.key("http").key("from"), &h.from);
        }
        if let Some(t) = &st.throughput {
            vm(&mut errs, p.key("throughput").key("from"), &t.from);
            vm(&mut errs, p.key("throughput").key("to"), &t.to);
        }
        if let Some(t) = &st.path {
            vm(&mut errs, p.key("path").key("from"), &t.from);
            target(&mut errs, p.key("path").key("to"), &t.to);
        }
        if let Some(r) = &st.reach {
            for (i, v) in r.vms.iter().enumerate() {
                vm(&mut errs, p.key("reach").key("vms").index(i), v);
            }
            if let Some(m) = st.expect.as_ref().and_then(|e| e.reach.as_ref()) {
                for (from, tos) in m {
                    for v in std::iter::once(from).chain(tos) {
                        if !r.vms.contains(v) {
                            errs.push(err(
                                src,
                                &p.key("expect").key("reach").key(from),
                                format!("'{v}' is not one of this step's `reach.vms`"),
                                &format!("use names from: {}", r.vms.join(", ")),
                            ));
                        }
                    }
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        errs.sort_by_key(|e| (e.pos.line, e.pos.col));
        Err(SpecErrors(errs))
    }
}

/// Loads and checks the module of every `wasm` step (groups included), see
/// [`super::wasm::check_step`].
fn check_wasm(
    file: &str,
    steps: &mut [Step],
    at: &Path,
    key: &str,
    src: &Source,
    read: bool,
    errs: &mut Vec<SpecError>,
) {
    let dir = std::path::Path::new(file)
        .parent()
        .unwrap_or(std::path::Path::new("."));
    for (i, st) in steps.iter_mut().enumerate() {
        let path = at.key(key).index(i);
        if let Some(g) = st.parallel.as_mut() {
            check_wasm(file, g, &path, "parallel", src, read, errs);
        }
        if let Some(g) = st.steps.as_mut() {
            check_wasm(file, g, &path, "steps", src, read, errs);
        }
        if let Some(w) = st.wasm.as_mut() {
            super::wasm::check_step(dir, w, &path.key("wasm"), src, read, errs);
        }
    }
}
