//! Looking at labs: `kobako ls`, `inspect`, `graph` and `save`, from the stored lab with its
//! VMs' observed states and the live link states and impairments folded in.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use kobako_lab::controller::{self, LabRecord};
use kobako_lab::spec::{self, Impairment, Lab};
use kobako_state::VmState;

fn observed_vms(name: &str) -> Result<Vec<(kobako_state::VmRow, VmState, Option<String>)>> {
    let db = controller::db()?;
    Ok(db
        .vms(name)?
        .into_iter()
        .map(|r| {
            let (s, why) = controller::observed(&r);
            (r, s, why)
        })
        .collect())
}

/// `kobako ls`.
pub fn ls(out: crate::output::OutputArgs) -> Result<i32> {
    let labs = LabRecord::list();
    let mut rows = Vec::new();
    for l in &labs {
        let vms = observed_vms(&l.name)?;
        let ready = vms.iter().filter(|v| v.1 == VmState::Ready).count();
        rows.push(serde_json::json!({
            "name": l.name, "state": l.state, "reason": l.reason, "file": l.file,
            "owner": l.owner, "vms": vms.len(), "ready": ready,
            "memory_mib": l.lab.total_memory().0,
        }));
    }
    if out.is_json() {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no labs (start one with `kobako up FILE`; examples/ has lab files)");
        return Ok(0);
    }
    let wide = out.is_wide();
    print!(
        "{:<24} {:<9} {:>5} {:>6} {:>8}",
        "LAB", "STATE", "VMS", "READY", "MEMORY"
    );
    if wide {
        print!("  {:<16} {:<32}", "OWNER", "REASON");
    }
    println!("  FILE");
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        print!(
            "{:<24} {:<9} {:>5} {:>6} {:>7}M",
            s("name"),
            s("state"),
            r["vms"].as_u64().unwrap_or(0),
            r["ready"].as_u64().unwrap_or(0),
            r["memory_mib"].as_u64().unwrap_or(0),
        );
        if wide {
            let owner = r["owner"].as_str().unwrap_or("-");
            let reason = r["reason"].as_str().unwrap_or("-");
            print!("  {owner:<16} {reason:<32}");
        }
        println!("  {}", s("file"));
    }
    Ok(0)
}

pub(super) fn impairment_text(i: &Impairment) -> String {
    let mut v = Vec::new();
    if let Some(d) = i.delay {
        v.push(format!("delay {d}"));
    }
    if let Some(d) = i.jitter {
        v.push(format!("jitter {d}"));
    }
    if let Some(c) = i.loss {
        v.push(format!("loss {}", c.percent));
    }
    if let Some(r) = i.rate {
        v.push(format!("rate {r}"));
    }
    if let Some(c) = i.corrupt {
        v.push(format!("corrupt {}", c.percent));
    }
    if let Some(c) = i.duplicate {
        v.push(format!("duplicate {}", c.percent));
    }
    if let Some(c) = i.reorder {
        v.push(format!("reorder {}", c.percent));
    }
    v.join(", ")
}

/// The stored lab with live link states and impairments folded in (what `save` writes).
fn live_lab(rec: &LabRecord) -> Result<Lab> {
    let db = controller::db()?;
    let mut lab = rec.lab.clone();
    for row in db.links(&rec.name)? {
        if let Some(l) = lab.links.iter_mut().find(|l| l.name.as_str() == row.name) {
            l.state = if row.up {
                spec::LinkState::Up
            } else {
                spec::LinkState::Down
            };
            l.impair = match row.impairment {
                Some(v) => serde_json::from_value(v).context("stored impairment")?,
                None => Impairment::default(),
            };
        }
    }
    Ok(lab)
}

fn load(name: &str) -> Result<LabRecord> {
    match LabRecord::load(name) {
        Some(r) => Ok(r),
        None => {
            let names: Vec<String> = LabRecord::list().into_iter().map(|r| r.name).collect();
            bail!(
                "lab '{name}' is not up{} (labs: {})",
                spec::error::suggest(name, names.iter().map(|s| s.as_str())),
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )
        }
    }
}

/// `kobako inspect NAME`.
pub fn inspect(name: &str, json: bool) -> Result<i32> {
    let rec = load(name)?;
    let lab = live_lab(&rec)?;
    let vms = observed_vms(name)?;
    let state_of = |n: &str| {
        vms.iter()
            .find(|v| v.0.name == n)
            .map(|v| (v.1, v.2.clone(), v.0.boot_ms))
    };
    if json {
        let vm_json: BTreeMap<String, serde_json::Value> = vms
            .iter()
            .map(|(r, s, why)| {
                (
                    r.name.clone(),
                    serde_json::json!({"state": s, "reason": why, "boot_ms": r.boot_ms}),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "name": rec.name, "file": rec.file, "owner": rec.owner, "state": rec.state,
                "reason": rec.reason, "vms": vm_json, "lab": lab,
            }))?
        );
        return Ok(0);
    }
    println!(
        "lab {} [{}{}]  {}",
        rec.name,
        rec.state,
        rec.reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default(),
        rec.file.clone().unwrap_or_default()
    );
    for node in &lab.nodes {
        println!("  node {}", node.name.as_str());
        for vm in &node.vms {
            let vname = controller::vm_name(&lab, vm);
            let (state, why, boot) = state_of(&vname).unwrap_or((VmState::Pending, None, None));
            println!(
                "    {:<10} [{}{}] {} vCPU, {} MiB, image {}, apparmor {}{}",
                vm.id.vm.as_str(),
                state,
                why.map(|w| format!(": {w}")).unwrap_or_default(),
                vm.vcpus,
                vm.memory.0,
                vm.image,
                vm.apparmor,
                boot.map(|b| format!(", ready after {b} ms"))
                    .unwrap_or_default()
            );
            for i in &vm.interfaces {
                let addrs: Vec<String> = i.addresses.iter().map(|a| a.to_string()).collect();
                let on = match &i.attach {
                    spec::Attachment::NodeNetwork => "node network".to_string(),
                    spec::Attachment::Network(n) => format!("network {}", n.as_str()),
                    spec::Attachment::Link(l) => format!("link {}", l.as_str()),
                };
                println!(
                    "      {:<6} {:<22} {}  {}",
                    i.name.as_str(),
                    on,
                    i.mac,
                    addrs.join(" ")
                );
            }
        }
    }
    for n in &lab.networks {
        println!(
            "  network {}{}{}",
            n.name.as_str(),
            n.subnet.map(|s| format!(" {s}")).unwrap_or_default(),
            n.vlan.map(|v| format!(" vlan {v}")).unwrap_or_default()
        );
    }
    for l in &lab.links {
        let imp = impairment_text(&l.impair);
        println!(
            "  link {} {} — {} [{}]{}",
            l.name.as_str(),
            l.endpoints[0],
            l.endpoints[1],
            if l.state == spec::LinkState::Up {
                "up"
            } else {
                "down"
            },
            if imp.is_empty() {
                String::new()
            } else {
                format!(" {imp}")
            }
        );
    }
    Ok(0)
}

/// `kobako graph NAME --format mermaid|dot|json`.
pub fn graph(name: &str, format: &str) -> Result<i32> {
    let lab = live_lab(&load(name)?)?;
    match format {
        "mermaid" => print!("{}", lab.to_mermaid()),
        "dot" => print!("{}", lab.to_dot()),
        "json" => println!("{}", serde_json::to_string_pretty(&lab)?),
        other => bail!("--format {other}: use mermaid, dot or json"),
    }
    Ok(0)
}

/// `kobako save NAME [-o FILE]`: the running lab (with live link states and impairments) as a
/// lab file.
pub fn save(name: &str, out: Option<&str>) -> Result<i32> {
    let lab = live_lab(&load(name)?)?;
    let yaml = lab.to_yaml();
    match out {
        Some(p) => {
            std::fs::write(p, &yaml).with_context(|| format!("write {p}"))?;
            eprintln!("lab {name}: saved to {p}");
        }
        None => print!("{yaml}"),
    }
    Ok(0)
}
