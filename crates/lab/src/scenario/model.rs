//! The scenario file: its steps and what they expect, as parsed.

use serde::{Deserialize, Serialize};

use crate::spec::error::SpecErrors;
use crate::spec::units::{BitRate, Micros, Percent};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The running lab it is for (`--lab` overrides).
    #[serde(default)]
    pub lab: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: Option<String>,
    /// Wait this long before the step.
    #[serde(default)]
    pub after: Option<Micros>,
    #[serde(default)]
    pub expect: Option<Expect>,
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
    pub to: String,
    #[serde(default = "three")]
    pub count: u32,
}

fn three() -> u32 {
    3
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
    /// Round trip (rtt: the average), milliseconds.
    #[serde(default)]
    pub max_ms: Option<f64>,
    #[serde(default)]
    pub min_ms: Option<f64>,
    /// Packet loss of an `rtt` step, percent.
    #[serde(default)]
    pub max_loss: Option<f64>,
    #[serde(default)]
    pub min_loss: Option<f64>,
}

/// Parses and checks a scenario file.
pub fn load_str(file: &str, text: &str) -> std::result::Result<Scenario, SpecErrors> {
    let (v, mut errs) = crate::spec::parse::parse::<Scenario>(file, text);
    let Some((s, src)) = v else {
        return Err(SpecErrors(errs));
    };
    for (i, st) in s.steps.iter().enumerate() {
        let n = st.actions().len();
        if n != 1 {
            let path = crate::spec::error::Path::root().key("steps").index(i);
            errs.push(crate::spec::error::SpecError {
                file: file.into(),
                pos: src.root.get(&path).map(|n| n.pos).unwrap_or_default(),
                path,
                message: format!(
                    "step {} has {} actions: {}",
                    i + 1,
                    n,
                    if n == 0 {
                        "none".to_string()
                    } else {
                        st.actions().join(", ")
                    }
                ),
                fix: Some(
                    "give each step exactly one of wait_ready, impair, clear, link, exec, rtt, sleep, pause, resume, restart".into(),
                ),
            });
        }
    }
    if errs.is_empty() {
        Ok(s)
    } else {
        Err(SpecErrors(errs))
    }
}

impl Step {
    pub fn actions(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |b: bool, n| {
            if b {
                v.push(n)
            }
        };
        add(self.wait_ready.is_some(), "wait_ready");
        add(self.impair.is_some(), "impair");
        add(self.clear.is_some(), "clear");
        add(self.link.is_some(), "link");
        add(self.exec.is_some(), "exec");
        add(self.rtt.is_some(), "rtt");
        add(self.sleep.is_some(), "sleep");
        add(self.pause.is_some(), "pause");
        add(self.resume.is_some(), "resume");
        add(self.restart.is_some(), "restart");
        v
    }

    pub fn title(&self, i: usize) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "step {} ({})",
                i + 1,
                self.actions().first().copied().unwrap_or("?")
            )
        })
    }
}
