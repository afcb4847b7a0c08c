//! A running lab's links from the command line: `kobako link` (up/down), `impair` and
//! `capture` (pcapng of one end).

use anyhow::{bail, Context, Result};
use clap::Args;
use kobako_lab::controller;
use kobako_lab::spec::{self, Impairment};

use super::show::impairment_text;
use crate::vm_names::lab_env;

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
