//! Lab checkpoints from the command line: `kobako checkpoint` (take, list, delete) and
//! `kobako restore`.

use std::sync::Arc;

use anyhow::{bail, Result};
use kobako_lab::controller;
use kobako_runtime::Runtime;

use super::{print_report, Stderr};
use crate::vm_cmd::runtime;

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
