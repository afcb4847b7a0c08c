//! `kobako scenario run FILE`: fault injection and checks against a running lab.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kobako_lab::scenario;
use kobako_runtime::Runtime;

use crate::vm_cmd::runtime;

#[derive(Subcommand)]
pub enum ScenarioCmd {
    /// Run a scenario file against a running lab; exit status 1 if any step fails.
    Run(RunArgs),
    /// Check a scenario file without running it (names too, against a lab file or running lab).
    Check {
        file: String,
        /// Check VM and link names against this running lab (default: the scenario's `lab:`,
        /// if it is up).
        #[arg(long)]
        lab: Option<String>,
        /// Check VM and link names against this lab file.
        #[arg(long, conflicts_with = "lab")]
        lab_file: Option<String>,
    },
}

#[derive(Args)]
pub struct RunArgs {
    pub file: String,
    /// The lab (default: the scenario's `lab:`).
    #[arg(long)]
    pub lab: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<String>,
    /// Write JUnit XML here.
    #[arg(long)]
    pub junit: Option<String>,
    /// Write an HTML report (timeline, RTT plot) here.
    #[arg(long)]
    pub html: Option<String>,
}

fn load(file: &str) -> Result<scenario::Scenario> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
    match scenario::load_str(file, &text) {
        Ok(s) => Ok(s),
        Err(e) => {
            for x in &e.0 {
                eprintln!("{x}");
            }
            bail!("{file}: {} problem(s); nothing was run", e.0.len())
        }
    }
}

fn check_names(file: &str, s: &scenario::Scenario, lab: &kobako_lab::spec::Lab) -> Result<()> {
    if let Err(e) = scenario::check_against(s, lab) {
        for x in &e.0 {
            eprintln!("{x}");
        }
        bail!(
            "{file}: {} problem(s) against lab '{}'; nothing was run",
            e.0.len(),
            lab.name.as_str()
        );
    }
    Ok(())
}

pub async fn run(cmd: ScenarioCmd) -> Result<i32> {
    match cmd {
        ScenarioCmd::Check {
            file,
            lab,
            lab_file,
        } => {
            let s = load(&file)?;
            let against = if let Some(lf) = &lab_file {
                let labs = kobako_lab::spec::load_file(
                    std::path::Path::new(lf),
                    &kobako_lab::spec::HostLimits::detect(),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                let name = s.lab.clone();
                let names: Vec<String> = labs.iter().map(|l| l.name.as_str().to_string()).collect();
                let found = labs
                    .into_iter()
                    .find(|l| name.as_deref().is_none_or(|n| l.name.as_str() == n));
                if found.is_none() {
                    bail!(
                        "{lf} has no lab '{}' (it has: {}); the scenario's `lab:` names the lab it is for",
                        name.unwrap_or_default(),
                        names.join(", ")
                    );
                }
                found
            } else {
                lab.or(s.lab.clone())
                    .and_then(|l| kobako_lab::controller::LabRecord::load(&l))
                    .map(|r| r.lab)
            };
            let n = scenario::walk(&s.steps).len();
            match &against {
                Some(l) => {
                    check_names(&file, &s, l)?;
                    eprintln!(
                        "{file}: scenario '{}' with {n} steps is valid for lab '{}'",
                        s.name,
                        l.name.as_str()
                    );
                }
                None => eprintln!(
                    "{file}: scenario '{}' with {n} steps is valid (names not checked: give --lab-file or bring the lab up)",
                    s.name
                ),
            }
            Ok(0)
        }
        ScenarioCmd::Run(a) => {
            let s = load(&a.file)?;
            let Some(lab) = a.lab.clone().or_else(|| s.lab.clone()) else {
                bail!("which lab? give --lab NAME or `lab:` in {}", a.file);
            };
            let Some(rec) = kobako_lab::controller::LabRecord::load(&lab) else {
                bail!("lab '{lab}' is not up (see `kobako ls`; `kobako up FILE` starts it)");
            };
            check_names(&a.file, &s, &rec.lab)?;
            let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
            let boot = crate::config::boot_settings()?;
            eprintln!(
                "scenario {} on lab {lab}: {} steps",
                s.name,
                scenario::walk(&s.steps).len()
            );
            let r = scenario::run(rt, &s, &lab, &boot, &crate::lab_cmd::Stderr).await?;
            if let Some(p) = &a.json {
                std::fs::write(p, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("write {p}"))?;
            }
            if let Some(p) = &a.junit {
                std::fs::write(p, r.junit()).with_context(|| format!("write {p}"))?;
            }
            if let Some(p) = &a.html {
                std::fs::write(p, r.html()).with_context(|| format!("write {p}"))?;
            }
            let passed = r.steps.iter().filter(|s| s.status == "passed").count();
            let failed = r.steps.iter().filter(|s| s.status == "failed").count();
            let skipped = r.steps.iter().filter(|s| s.status == "skipped").count();
            println!(
                "scenario {}: {} in {} ms — {passed} passed, {failed} failed, {skipped} skipped",
                r.scenario,
                r.verdict(),
                r.duration_ms
            );
            for st in r.steps.iter().filter(|s| s.status == "failed") {
                println!(
                    "  failed: {} {} at {} ms: {}\n    expected: {}\n    observed: {}",
                    st.id,
                    st.name,
                    st.started_ms,
                    st.message.as_deref().unwrap_or(""),
                    st.expected.as_deref().unwrap_or("-"),
                    st.observed.as_deref().unwrap_or("-")
                );
            }
            Ok(if r.passed { 0 } else { 1 })
        }
    }
}
