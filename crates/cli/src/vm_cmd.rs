//! `kobako vm ...`: run, ls, stop, rm, console, exec, and the internal `supervise`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kobako_runtime::agent::AgentClient;
use kobako_runtime::config::{parse_mib, VmConfig};
use kobako_runtime::qemu::QemuRuntime;
use kobako_runtime::vmm::{Flavor, VmmRuntime};
use kobako_runtime::{Runtime, VmDir, VmState};

use crate::console::{self, ConsoleEnd};
use kobako_boot::{AccelMode, RootKind};

/// How long `vm run --runtime vmm` waits for the agent over vsock after the guest's
/// boot-complete signal (the agent sends that signal just before it listens on vsock).
const VMM_AGENT_GRACE_SECS: u64 = 10;

#[derive(Subcommand)]
pub enum VmCmd {
    /// Boot a microVM, report the time to agent-ready, attach its console.
    Run(RunArgs),
    /// List VMs (`-o wide` adds the runtime, resident memory and directory).
    Ls {
        #[command(flatten)]
        out: crate::output::OutputArgs,
    },
    /// Stop a VM (guest power-off, then quit, then kill) and remove it.
    Stop {
        name: String,
        /// Seconds to wait for the guest to power off before forcing it.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Remove a VM that has ended (with -f: kill a running one first).
    Rm {
        name: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Attach to a VM's serial console (Ctrl-] d detaches).
    Console { name: String },
    /// Run a command in a VM through its agent (same as `kobako exec`).
    Exec(crate::guest_cmd::ExecArgs),
    /// Pause a VM's vCPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Snapshot a running VM (memory, devices, writable disk) into a new directory.
    Snapshot {
        name: String,
        /// Directory to create for the snapshot.
        dir: PathBuf,
        /// Leave the VM paused afterwards (default: it continues).
        #[arg(long)]
        leave_paused: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start a new VM from a snapshot (it continues where the snapshot was taken).
    Restore {
        /// Snapshot directory.
        dir: PathBuf,
        /// Name of the new VM.
        #[arg(long)]
        name: String,
        /// Check every checksum of the snapshot first (reads all of it).
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// (internal) supervise one VM process; started by `vm run`.
    #[command(hide = true)]
    Supervise { dir: PathBuf },
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Kernel to boot: `default` (built once from Debian's linux-source) or a path to a vmlinux
    /// (ELF with PVH note) or bzImage.
    #[arg(long, default_value = "default")]
    pub kernel: String,
    /// Image: `tiny`, a stored image (`kobako image ls`; booted from a per-VM qcow2 overlay), or a
    /// path to an initramfs (cpio), ext4 or qcow2 image. Options: `NAME,cloud-init` attaches a
    /// NoCloud seed, `NAME,user-data=FILE` with that user-data.
    #[arg(long, default_value = "tiny")]
    pub image: String,
    /// Boot the image from RAM (initramfs) or from a virtio disk.
    #[arg(long, value_enum, default_value = "initramfs")]
    pub root: RootKind,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory, e.g. 128M or 1G.
    #[arg(long, default_value = "128M")]
    pub memory: String,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// VM name (default: vm-<random>).
    #[arg(long)]
    pub name: Option<String>,
    /// Leave the VM running in the background.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// CPU accelerator: auto (KVM where the host runs standard guests, else TCG), kvm or tcg.
    #[arg(long, env = "KOBAKO_ACCEL", default_value = "auto")]
    pub accel: AccelMode,
    /// Seconds to wait for the agent before giving up.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// VM runtime: auto (the own VMM where KVM runs standard guests and the VM needs no
    /// devices it lacks yet, else QEMU), qemu, vmm, or firecracker (Firecracker instead of the
    /// own VMM: `firecracker` on PATH, or --vmm-bin).
    #[arg(long, env = "KOBAKO_RUNTIME", default_value = "auto")]
    pub runtime: String,
    /// The VMM program of `--runtime vmm` (another kobako-vmm build) or `--runtime firecracker`
    /// (instead of `firecracker` on PATH).
    #[arg(long, value_name = "PATH")]
    pub vmm_bin: Option<PathBuf>,
    /// Print the result as JSON (with -d).
    #[arg(long)]
    pub json: bool,
    /// `image` is read as a path only when it has a '/' (lab files and functions: a bare name
    /// is always a store name, never a file that happens to exist in the working directory).
    #[arg(skip)]
    pub names_only: bool,
}

pub fn runtime() -> Result<QemuRuntime> {
    let exe = std::env::current_exe().context("locate the kobako executable")?;
    let mut rt = QemuRuntime::new(exe);
    // QEMU's seccomp sandbox is on unless turned off for debugging (read here, at the edge).
    rt.sandbox = std::env::var("KOBAKO_QEMU_SANDBOX").map_or(true, |v| v != "off");
    rt.jail = jail_config();
    Ok(rt)
}

/// The jail around each VM process (issue 18): uid, mount and PID namespaces, cgroup limits;
/// on unless `KOBAKO_JAIL=off` (debugging). KOBAKO_JAIL_OVERHEAD_MIB: memory allowed above the
/// guest's RAM. Read here, at the edge, for both runtimes.
pub fn jail_config() -> kobako_runtime::jail::JailConfig {
    let mut jc = kobako_runtime::jail::JailConfig {
        enabled: std::env::var("KOBAKO_JAIL").map_or(true, |v| v != "off"),
        ..Default::default()
    };
    if let Some(mib) = std::env::var("KOBAKO_JAIL_OVERHEAD_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        jc.overhead_mib = Some(mib);
    }
    jc
}

/// A runtime by name (an existing VM's: its VMM program is in its launch.json already).
pub fn runtime_named(name: &str) -> Result<Box<dyn Runtime>> {
    runtime_with(name, None)
}

/// A runtime by name; `vmm_bin`: the VMM program of the vmm and firecracker runtimes
/// ([`vmm_program_for`]).
fn runtime_with(name: &str, vmm_bin: Option<PathBuf>) -> Result<Box<dyn Runtime>> {
    let exe = std::env::current_exe().context("locate the kobako executable")?;
    let flavor = match name {
        "qemu" => return Ok(Box::new(runtime()?)),
        other => Flavor::of_runtime(other)
            .ok_or_else(|| anyhow::anyhow!("--runtime {other}: {RUNTIMES}"))?,
    };
    let mut rt = match flavor {
        Flavor::Kobako => VmmRuntime::new(exe),
        Flavor::Firecracker => VmmRuntime::firecracker(exe, None),
    };
    rt.program = vmm_bin;
    rt.jail = jail_config();
    // Its seccomp filters likewise (read here, at the edge).
    rt.seccomp = std::env::var("KOBAKO_VMM_SECCOMP").map_or(true, |v| v != "off");
    Ok(Box::new(rt))
}

const RUNTIMES: &str = "use auto, qemu, vmm or firecracker";

/// The VMM program `vm run` asked for, checked before anything is built: `--vmm-bin` (an
/// executable file), else for `--runtime firecracker` `firecracker` on PATH (the error says
/// where it looked). None: the runtime's own choice (kobako-vmm beside kobako).
fn vmm_program_for(runtime: &str, vmm_bin: Option<&Path>) -> Result<Option<PathBuf>> {
    let checked = vmm_bin
        .map(kobako_runtime::vmm::flavor::check_program)
        .transpose()?;
    match runtime {
        "firecracker" => match checked {
            Some(p) => Ok(Some(p)),
            None => Ok(Some(kobako_runtime::vmm::find_firecracker(
                std::env::var_os("PATH").as_deref(),
            )?)),
        },
        "vmm" => Ok(checked),
        _ if checked.is_some() => {
            bail!("--vmm-bin needs --runtime vmm or --runtime firecracker (it names their VMM)")
        }
        _ => Ok(None),
    }
}

/// The runtime that created an existing VM (recorded in its launch.json).
pub fn runtime_of(vm: &VmDir) -> Result<Box<dyn Runtime>> {
    let name = vm
        .launch()
        .map(|l| l.runtime)
        .unwrap_or_else(|_| "qemu".into());
    runtime_named(&name)
}

/// `--runtime auto|qemu|vmm` for a VM config. Returns the runtime name and why.
fn choose_runtime(arg: &str, cfg: &VmConfig) -> Result<(String, String)> {
    match arg {
        "auto" => {
            let needs_devices = !matches!(cfg.root, kobako_runtime::config::Root::Initramfs { .. })
                || !cfg.nics.is_empty()
                || !cfg.extra_disks.is_empty();
            let c = kobako_runtime::host::detect_runtime(needs_devices);
            Ok((c.kind.name().to_string(), c.reason))
        }
        "qemu" | "vmm" | "firecracker" => Ok((
            arg.to_string(),
            format!("runtime {arg}: forced with --runtime"),
        )),
        other => bail!("--runtime {other}: {RUNTIMES}"),
    }
}

fn random_name() -> String {
    let mut b = [0u8; 3];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    format!("vm-{:02x}{:02x}{:02x}", b[0], b[1], b[2])
}

/// Resolve arguments into a validated VM config (building kernel/image if missing), and why
/// the accelerator was chosen.
pub fn config_from(args: &RunArgs) -> Result<(VmConfig, String)> {
    let memory_mib = parse_mib(&args.memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    let spec = kobako_boot::BootSpec {
        name: args.name.clone().unwrap_or_else(random_name),
        kernel: args.kernel.clone(),
        image: args.image.clone(),
        root: args.root,
        vcpus: args.vcpus,
        memory_mib,
        cmdline: args.cmdline.clone(),
        accel: args.accel,
        ready_timeout_secs: args.timeout,
        names_only: args.names_only,
    };
    Ok(kobako_boot::vm_config(
        &spec,
        &kobako_image::StderrProgress,
    )?)
}

/// Attach the terminal to a running VM's serial console until detached or the VM ends.
pub async fn console(name: &str) -> Result<i32> {
    let vm = VmDir::open(name)?;
    if vm.vm_pid().is_none() {
        bail!("VM '{name}' is not running");
    }
    eprintln!("{}", console::hint());
    attach_until_end(&vm, None).await
}

pub async fn run(cmd: VmCmd) -> Result<i32> {
    match cmd {
        VmCmd::Run(a) => run_vm(a).await,
        VmCmd::Ls { out } => ls(out).await,
        VmCmd::Stop { name, timeout } => {
            let vm = VmDir::open(&name)?;
            runtime_of(&vm)?
                .stop(&vm, Duration::from_secs(timeout))
                .await?;
            eprintln!("{name}: stopped");
            Ok(0)
        }
        VmCmd::Rm { name, force } => {
            let vm = VmDir::open(&name)?;
            if vm.vm_pid().is_some() && !force {
                bail!("VM '{name}' is running: stop it with `kobako vm stop {name}` or use `kobako vm rm -f {name}`");
            }
            runtime_of(&vm)?.kill(&vm).await?;
            Ok(0)
        }
        VmCmd::Console { name } => console(&name).await,
        VmCmd::Exec(a) => crate::guest_cmd::exec(a).await,
        VmCmd::Pause { name } => {
            let vm = VmDir::open(&name)?;
            runtime_of(&vm)?.pause(&vm).await?;
            Ok(0)
        }
        VmCmd::Resume { name } => {
            let vm = VmDir::open(&name)?;
            runtime_of(&vm)?.resume(&vm).await?;
            Ok(0)
        }
        VmCmd::Snapshot {
            name,
            dir,
            leave_paused,
            json,
        } => {
            let vm = VmDir::open(&crate::vm_names::vm_name(&name)?)?;
            let t0 = std::time::Instant::now();
            let m = runtime_of(&vm)?.snapshot(&vm, &dir, leave_paused).await?;
            let ms = t0.elapsed().as_millis();
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                eprintln!(
                    "{}: snapshot in {} ({} MiB memory state{}), guest stopped for {} ms, {ms} ms in all",
                    vm.name,
                    dir.display(),
                    m.memory.size >> 20,
                    m.root
                        .as_ref()
                        .map(|r| format!(", {} MiB disk", r.size >> 20))
                        .unwrap_or_default(),
                    m.paused_ms
                );
            }
            Ok(0)
        }
        VmCmd::Restore {
            dir,
            name,
            verify,
            json,
        } => restore(&dir, &name, verify, json).await,
        VmCmd::Supervise { dir } => Ok(kobako_runtime::supervisor::run(&dir)),
    }
}

/// `vm restore DIR --name NAME`: a new VM from a snapshot, detached; reports the time to ready.
async fn restore(dir: &Path, name: &str, verify: bool, json: bool) -> Result<i32> {
    // The runtime that made the snapshot restores it.
    let made_by = kobako_runtime::snapshot::runtime_of(dir)?;
    let rt = runtime_named(&made_by).map_err(|_| {
        anyhow::anyhow!(
            "snapshot {} cannot be restored here: it was made by the '{made_by}' runtime, which \
             this kobako does not have",
            dir.display()
        )
    })?;
    let t0 = std::time::Instant::now();
    let overlay = kobako_image::store::overlays_root().join(name);
    if VmDir::for_name(name).exists() {
        bail!("a VM named '{name}' already exists (stop it or pick another --name)");
    }
    let cfg = rt.restore_config(dir, name, &overlay, verify)?;
    let vm = match rt.create(&cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            kobako_boot::discard(&cfg.owned_paths);
            return Err(e.into());
        }
    };
    if let Err(e) = rt.start(&vm).await {
        let _ = vm.remove();
        return Err(e.into());
    }
    match kobako_runtime::wait_ready(&vm, Duration::from_secs(cfg.ready_timeout_secs)).await {
        Ok((client, _)) => {
            let ms = t0.elapsed().as_millis();
            // Its own hostname, RNG stream and today's clock (the machine-id stays: a restore
            // is the same machine).
            let id = kobako_runtime::snapshot::NewIdentity {
                hostname: Some(kobako_runtime::config::hostname_of(name)),
                ..Default::default()
            };
            kobako_runtime::snapshot::fresh_identity(&client, &id).await?;
            if json {
                println!("{}", serde_json::json!({"name": name, "ready_ms": ms}));
            } else {
                eprintln!(
                    "{name}: restored from {}, agent ready in {ms} ms",
                    dir.display()
                );
            }
            Ok(0)
        }
        Err(e) => {
            let _ = rt.kill(&vm).await;
            Err(e.into())
        }
    }
}

/// Everything `vm run` does; returns the process exit code.
async fn run_vm(args: RunArgs) -> Result<i32> {
    // The VMM program first: a missing `firecracker` is said before anything is built.
    let vmm_bin = vmm_program_for(&args.runtime, args.vmm_bin.as_deref())?;
    let (mut cfg, why) = config_from(&args)?;
    let (rt_name, rt_why) = choose_runtime(&args.runtime, &cfg)?;
    let rt = runtime_with(&rt_name, vmm_bin)?;
    let flavor = Flavor::of_runtime(&rt_name);
    if flavor.is_some() {
        // The VMM is KVM only; `accel` only describes the QEMU runtime's choice.
        cfg.accel = kobako_runtime::Accel::Kvm;
    }
    tracing::info!(accel = %cfg.accel, runtime = %rt_name, "{why}; {rt_why}");
    if rt_name == "qemu"
        && cfg.accel == kobako_runtime::Accel::Tcg
        && args.accel == AccelMode::Auto
        && !args.json
    {
        eprintln!("kobako: {why}");
    }
    if args.runtime == "auto" && !args.json {
        eprintln!("kobako: {rt_why}");
    }
    let vm = match rt.create(&cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            kobako_boot::discard(&cfg.owned_paths);
            return Err(e.into());
        }
    };
    vm.attach()?;
    let t0 = Instant::now();
    if let Err(e) = rt.start(&vm).await {
        let _ = vm.remove();
        return Err(e.into());
    }
    let timeout = Duration::from_secs(cfg.ready_timeout_secs);
    let mut ready = None;
    // Only kobako-vmm reports the boot-complete signal (Firecracker: the agent's Ready alone).
    let boot_signal = flavor.is_some_and(Flavor::kobako_extensions);
    if boot_signal {
        // The agent signals boot-complete first (port 0x3f0), then listens on vsock, which the
        // supervisor connects to: wait for the signal, then give the agent a moment. A guest
        // without AF_VSOCK (or another init) stays on the boot signal alone.
        if let Err(e) = kobako_runtime::wait_booted(&vm, timeout).await {
            let _ = rt.kill(&vm).await;
            return Err(e.into());
        }
        match kobako_runtime::wait_ready(&vm, Duration::from_secs(VMM_AGENT_GRACE_SECS)).await {
            Ok(r) => ready = Some(r),
            Err(e) => tracing::info!("no agent over vsock after the boot signal: {e}"),
        }
    }
    if boot_signal && ready.is_none() {
        let rec = vm
            .booted()
            .ok_or_else(|| anyhow::anyhow!("{}: boot record vanished", cfg.name))?;
        let boot = t0.elapsed();
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "name": cfg.name, "runtime": "vmm", "ready_ms": boot.as_millis() as u64,
                    "vmm_boot_wall_us": rec.vmm_wall_us, "vmm_boot_cpu_us": rec.vmm_cpu_us,
                })
            );
        } else {
            eprintln!(
                "{}: guest signalled boot complete in {} ms (vmm: {:.1} ms from VMM start, {:.1} \
                 VMM CPU ms; {} vCPU, {} MiB; no agent over vsock: exec/cp/shell unavailable)",
                cfg.name,
                boot.as_millis(),
                rec.vmm_wall_us as f64 / 1000.0,
                rec.vmm_cpu_us as f64 / 1000.0,
                cfg.vcpus,
                cfg.memory_mib,
            );
        }
        if args.detach {
            vm.detach()?;
            if !args.json {
                println!("{}", cfg.name);
            }
            return Ok(0);
        }
        eprintln!("{}", console::hint());
        return attach_until_end(&vm, None).await;
    }
    let (client, info) = match ready {
        Some(r) => r,
        None => match kobako_runtime::wait_ready(&vm, timeout).await {
            Ok(r) => r,
            Err(e) => {
                let _ = rt.kill(&vm).await;
                return Err(e.into());
            }
        },
    };
    let boot = t0.elapsed();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "name": cfg.name, "ready_ms": boot.as_millis() as u64, "accel": cfg.accel,
                "vcpus": info.nproc, "mem_total_kib": info.mem_total_kib, "kernel": info.kernel,
                "guest_ready_ms": info.ready_ms,
            })
        );
    } else {
        eprintln!(
            "{}: agent ready in {} ms ({}, {} vCPU, {} MiB; guest kernel {}, in-guest boot {} ms)",
            cfg.name,
            boot.as_millis(),
            cfg.accel,
            info.nproc,
            cfg.memory_mib,
            info.kernel,
            info.ready_ms
        );
    }
    if args.detach {
        vm.detach()?;
        if !args.json {
            println!("{}", cfg.name);
        }
        return Ok(0);
    }
    eprintln!("{}", console::hint());
    attach_until_end(&vm, Some(&client)).await
}

/// Attach the console; when it closes because the guest rebooted (the supervisor started a new
/// VM process), attach again; otherwise finish (report, clean up).
async fn attach_until_end(vm: &VmDir, client: Option<&AgentClient>) -> Result<i32> {
    loop {
        let sock = vm.console_socket();
        let closed = async {
            match client {
                Some(c) => c.closed().await,
                None => std::future::pending().await,
            }
        };
        let end = console::attach(&sock, closed).await?;
        if end == ConsoleEnd::Closed && rebooted(vm).await {
            eprintln!("\r\n{}: guest rebooted", vm.name);
            continue;
        }
        return finish_console(vm, end).await;
    }
}

/// After the console closed: did the supervisor start a new VM process (a guest reboot)?
async fn rebooted(vm: &VmDir) -> bool {
    let old = std::fs::read_to_string(vm.file("vm.pid")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if vm.exit().is_some() || vm.supervisor_pid().is_none() {
            return false;
        }
        let now = std::fs::read_to_string(vm.file("vm.pid")).unwrap_or_default();
        if !now.is_empty() && now != old && vm.console_socket().exists() {
            // Give QEMU a moment to listen on the new console socket.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return true;
        }
        if now == old && vm.vm_pid().is_some() {
            // Same process still running: the console closed for another reason.
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// After a console session: wait for the VM's end or detach/stop as asked; clean up.
async fn finish_console(vm: &VmDir, end: ConsoleEnd) -> Result<i32> {
    let rt = runtime_of(vm)?;
    match end {
        ConsoleEnd::Detach => {
            vm.detach()?;
            eprintln!(
                "\r\ndetached from {0}; reattach with `kobako vm console {0}`, stop with `kobako vm stop {0}`",
                vm.name
            );
            Ok(0)
        }
        ConsoleEnd::Stop => {
            rt.stop(vm, Duration::from_secs(10)).await?;
            eprintln!("\r\n{}: stopped", vm.name);
            Ok(0)
        }
        ConsoleEnd::Closed => {
            // The VM is ending: wait for its supervisor's record.
            let deadline = Instant::now() + Duration::from_secs(10);
            while vm.exit().is_none() && vm.supervisor_pid().is_some() {
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let rec = vm.exit();
            if vm.file("attached").exists() {
                rt.kill(vm).await?;
            }
            match rec {
                Some(r) => {
                    eprintln!("\r\n{}: {}", vm.name, r.describe());
                    Ok(if r.shutdown.is_some() { 0 } else { 1 })
                }
                None => {
                    eprintln!("\r\n{}: console closed", vm.name);
                    Ok(0)
                }
            }
        }
    }
}

async fn ls(out: crate::output::OutputArgs) -> Result<i32> {
    let mut rows = Vec::new();
    for vm in kobako_runtime::vmdir::list() {
        let Ok(rt) = runtime_of(&vm) else { continue };
        if let Ok(s) = rt.status(&vm).await {
            rows.push((s, rt.name(), vm.path.clone()));
        }
    }
    if out.is_json() {
        let v: Vec<_> = rows.iter().map(|r| &r.0).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let wide = out.is_wide();
    print!(
        "{:<20} {:<8} {:<5} {:>5} {:>8} {:>9} {:>8}",
        "NAME", "STATE", "ACCEL", "VCPUS", "MEMORY", "BOOT", "PID"
    );
    if wide {
        print!(" {:<7} {:>9}  DIR", "RUNTIME", "RSS");
    }
    println!();
    for (s, runtime, dir) in rows {
        let state = match s.state {
            VmState::Booting => "booting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Exited => "exited",
        };
        print!(
            "{:<20} {:<8} {:<5} {:>5} {:>7}M {:>9} {:>8}",
            s.name,
            state,
            s.accel.to_string(),
            s.vcpus,
            s.memory_mib,
            s.boot_ms.map(|b| format!("{b} ms")).unwrap_or("-".into()),
            s.pid.map(|p| p.to_string()).unwrap_or("-".into())
        );
        if wide {
            let rss = s
                .pid
                .and_then(rss_kib)
                .map_or("-".into(), |k| format!("{}M", k / 1024));
            print!(" {runtime:<7} {rss:>9}  {}", dir.display());
        }
        println!();
        if let Some(why) = &s.exit {
            println!("  {}: {why}", s.name);
        }
    }
    Ok(0)
}

/// Resident memory of process `pid` (`VmRSS`), in KiB.
fn rss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
