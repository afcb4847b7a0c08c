//! `kobako`: the one binary. Subcommands: `image` (kernel, tiny), `vm` (run, ls, stop, rm,
//! console, exec, pause, resume), `exec`, `shell`, `cp`, `bench boot`, and the internal
//! `vm supervise`.

mod bench;
mod bench_lab;
mod bench_snap;
mod config;
mod console;
mod fn_cmd;
mod guest_cmd;
mod image_cmd;
mod lab_cmd;
mod output;
mod scenario_cmd;
mod serve_cmd;
mod version_cmd;
mod vm_cmd;
mod vm_names;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kobako",
    version,
    about = "Fast, light Linux microVMs and network labs"
)]
struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "KOBAKO_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build and manage guest kernels and images.
    #[command(subcommand)]
    Image(image_cmd::ImageCmd),
    /// Run and manage single microVMs.
    #[command(subcommand)]
    Vm(vm_cmd::VmCmd),
    /// Bring up the labs of a lab file, or converge running ones to it (plan, then apply).
    Up {
        file: String,
        #[arg(long)]
        json: bool,
        /// Boot every VM instead of cloning it from a warm snapshot (also `KOBAKO_WARM=0`).
        #[arg(long)]
        cold: bool,
        /// Check everything `up` checks before it starts anything (the file, every image and
        /// kernel) and print the plan (VMs to create, keep, replace, remove); change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Take a lab down: its VMs, network and state.
    Down {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List labs with their state (`-o wide` adds owner and the state's reason).
    Ls {
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Show a lab: nodes, VMs (state, boot time), interfaces, addresses, links, impairments.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Cut (down) or heal (up) a link of a running lab: `link LINK down`.
    Link {
        /// The link (`LINK` or `LAB/LINK`).
        link: String,
        /// up or down
        state: String,
        /// The lab (default: the one lab that has LINK; env KOBAKO_LAB).
        #[arg(long)]
        lab: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Impair a link live (both directions): `impair LINK --delay 100ms --loss 5%`, `--clear`.
    Impair(lab_cmd::ImpairArgs),
    /// Capture a link's traffic as pcapng (`-w FILE`, or to a pipe).
    Capture(lab_cmd::CaptureArgs),
    /// Draw a lab: `graph NAME --format mermaid|dot|json`.
    Graph {
        name: String,
        #[arg(long, default_value = "mermaid")]
        format: String,
    },
    /// Convert a topology of another tool into a kobako lab file: `import clab topo.clab.yml
    /// -o lab.yaml` (`kobako up topo.clab.yml` runs one without converting it first).
    #[command(subcommand)]
    Import(lab_cmd::ImportCmd),
    /// Write a running lab (with live link states and impairments) as a lab file.
    Save {
        name: String,
        /// Output file (default: stdout).
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Stop a node (`NODE`) or one VM (`NODE.VM`) of a running lab, keeping it in the lab (its
    /// links stay; the lab is `degraded` until `start`); `LAB/NODE.VM` when ambiguous.
    Stop { target: String },
    /// Start the stopped VMs of a node (`NODE`) or one VM (`NODE.VM`) again: booted and
    /// configured as at `up`; `LAB/NODE.VM` when ambiguous.
    Start {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Restart a lab (`LAB`), a node (`NODE`) or one VM (`NODE.VM`); `LAB/NODE.VM` when ambiguous.
    Restart {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint a running lab (every VM's memory, devices and disks, link states and
    /// impairments) as NAME; `--list` shows checkpoints, `--delete` removes one.
    Checkpoint {
        lab: String,
        name: Option<String>,
        #[arg(long, conflicts_with = "delete")]
        list: bool,
        #[arg(long)]
        delete: bool,
        #[arg(long)]
        json: bool,
    },
    /// Bring a lab back to a checkpoint: its VMs continue from there, links as they were.
    Restore {
        lab: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Function as a VM: deploy a handler once as a warm snapshot, invoke it in fresh clones.
    #[command(name = "fn", subcommand)]
    Function(fn_cmd::FnCmd),
    /// Scenarios: timed fault injection and checks against a running lab, with reports.
    #[command(subcommand)]
    Scenario(scenario_cmd::ScenarioCmd),
    /// Attach to a VM's serial console (`NODE.VM`, `LAB/NODE.VM` or a VM name).
    Console { vm: String },
    #[command(subcommand, hide = true)]
    Lab(lab_cmd::LabCmd),
    /// Run a command in a VM; exits with its status (-i forwards stdin, -t uses a terminal).
    Exec(guest_cmd::ExecArgs),
    /// An interactive shell in a VM.
    Shell {
        vm: String,
        #[arg(short, long)]
        user: Option<String>,
    },
    /// Copy files or directories between the host and a VM: `cp SRC VM:DST` or `cp VM:SRC DST`.
    Cp { src: String, dst: String },
    /// The own KVM VMM, one process per microVM, configured through a Firecracker-compatible API
    /// (`kobako vmm --api-sock PATH` or `--config-file FILE --no-api`; `kobako vmm --help`).
    Vmm {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// The REST API server (HTTPS + a Unix socket for the local CLI).
    Serve(serve_cmd::ServeArgs),
    /// Users of the API server (works on the state database; no server needed).
    #[command(subcommand)]
    User(serve_cmd::UserCmd),
    /// API tokens for scripts.
    #[command(subcommand)]
    Token(serve_cmd::TokenCmd),
    /// This build's versions (kobako, REST API, VMM and the Firecracker API it follows) and what
    /// it drives on this host (QEMU, acceleration).
    Version {
        #[arg(long)]
        json: bool,
    },
    /// Shell completions: `kobako completion bash > /etc/bash_completion.d/kobako` (or zsh,
    /// fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time to agent-ready vs raw QEMU booting the same kernel and initramfs.
    Boot(bench::BenchBootArgs),
    /// N tiny VMs started together vs this machine's CPU-bound floor.
    Node(bench::BenchNodeArgs),
    /// A generated lab of N tiny VMs through `up` and `down`: time, memory, CPU floor.
    Lab(bench_lab::BenchLabArgs),
    /// Cold boot vs warm clone (one VM, a node of VMs) and `fn invoke` latency.
    Snapshot(bench_snap::BenchSnapArgs),
}

fn main() {
    // The environment's settings for the libraries, read once before anything runs.
    config::Config::from_env().apply();
    // `kobako vmm ...` is the own VMM, with Firecracker's command line (its own parser, no async
    // runtime): hand it the arguments untouched.
    let rest: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if rest.first().is_some_and(|a| a == "vmm") {
        std::process::exit(kobako_vmm::main_with_args(rest[1..].to_vec()));
    }
    let cli = Cli::parse();
    // The supervisor is a small synchronous process: no async runtime, no logging setup.
    if let Cmd::Vm(vm_cmd::VmCmd::Supervise { dir }) = &cli.cmd {
        std::process::exit(kobako_runtime::supervisor::run(dir));
    }
    // The lab net daemon is synchronous too (relay threads, a Unix socket).
    if let Cmd::Lab(lab_cmd::LabCmd::Netd { lab }) = &cli.cmd {
        std::process::exit(lab_cmd::lab(lab_cmd::LabCmd::Netd { lab: lab.clone() }));
    }
    if let Cmd::Lab(lab_cmd::LabCmd::Check { file }) = &cli.cmd {
        std::process::exit(lab_cmd::lab(lab_cmd::LabCmd::Check { file: file.clone() }));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let res = match cli.cmd {
        Cmd::Image(c) => image_cmd::run(c).map(|_| 0),
        Cmd::Serve(a) => serve_cmd::serve(a),
        Cmd::User(c) => serve_cmd::user(c),
        Cmd::Token(c) => serve_cmd::token(c),
        Cmd::Version { json } => version_cmd::version(json),
        Cmd::Import(c) => lab_cmd::import(c),
        Cmd::Completion { shell } => version_cmd::completion(shell, &mut Cli::command()),
        cmd => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kobako: error: cannot start the async runtime: {e}");
                    std::process::exit(1);
                }
            };
            rt.block_on(async move {
                match cmd {
                    Cmd::Vm(c) => vm_cmd::run(c).await,
                    Cmd::Bench(BenchCmd::Boot(a)) => bench::boot(a).await,
                    Cmd::Bench(BenchCmd::Node(a)) => bench::node(a).await,
                    Cmd::Bench(BenchCmd::Lab(a)) => bench_lab::lab(a).await,
                    Cmd::Bench(BenchCmd::Snapshot(a)) => bench_snap::snapshot(a).await,
                    Cmd::Exec(a) => guest_cmd::exec(a).await,
                    Cmd::Up {
                        file,
                        json,
                        dry_run: true,
                        ..
                    } => lab_cmd::up_dry_run(&file, json),
                    Cmd::Up {
                        file, json, cold, ..
                    } => lab_cmd::up(&file, json, cold).await,
                    Cmd::Down { name, json } => lab_cmd::down(&name, json).await,
                    Cmd::Link {
                        lab,
                        link,
                        state,
                        json,
                    } => lab_cmd::link(&link, &state, lab.as_deref(), json),
                    Cmd::Impair(a) => lab_cmd::impair(a),
                    Cmd::Capture(a) => lab_cmd::capture(a).await,
                    Cmd::Graph { name, format } => lab_cmd::graph(&name, &format),
                    Cmd::Save { name, output } => lab_cmd::save(&name, output.as_deref()),
                    Cmd::Restart { target, json } => lab_cmd::restart(&target, json).await,
                    Cmd::Stop { target } => lab_cmd::stop(&target).await,
                    Cmd::Start { target, json } => lab_cmd::start(&target, json).await,
                    Cmd::Checkpoint {
                        lab,
                        name,
                        list,
                        delete,
                        json,
                    } => lab_cmd::checkpoint(&lab, name.as_deref(), list, delete, json).await,
                    Cmd::Function(c) => fn_cmd::run(c).await,
                    Cmd::Scenario(c) => scenario_cmd::run(c).await,
                    Cmd::Restore { lab, name, json } => {
                        lab_cmd::restore_checkpoint(&lab, &name, json).await
                    }
                    Cmd::Console { vm } => vm_cmd::console(&vm_names::vm_name(&vm)?).await,
                    Cmd::Ls { out } => lab_cmd::ls(out),
                    Cmd::Inspect { name, json } => lab_cmd::inspect(&name, json),
                    Cmd::Shell { vm, user } => guest_cmd::shell(&vm, user).await,
                    Cmd::Cp { src, dst } => guest_cmd::cp(&src, &dst).await,
                    Cmd::Image(_)
                    | Cmd::Vmm { .. }
                    | Cmd::Lab(_)
                    | Cmd::Serve(_)
                    | Cmd::User(_)
                    | Cmd::Token(_)
                    | Cmd::Version { .. }
                    | Cmd::Import(_)
                    | Cmd::Completion { .. } => unreachable!("handled above"),
                }
            })
        }
    };
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kobako: error: {e:#}");
            std::process::exit(1);
        }
    }
}
