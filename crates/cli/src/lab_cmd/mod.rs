//! Lab commands: `up`, `down`, `ls`, `inspect`, `link`, `impair`, `capture`, `graph`, `save`,
//! `restart`, `import`, and the internal `lab netd`.
//!
//! This module holds the internal `lab` subcommands, the progress printer and the `up` report
//! table; the commands live in
//! [`check`] (lab file checks), [`lifecycle`] (`up`, `down`, `restart`, `stop`, `start`),
//! [`checkpoint`] (`checkpoint`, `restore`), [`show`] (`ls`, `inspect`, `graph`, `save`) and
//! [`links`] (`link`, `impair`, `capture`).

use clap::Subcommand;
use kobako_lab::controller::{self, Progress};

pub mod check;
pub mod checkpoint;
pub mod import;
pub mod lifecycle;
pub mod links;
pub mod show;

pub use check::check;
pub use checkpoint::{checkpoint, restore_checkpoint};
pub use import::{import, ImportCmd};
pub use lifecycle::{down, restart, start, stop, up, up_dry_run};
pub use links::{capture, impair, link, CaptureArgs, ImpairArgs};
pub use show::{graph, inspect, ls, save};

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
