//! `kobako fn`: function as a VM (deploy, invoke, ls, rm).

use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::Result;
use clap::Subcommand;
use kobako_lab::functions::{self, Function};
use kobako_runtime::Runtime;

use crate::vm_cmd::{config_from, runtime, RunArgs};
use kobako_boot::RootKind;

#[derive(Subcommand)]
pub enum FnCmd {
    /// Deploy a function: boot its image once and keep a warm snapshot of it.
    Deploy {
        name: String,
        /// `sh -c` handler: reads the invocation's stdin, writes its answer to stdout.
        #[arg(long)]
        run: String,
        #[arg(long, default_value = "tiny")]
        image: String,
        #[arg(long, default_value = "default")]
        kernel: String,
        #[arg(long, default_value = "128M")]
        memory: String,
        /// Seconds an invocation may run.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Invocations at the same time, at most.
        #[arg(long, default_value_t = 2)]
        concurrency: u32,
        #[arg(long, env = "KOBAKO_ACCEL", default_value = "auto")]
        accel: kobako_boot::AccelMode,
        #[arg(long)]
        json: bool,
    },
    /// Invoke a function in a fresh clone: stdin in, stdout out, its exit status as ours.
    Invoke {
        name: String,
        /// Print a JSON record (output, status, timings) instead of the raw output.
        #[arg(long)]
        json: bool,
    },
    /// List deployed functions (`-o wide` adds owner, timeout, boot and deploy time).
    Ls {
        #[command(flatten)]
        out: crate::output::OutputArgs,
    },
    /// Remove a function.
    Rm { name: String },
}

pub async fn run(cmd: FnCmd) -> Result<i32> {
    match cmd {
        FnCmd::Deploy {
            name,
            run,
            image,
            kernel,
            memory,
            timeout,
            concurrency,
            accel,
            json,
        } => {
            let args = RunArgs {
                kernel,
                image: image.clone(),
                root: RootKind::Initramfs,
                vcpus: 1,
                memory,
                cmdline: String::new(),
                name: Some(format!("fn-{name}-warm")),
                detach: true,
                accel,
                timeout: 120,
                json: false,
                names_only: true,
                runtime: "qemu".into(),
                vmm_bin: None,
            };
            let (cfg, _) = config_from(&args)?;
            let f = Function {
                name,
                owner: None,
                image,
                memory_mib: cfg.memory_mib,
                run,
                timeout_secs: timeout,
                concurrency,
                deployed_ms: 0,
                boot_ms: 0,
                snapshot_bytes: 0,
            };
            let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
            let owned = cfg.owned_paths.clone();
            let r = functions::deploy(rt, f, cfg, &crate::lab_cmd::Stderr).await;
            kobako_boot::discard(&owned);
            let f = r?;
            if json {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                eprintln!(
                    "function {}: deployed (cold boot {} ms, warm snapshot {} MiB); invoke with `kobako fn invoke {}`",
                    f.name,
                    f.boot_ms,
                    f.snapshot_bytes >> 20,
                    f.name
                );
            }
            Ok(0)
        }
        FnCmd::Invoke { name, json } => {
            let mut input = Vec::new();
            if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                std::io::stdin().read_to_end(&mut input)?;
            }
            let rt: Arc<dyn Runtime> = Arc::new(runtime()?);
            let inv = functions::invoke(rt, &name, input).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inv)?);
            } else {
                std::io::stdout().write_all(&inv.stdout)?;
                std::io::stderr().write_all(&inv.stderr)?;
                let t = &inv.timings;
                eprintln!(
                    "kobako: {} in {} ms (restore {} ms, identity {} ms, run {} ms, destroy {} ms){}",
                    inv.clone,
                    t.total_ms,
                    t.restore_ms,
                    t.identity_ms,
                    t.run_ms,
                    t.destroy_ms,
                    if inv.timed_out { "; TIMED OUT" } else { "" }
                );
            }
            Ok(inv.exit_code())
        }
        FnCmd::Ls { out } => {
            let all = functions::list();
            let wide = out.is_wide();
            if out.is_json() {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no functions (deploy one with `kobako fn deploy NAME --run CMD`)");
            } else {
                print!(
                    "{:<20} {:<10} {:>7} {:>5}",
                    "FUNCTION", "IMAGE", "MEMORY", "MAX"
                );
                if wide {
                    print!(
                        " {:<12} {:>7} {:>9} {:<16}",
                        "OWNER", "TIMEOUT", "BOOT", "DEPLOYED"
                    );
                }
                println!("  RUN");
                for f in all {
                    print!(
                        "{:<20} {:<10} {:>6}M {:>5}",
                        f.name, f.image, f.memory_mib, f.concurrency
                    );
                    if wide {
                        print!(
                            " {:<12} {:>6}s {:>6} ms {:<16}",
                            f.owner.as_deref().unwrap_or("-"),
                            f.timeout_secs,
                            f.boot_ms,
                            crate::output::utc(Some(f.deployed_ms))
                        );
                    }
                    println!("  {}", f.run);
                }
            }
            Ok(0)
        }
        FnCmd::Rm { name } => {
            functions::remove(&name)?;
            eprintln!("function {name}: removed");
            Ok(0)
        }
    }
}
