//! Lab commands: `up`, `down`, `ls`, `inspect`, `link`, `impair`, `capture`, `graph`, `save`,
//! `restart`, and the internal `lab netd`.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kobako_lab::controller::{self, LabRecord, Progress};
use kobako_lab::spec::{self, HostLimits, Impairment, Lab};
use kobako_runtime::Runtime;
use kobako_state::VmState;

use crate::resolve::RootKind;
use crate::vm_cmd::{config_from, runtime, RunArgs};
use crate::vm_names::lab_env;

pub(crate) struct Stderr;

impl Progress for Stderr {
    fn event(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// Internal lab commands.
#[derive(Subcommand)]
pub enum LabCmd {
    /// Check a lab file offline: everything `up` validates, plus that every image and kernel
    /// exists or can be built. Nothing starts; exit 1 on any problem.
    Check { file: String },
    /// (internal) The per-lab net daemon holding userspace impairment relays.
    #[command(hide = true)]
    Netd { lab: String },
}

/// The boot config of a lab VM: the same resolution as `kobako vm run --image ...`.
pub(crate) fn resolver(
) -> impl Fn(&spec::Vm, &str) -> std::result::Result<kobako_runtime::config::VmConfig, String>
       + Send
       + Sync {
    let accel = std::env::var("KOBAKO_ACCEL").unwrap_or_else(|_| "auto".into());
    move |vm: &spec::Vm, name: &str| {
        let args = RunArgs {
            kernel: vm.kernel.clone(),
            image: vm.image.clone(),
            root: RootKind::Initramfs,
            vcpus: vm.vcpus,
            memory: format!("{}M", vm.memory.0),
            // The lab's guest settings (AppArmor's mode).
            cmdline: vm.kernel_cmdline(),
            name: Some(name.to_string()),
            detach: true,
            accel: accel.clone(),
            timeout: 120,
            json: false,
            names_only: true,
            // Labs need NICs and the agent channel: QEMU (the vmm runtime has no virtio yet).
            runtime: "qemu".into(),
        };
        config_from(&args)
            .map(|(cfg, _)| cfg)
            .map_err(|e| format!("{e:#}"))
    }
}

fn print_report(report: &controller::UpReport) {
    println!(
        "{:<32} {:<8} {:<8} {:>9}  ADDRESSES",
        "VM", "STATE", "ACTION", "BOOT"
    );
    for v in &report.vms {
        println!(
            "{:<32} {:<8} {:<8} {:>9}  {}",
            v.name,
            v.state,
            v.action,
            v.boot_ms.map(|b| format!("{b} ms")).unwrap_or("-".into()),
            v.addresses.join(" ")
        );
        if let Some(e) = &v.error {
            println!("    error: {e}");
        }
    }
    for r in &report.removed {
        println!("{r:<32} removed");
    }
    println!(
        "lab {}: {} of {} VMs ready in {} ms ({})",
        report.lab,
        report.vms.iter().filter(|v| v.error.is_none()).count(),
        report.vms.len(),
        report.total_ms,
        report.state
    );
}

/// What a lab needs that is not there yet, per VM field: unknown images, missing or unbootable
/// image and kernel files. Empty when `up` will find (or build) everything.
fn missing_artifacts(lab: &Lab) -> Vec<String> {
    use kobako_image::store::StoreError;
    use kobako_image::{disk, kernel, recipes};
    use spec::{ImageSource, KernelSource};
    let store = crate::image_cmd::store();
    let mut out = Vec::new();
    for vm in lab.vms() {
        let at = format!("{}: nodes.{}.vms.{}", lab.name, vm.id.node, vm.id.vm);
        match ImageSource::of(&vm.image) {
            ImageSource::Store(name) if name == "tiny" || recipes::find(name).is_some() => {}
            ImageSource::Store(name) => match store.get(name) {
                Ok(_) => {}
                Err(StoreError::NotFound { known, .. }) => out.push(format!(
                    "{at}.image: {}",
                    crate::resolve::unknown_image(name, &known)
                )),
                Err(e) => out.push(format!("{at}.image: {e}")),
            },
            ImageSource::Host(p) => match disk::sniff(p) {
                Ok(disk::Sniff::Cpio | disk::Sniff::Qcow2 | disk::Sniff::Ext4) => {}
                Ok(_) => out.push(format!(
                    "{at}.image: {} is not an initramfs, ext4 or qcow2 image (import archives with `kobako image import`)",
                    p.display()
                )),
                Err(e) => out.push(format!("{at}.image: {}: {e}", p.display())),
            },
        }
        if let KernelSource::Host(p) = KernelSource::of(&vm.kernel) {
            if let Err(e) = kernel::inspect(p) {
                out.push(format!("{at}.kernel: {e}"));
            }
        }
    }
    out
}

/// `kobako lab check FILE`: the lab file as `up` would take it, without starting anything.
pub fn check(file: &str) -> Result<i32> {
    let labs = match spec::load_file(std::path::Path::new(file), &HostLimits::detect()) {
        Ok(l) => l,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(1);
        }
    };
    let mut problems = Vec::new();
    for lab in &labs {
        problems.extend(missing_artifacts(lab));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!(
            "{file}: {} problem(s); `up` would not start",
            problems.len()
        );
        return Ok(1);
    }
    let kernel = if kobako_image::kernel::cached().is_some() {
        "cached"
    } else {
        "built at the first `up` (about 15 minutes)"
    };
    for lab in &labs {
        let mut images: Vec<&str> = lab.vms().map(|v| v.image.as_str()).collect();
        images.sort_unstable();
        images.dedup();
        println!(
            "lab {}: OK — {} node(s), {} VM(s), {} network(s), {} link(s); images {}; guest kernel {kernel}",
            lab.name,
            lab.nodes.len(),
            lab.vms().count(),
            lab.networks.len(),
            lab.links.len(),
            images.join(", ")
        );
    }
    Ok(0)
}

/// The labs of `file`, checked as `up` checks them before it starts anything: the file itself,
/// and every image and kernel there (or buildable).
fn checked_labs(file: &str) -> Result<Vec<spec::Lab>> {
    let labs = match spec::load_file(std::path::Path::new(file), &HostLimits::detect()) {
        Ok(l) => l,
        Err(errs) => {
            eprintln!("{errs}");
            bail!("{file}: {} problem(s); nothing was started", errs.0.len());
        }
    };
    let missing: Vec<String> = labs.iter().flat_map(missing_artifacts).collect();
    if !missing.is_empty() {
        for m in &missing {
            eprintln!("{m}");
        }
        bail!("{file}: {} problem(s); nothing was started", missing.len());
    }
    Ok(labs)
}

/// `kobako up --dry-run FILE`: the checks and the plan of `up`, nothing changed.
pub fn up_dry_run(file: &str, json: bool) -> Result<i32> {
    let labs = checked_labs(file)?;
    let db = controller::db()?;
    let mut plans = Vec::new();
    for lab in &labs {
        let plan = controller::plan(&db, lab)?;
        if !json {
            println!("lab {}: {}", lab.name.as_str(), plan.summary());
            for n in &plan.create {
                println!("  create {n}");
            }
        }
        plans.push(serde_json::json!({"lab": lab.name.as_str(), "plan": plan}));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&plans)?);
    } else {
        eprintln!("{file}: checked; dry run, nothing was changed");
    }
    Ok(0)
}

/// `kobako up FILE`.
pub async fn up(file: &str, json: bool) -> Result<i32> {
    let labs = checked_labs(file)?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let resolve = resolver();
    let file_abs = std::fs::canonicalize(file)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| file.to_string());
    let mut code = 0;
    let mut reports = Vec::new();
    for lab in labs {
        eprintln!("lab {}: up", lab.name.as_str());
        let report = controller::up(
            rt.clone(),
            &lab,
            Some(file_abs.clone()),
            None,
            &resolve,
            &Stderr,
        )
        .await?;
        if !json {
            print_report(&report);
        }
        if !report.ok() {
            code = 1;
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(code)
}

/// `kobako down NAME`.
pub async fn down(name: &str, json: bool) -> Result<i32> {
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let n = controller::down(rt, name).await?;
    if json {
        println!("{}", serde_json::json!({"lab": name, "stopped_vms": n}));
    } else {
        eprintln!("lab {name}: down ({n} VMs stopped, network and state removed)");
    }
    Ok(0)
}

/// `kobako restart [LAB/]NODE[.VM]` or `kobako restart LAB`.
pub async fn restart(target: &str, json: bool) -> Result<i32> {
    let (lab, what) = split_target(target)?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let resolve = resolver();
    let report = controller::restart(rt, &lab, what.as_deref(), &resolve, &Stderr).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.ok() { 0 } else { 1 })
}

/// The lab and `NODE[.VM]` of a `stop`/`start` target (a whole lab is `down`/`up`).
fn node_target(target: &str, verb: &str) -> Result<(String, String)> {
    match split_target(target)? {
        (lab, Some(what)) => Ok((lab, what)),
        (lab, None) => bail!(
            "'{target}' is a lab: `kobako {verb}` takes a node or VM of it (NODE, NODE.VM or {lab}/NODE.VM); a whole lab is {}",
            if verb == "stop" {
                "taken down with `kobako down LAB`"
            } else {
                "brought up with `kobako up FILE`"
            }
        ),
    }
}

/// `kobako stop NODE[.VM]`.
pub async fn stop(target: &str) -> Result<i32> {
    let (lab, what) = node_target(target, "stop")?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    let n = controller::stop_vms(rt, &lab, &what, &format!("stopped by {who}"), &Stderr).await?;
    if n == 0 {
        println!("{lab}/{what} was already stopped; `kobako start {lab}/{what}` starts it");
    } else {
        println!(
            "{n} VM(s) of {lab}/{what} stopped; lab {lab} is degraded until `kobako start {lab}/{what}`"
        );
    }
    Ok(0)
}

/// `kobako start NODE[.VM]`.
pub async fn start(target: &str, json: bool) -> Result<i32> {
    let (lab, what) = node_target(target, "start")?;
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let resolve = resolver();
    let report = controller::start_vms(rt, &lab, &what, &resolve, &Stderr).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.ok() { 0 } else { 1 })
}

/// `LAB`, `LAB/NODE[.VM]`, or `NODE[.VM]` of the one lab that has it.
fn split_target(t: &str) -> Result<(String, Option<String>)> {
    if let Some((l, w)) = t.split_once('/') {
        return Ok((l.to_string(), Some(w.to_string())));
    }
    if let Some(l) = lab_env() {
        return Ok((l, Some(t.to_string())));
    }
    let labs = LabRecord::list();
    if labs.iter().any(|r| r.name == t) {
        return Ok((t.to_string(), None));
    }
    let hits: Vec<&LabRecord> = labs
        .iter()
        .filter(|r| {
            if t.contains('.') {
                r.lab.find_vm(t).is_ok()
            } else {
                r.lab.node(t).is_some()
            }
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok((one.name.clone(), Some(t.to_string()))),
        [] => bail!("no lab, node or VM '{t}' (see `kobako ls` and `kobako inspect LAB`)"),
        many => bail!(
            "'{t}' is in several labs: write LAB/{t} ({})",
            many.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

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

fn impairment_text(i: &Impairment) -> String {
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

/// `kobako link LINK up|down`.
pub fn link(link: &str, state: &str, lab: Option<&str>, json: bool) -> Result<i32> {
    let up = match state {
        "up" => true,
        "down" => false,
        other => bail!("link state '{other}': use up or down"),
    };
    let lab = lab.map(str::to_string).or_else(lab_env);
    let (lab, link) = controller::resolve_link(link, lab.as_deref())?;
    controller::set_link_state(&lab, &link, up)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"lab": lab, "link": link, "up": up})
        );
    } else {
        eprintln!("lab {lab}: link {link} {state}");
    }
    Ok(0)
}

/// Impairment flags of `kobako impair`.
#[derive(Args)]
pub struct ImpairArgs {
    /// The link (`LINK` or `LAB/LINK`).
    pub link: String,
    /// The lab (default: the one lab that has LINK; env KOBAKO_LAB).
    #[arg(long)]
    pub lab: Option<String>,
    /// One-way delay, each direction (e.g. 100ms).
    #[arg(long)]
    pub delay: Option<String>,
    /// Delay variation (e.g. 10ms).
    #[arg(long)]
    pub jitter: Option<String>,
    /// Packet loss (e.g. 5%).
    #[arg(long)]
    pub loss: Option<String>,
    /// Rate limit (e.g. 10mbit).
    #[arg(long)]
    pub rate: Option<String>,
    /// Corrupted packets (e.g. 0.1%).
    #[arg(long)]
    pub corrupt: Option<String>,
    /// Duplicated packets (e.g. 1%).
    #[arg(long)]
    pub duplicate: Option<String>,
    /// Reordered packets (e.g. 5%; needs --delay).
    #[arg(long)]
    pub reorder: Option<String>,
    /// Remove every impairment of the link.
    #[arg(long, conflicts_with_all = ["delay", "jitter", "loss", "rate", "corrupt", "duplicate", "reorder"])]
    pub clear: bool,
    #[arg(long)]
    pub json: bool,
}

fn parse_flag<T: std::str::FromStr<Err = String>>(
    flag: &str,
    v: &Option<String>,
) -> Result<Option<T>> {
    v.as_deref()
        .map(|s| s.parse::<T>().map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
        .transpose()
}

/// `kobako impair LINK --delay ... | --clear`.
pub fn impair(a: ImpairArgs) -> Result<i32> {
    let chance = |flag: &str, v: &Option<String>| -> Result<Option<spec::model::Chance>> {
        Ok(
            parse_flag::<spec::units::Percent>(flag, v)?.map(|p| spec::model::Chance {
                percent: p,
                correlation: Default::default(),
            }),
        )
    };
    let imp = Impairment {
        delay: parse_flag("delay", &a.delay)?,
        jitter: parse_flag("jitter", &a.jitter)?,
        loss: chance("loss", &a.loss)?,
        rate: parse_flag("rate", &a.rate)?,
        corrupt: chance("corrupt", &a.corrupt)?,
        duplicate: chance("duplicate", &a.duplicate)?,
        reorder: chance("reorder", &a.reorder)?,
    };
    if imp.is_none() && !a.clear {
        bail!("say what to change: --delay, --jitter, --loss, --rate, --corrupt, --duplicate, --reorder, or --clear");
    }
    let lab = a.lab.clone().or_else(lab_env);
    let (lab, link) = controller::resolve_link(&a.link, lab.as_deref())?;
    controller::impair(&lab, &link, (!a.clear).then_some(imp))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"lab": lab, "link": link, "impairment": (!a.clear).then_some(imp)})
        );
    } else if a.clear {
        eprintln!("lab {lab}: link {link}: impairments cleared");
    } else {
        eprintln!(
            "lab {lab}: link {link}: {} (each direction)",
            impairment_text(&imp)
        );
    }
    Ok(0)
}

/// `kobako capture LINK`.
#[derive(Args)]
pub struct CaptureArgs {
    /// The link (`LINK` or `LAB/LINK`).
    pub link: String,
    #[arg(long)]
    pub lab: Option<String>,
    /// Write pcapng here (default: stdout, e.g. `| wireshark -k -i -` or `| tshark -r -`).
    #[arg(short = 'w', long)]
    pub write: Option<String>,
    /// Stop after this many packets.
    #[arg(short = 'c', long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Capture at endpoint 1 or 2 of the link (both see both directions).
    #[arg(long, default_value_t = 1)]
    pub end: usize,
}

/// `kobako capture LINK [-w FILE] [-c N] [--duration S]`.
pub async fn capture(a: CaptureArgs) -> Result<i32> {
    let lab = a.lab.clone().or_else(lab_env);
    let (lab, link) = controller::resolve_link(&a.link, lab.as_deref())?;
    if a.end == 0 || a.end > 2 {
        bail!("--end: a link has endpoints 1 and 2");
    }
    let sink: Box<dyn std::io::Write + Send> = match &a.write {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("create {p}"))?),
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!("pcapng is binary: write it to a file with -w FILE or pipe it (e.g. `| tshark -r -`)");
            }
            Box::new(std::io::stdout())
        }
    };
    let opts = kobako_net::capture::CaptureOptions {
        max_packets: a.count,
        duration: a.duration.map(std::time::Duration::from_secs_f64),
        ..Default::default()
    };
    let (cap, at) = controller::capture(&lab, &link, a.end - 1, sink, opts)?;
    eprintln!("capturing lab {lab} link {link} at {at}; Ctrl-C stops");
    let n = if a.count.is_some() || a.duration.is_some() {
        let waiter = tokio::task::spawn_blocking(move || cap.wait());
        tokio::select! {
            r = waiter => r??,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted");
                0
            }
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
        tokio::task::spawn_blocking(move || cap.stop()).await??
    };
    eprintln!("{n} packets captured");
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

/// `kobako checkpoint LAB NAME | LAB --list | LAB NAME --delete`.
pub async fn checkpoint(
    lab: &str,
    name: Option<&str>,
    list: bool,
    delete: bool,
    json: bool,
) -> Result<i32> {
    use kobako_lab::controller::checkpoint as cp;
    match (name, list, delete) {
        (_, true, _) => {
            let all = cp::list(lab)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!(
                    "lab {lab} has no checkpoints (take one with `kobako checkpoint {lab} NAME`)"
                );
            } else {
                println!(
                    "{:<20} {:>4} {:>10} {:>9}  CREATED",
                    "CHECKPOINT", "VMS", "SIZE", "PAUSED"
                );
                for c in all {
                    println!(
                        "{:<20} {:>4} {:>9}M {:>7}ms  {}",
                        c.name,
                        c.vms,
                        c.bytes >> 20,
                        c.paused_ms,
                        kobako_image::store::rfc3339_ms(c.created_ms)
                    );
                }
            }
            Ok(0)
        }
        (Some(n), false, true) => {
            cp::delete(lab, n)?;
            eprintln!("lab {lab}: checkpoint {n} deleted");
            Ok(0)
        }
        (Some(n), false, false) => {
            let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
            let info = cp::checkpoint(rt, lab, n, &Stderr).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                eprintln!(
                    "lab {lab}: checkpoint {n}: {} VMs, {} MiB, guests paused {} ms",
                    info.vms,
                    info.bytes >> 20,
                    info.paused_ms
                );
            }
            Ok(0)
        }
        (None, false, _) => {
            bail!("name the checkpoint: `kobako checkpoint {lab} NAME` (or --list)")
        }
    }
}

/// `kobako restore LAB NAME`.
pub async fn restore_checkpoint(lab: &str, name: &str, json: bool) -> Result<i32> {
    let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
    let report = controller::checkpoint::restore(rt, lab, name, &Stderr).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.ok() { 0 } else { 1 })
}

/// `kobako lab ...` (internal).
pub fn lab(cmd: LabCmd) -> i32 {
    match cmd {
        LabCmd::Netd { lab } => controller::netd::main(&lab),
        LabCmd::Check { file } => match check(&file) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("kobako: error: {e:#}");
                1
            }
        },
    }
}
