//! `kobako`: the one binary. Subcommands: `image` (kernel, tiny), `vm` (run, ls, stop, rm,
//! console, exec, pause, resume), `exec`, `shell`, `cp`, `bench boot`, and the internal
//! `vm supervise`.

mod bench;
mod console;
mod guest_cmd;
mod image_cmd;
mod lab_cmd;
mod resolve;
mod vm_cmd;

use clap::{Parser, Subcommand};

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
    /// Bring up the labs of a lab file (or converge them).
    Up {
        file: String,
        #[arg(long)]
        json: bool,
    },
    /// Take a lab down: its VMs, network and state.
    Down { name: String },
    /// List labs.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a lab: nodes, VMs, interfaces, links.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Cut (down) or heal (up) a link of a running lab.
    Link {
        lab: String,
        link: String,
        /// up or down
        state: String,
    },
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
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time to agent-ready vs raw QEMU booting the same kernel and initramfs.
    Boot(bench::BenchBootArgs),
    /// N tiny VMs started together vs this machine's CPU-bound floor.
    Node(bench::BenchNodeArgs),
}

fn main() {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let res = match cli.cmd {
        Cmd::Image(c) => image_cmd::run(c).map(|_| 0),
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
                    Cmd::Exec(a) => guest_cmd::exec(a).await,
                    Cmd::Up { file, json } => lab_cmd::up(&file, json).await,
                    Cmd::Down { name } => lab_cmd::down(&name).await,
                    Cmd::Link { lab, link, state } => lab_cmd::link(&lab, &link, &state),
                    Cmd::Ls { json } => lab_cmd::ls(json),
                    Cmd::Inspect { name, json } => lab_cmd::inspect(&name, json),
                    Cmd::Shell { vm, user } => guest_cmd::shell(&vm, user).await,
                    Cmd::Cp { src, dst } => guest_cmd::cp(&src, &dst).await,
                    Cmd::Image(_) | Cmd::Vmm { .. } => unreachable!("handled above"),
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
