//! kobako-vmm: kobako's own KVM microVM monitor, driven through a Firecracker-compatible API.
//!
//! One process per microVM. Threads, each the single owner of its state:
//! - the **event loop** (the caller's thread, `vmm`): owns the configuration and the VM,
//!   handles API requests, vCPU reports, resets and console input ([`vmm`]);
//! - the **API thread** (`fc_api`): HTTP/1.1 on a Unix socket, parses requests and forwards
//!   them over a channel + eventfd ([`api`]);
//! - one thread per **vCPU** (`fc_vcpu N`): `KVM_RUN` and I/O dispatch ([`vstate::vcpu`]).
//!
//! No async runtime. See `crates/vmm/ARCHITECTURE.md` for the design and the exit codes.

pub mod api;
pub mod arch;
pub mod builder;
pub mod cast;
pub mod config;
pub mod devices;
pub mod file_mapping;
pub mod logger;
pub mod metrics;
pub mod mmds;
pub mod seccomp;
pub mod snapshot;
pub mod text;
pub mod timing;
pub mod vmm;
pub mod vstate;

use std::ffi::OsString;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc::channel;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Version reported by `GET /` and `GET /version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Command-line parameters the PVM-tolerant guest kernel needs on a kvm_pvm host (see
/// crates/vmm/guest-pvm/README.md). `clearcpuid` drops what the host's instruction emulator
/// cannot run in kernel mode: popcnt and SMAP's clac/stac, and the SIMD extensions the
/// kernel's crypto (blake2s, chacha, poly1305, curve25519 for the RNG) would switch to, whose
/// `kernel_fpu_begin()` executes `ldmxcsr` (measured: an emulation failure there at 73 s).
/// One `clearcpuid=` only: the kernel reads the last one given.
pub const PVM_GUEST_CMDLINE: &str = "kobako_pvm noxsave \
    clearcpuid=popcnt,smap,erms,fsrm,ssse3,sse4_1,sse4_2,avx,avx2,avx512f,adx,bmi2 \
    noreplace-smp mitigations=off";

/// The guest powered off (KVM system event shutdown, or HLT reaching the VMM).
pub const EXIT_OK: i32 = 0;
/// Generic failure (e.g. the API socket cannot be created).
pub const EXIT_GENERIC: i32 = 1;
/// The guest asked for a reset: i8042 command 0xFE (`reboot=k`) or a KVM reset event. A microVM
/// does not reboot in place; its supervisor decides whether to start it again.
pub const EXIT_GUEST_RESET: i32 = 80;
/// The guest triple-faulted (KVM_EXIT_SHUTDOWN); Linux's `reboot=t` ends this way too.
pub const EXIT_TRIPLE_FAULT: i32 = 81;
/// KVM_EXIT_INTERNAL_ERROR: KVM could not emulate an instruction (on PVM hosts: an
/// instruction the emulator lacks, or a guest kernel BUG/WARN).
pub const EXIT_EMULATION_FAILURE: i32 = 82;
/// Any other vCPU failure (failed entry, unexpected exit, failed ioctl).
pub const EXIT_VCPU_ERROR: i32 = 83;
/// A syscall outside the seccomp allow-list (Firecracker's value).
pub const EXIT_BAD_SYSCALL: i32 = 148;
/// The configuration file is invalid or the VM could not start from it (Firecracker's value).
pub const EXIT_BAD_CONFIGURATION: i32 = 152;
/// Invalid command-line arguments (Firecracker's value).
pub const EXIT_ARG_PARSING: i32 = 153;

/// Formats an error with its whole `source()` chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Some errors (linux-loader's) already print their source: don't repeat it.
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub api_sock: PathBuf,
    pub config_file: Option<PathBuf>,
    pub no_api: bool,
    pub no_seccomp: bool,
    pub boot_timer: bool,
    pub id: String,
    pub log_path: Option<PathBuf>,
    pub level: Option<String>,
    pub metrics_path: Option<PathBuf>,
    /// `--snapshot-load FILE`: a `PUT /snapshot/load` body to apply at once.
    pub snapshot_load: Option<PathBuf>,
    /// `--mmds-size-limit BYTES`: the MMDS data store's limit.
    pub mmds_size_limit: Option<usize>,
    /// `--metadata FILE`: JSON to start the MMDS data store with.
    pub metadata: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            api_sock: PathBuf::from("/run/firecracker.socket"),
            config_file: None,
            no_api: false,
            no_seccomp: false,
            boot_timer: false,
            id: "anonymous-instance".into(),
            log_path: None,
            level: None,
            metrics_path: None,
            snapshot_load: None,
            mmds_size_limit: None,
            metadata: None,
        }
    }
}

/// What parsing the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Cli {
    Run(Box<Args>),
    Help,
    Version,
}

const USAGE: &str = "usage: kobako vmm [--api-sock PATH] [--config-file PATH] [--no-api] \
[--no-seccomp] [--boot-timer] [--id ID] [--log-path PATH] [--level LEVEL] [--metrics-path PATH] \
[--snapshot-load FILE] [--mmds-size-limit BYTES] [--metadata FILE] [--show-level] [--show-log-origin] [--help] [--version]";

/// Why the command line was refused (printed before the usage line).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("invalid --id {0:?}: 1-64 of [A-Za-z0-9_-]")]
    InvalidId(String),
    #[error("invalid --mmds-size-limit {0:?}: a number of bytes")]
    InvalidSize(String),
    #[error("invalid --level {0:?}")]
    InvalidLevel(String),
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("--no-api needs --config-file or --snapshot-load")]
    NoApiWithoutConfig,
    #[error("--config-file and --snapshot-load exclude each other (a snapshot brings its configuration)")]
    ConfigAndSnapshot,
}

/// Parses Firecracker-like flags (`--flag VALUE` or `--flag=VALUE`). `args` excludes the
/// program name.
pub fn parse_args(args: &[OsString]) -> Result<Cli, ArgsError> {
    let mut a = Args::default();
    let mut it = args.iter().map(|s| s.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, ArgsError> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| ArgsError::MissingValue(name.to_string()))
        };
        match flag.as_str() {
            "--api-sock" => a.api_sock = value("--api-sock")?.into(),
            "--config-file" => a.config_file = Some(value("--config-file")?.into()),
            "--id" => {
                let id = value("--id")?;
                if id.is_empty()
                    || id.len() > 64
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(ArgsError::InvalidId(id));
                }
                a.id = id;
            }
            "--log-path" => a.log_path = Some(value("--log-path")?.into()),
            "--level" => {
                let l = value("--level")?;
                if logger::Level::parse(&l).is_none() {
                    return Err(ArgsError::InvalidLevel(l));
                }
                a.level = Some(l);
            }
            "--metrics-path" => a.metrics_path = Some(value("--metrics-path")?.into()),
            "--snapshot-load" => a.snapshot_load = Some(value("--snapshot-load")?.into()),
            "--mmds-size-limit" => {
                let v = value("--mmds-size-limit")?;
                a.mmds_size_limit = Some(v.parse().map_err(|_| ArgsError::InvalidSize(v))?);
            }
            "--metadata" => a.metadata = Some(value("--metadata")?.into()),
            "--no-api" => a.no_api = true,
            "--no-seccomp" => a.no_seccomp = true,
            "--boot-timer" => a.boot_timer = true,
            "--show-level" | "--show-log-origin" => {}
            "--help" | "-h" => return Ok(Cli::Help),
            "--version" | "-V" => return Ok(Cli::Version),
            other => return Err(ArgsError::Unknown(other.to_string())),
        }
    }
    if a.no_api && a.config_file.is_none() && a.snapshot_load.is_none() {
        return Err(ArgsError::NoApiWithoutConfig);
    }
    if a.config_file.is_some() && a.snapshot_load.is_some() {
        return Err(ArgsError::ConfigAndSnapshot);
    }
    Ok(Cli::Run(Box::new(a)))
}

/// Runs a microVM from `res` on the calling thread without an API (used by `--no-api` and by
/// tests), with optional extra devices; returns the exit code.
pub fn run_vm(
    res: config::VmResources,
    extra: builder::ExtraDevices,
    seccomp: bool,
    id: &str,
) -> i32 {
    let filters = if seccomp {
        match seccomp::build_filters() {
            Ok(f) => Some(f),
            Err(e) => {
                log_error!("{}", error_chain(&e));
                return EXIT_GENERIC;
            }
        }
    } else {
        None
    };
    let opts = vmm::LoopOptions {
        id: id.to_string(),
        filters,
        start_now: true,
        load: None,
    };
    match vmm::EventLoop::new(res, None, opts, extra) {
        Ok(l) => l.run(),
        Err(e) => {
            log_error!("cannot create the event loop: {e}");
            EXIT_GENERIC
        }
    }
}

/// Entry point of `kobako vmm ARGS...` (and of the `kobako-vmm` binary). `args` excludes the
/// program name. Returns the process exit code (see the `EXIT_*` constants).
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    std::sync::LazyLock::force(&timing::PROCESS_START);
    let a = match parse_args(&args) {
        Ok(Cli::Run(a)) => *a,
        Ok(Cli::Help) => {
            println!("{USAGE}");
            return EXIT_OK;
        }
        Ok(Cli::Version) => {
            println!("kobako-vmm v{VERSION}");
            return EXIT_OK;
        }
        Err(e) => {
            eprintln!("kobako vmm: {e}\n{USAGE}");
            return EXIT_ARG_PARSING;
        }
    };
    logger::set_id(&a.id);
    if let Some(l) = a.level.as_deref().and_then(logger::Level::parse) {
        logger::set_level(l);
    }
    if let Some(p) = &a.log_path {
        if let Err(e) = logger::set_path(p) {
            eprintln!("kobako vmm: cannot open log file {}: {e}", p.display());
            return EXIT_ARG_PARSING;
        }
    }

    let mut res = config::VmResources::default();
    if let Some(path) = &a.config_file {
        let parsed = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
                config::check_no_positional(&v)?;
                serde_json::from_slice::<config::FullConfig>(&b).map_err(|e| e.to_string())
            })
            .and_then(|c| config::VmResources::from_full(c).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) => res = r,
            Err(e) => {
                log_error!("invalid configuration file {}: {e}", path.display());
                eprintln!(
                    "kobako vmm: invalid configuration file {}: {e}",
                    path.display()
                );
                return EXIT_BAD_CONFIGURATION;
            }
        }
        if let Some(l) = &res.logger {
            if let Some(v) = l.level.as_deref().and_then(logger::Level::parse) {
                logger::set_level(v);
            }
            if let Some(p) = &l.log_path {
                let _ = logger::set_path(p);
            }
        }
    }
    if let Some(limit) = a.mmds_size_limit {
        res.mmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_limit(limit);
    }
    if let Some(path) = &a.metadata {
        let loaded = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .and_then(|v| {
                res.mmds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(v)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = loaded {
            eprintln!("kobako vmm: invalid --metadata {}: {e}", path.display());
            return EXIT_BAD_CONFIGURATION;
        }
    }
    if let Some(p) = &a.metrics_path {
        res.metrics = Some(config::MetricsConfig {
            metrics_path: p.clone(),
            emit_id: false,
            properties: Default::default(),
        });
    }

    let load = match &a.snapshot_load {
        None => None,
        Some(path) => match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                serde_json::from_slice::<config::SnapshotLoadParams>(&b).map_err(|e| e.to_string())
            }) {
            Ok(p) => Some(p),
            Err(e) => {
                log_error!("invalid snapshot load file {}: {e}", path.display());
                eprintln!(
                    "kobako vmm: invalid snapshot load file {}: {e}",
                    path.display()
                );
                return EXIT_BAD_CONFIGURATION;
            }
        },
    };

    if a.no_api && load.is_none() {
        return run_vm(res, builder::ExtraDevices::default(), !a.no_seccomp, &a.id);
    }

    let filters = if a.no_seccomp {
        None
    } else {
        match seccomp::build_filters() {
            Ok(f) => Some(f),
            Err(e) => {
                log_error!("{}", error_chain(&e));
                return EXIT_GENERIC;
            }
        }
    };
    if a.no_api {
        let opts = vmm::LoopOptions {
            id: a.id.clone(),
            filters,
            start_now: false,
            load,
        };
        return match vmm::EventLoop::new(res, None, opts, builder::ExtraDevices::default()) {
            Ok(l) => l.run(),
            Err(e) => {
                log_error!("cannot create the event loop: {e}");
                EXIT_GENERIC
            }
        };
    }
    let listener = match UnixListener::bind(&a.api_sock) {
        Ok(l) => l,
        Err(e) => {
            log_error!(
                "Failed to open the API socket at {}: {e}. Check that it is not already used.",
                a.api_sock.display()
            );
            eprintln!("kobako vmm: cannot bind {}: {e}", a.api_sock.display());
            return EXIT_GENERIC;
        }
    };
    let (req_tx, req_rx) = channel();
    let (resp_tx, resp_rx) = channel();
    let wake = match EventFd::new(EFD_NONBLOCK) {
        Ok(w) => w,
        Err(e) => {
            log_error!("cannot create eventfd: {e}");
            return EXIT_GENERIC;
        }
    };
    let api_wake = match wake.try_clone() {
        Ok(w) => w,
        Err(e) => {
            log_error!("cannot clone eventfd: {e}");
            return EXIT_GENERIC;
        }
    };
    let chan = api::VmmChannel {
        requests: req_tx,
        responses: resp_rx,
        wake: api_wake,
    };
    let api_filter = filters.as_ref().map(|f| f.api.clone());
    if let Err(e) = std::thread::Builder::new()
        .name("fc_api".into())
        .stack_size(256 << 10)
        .spawn(move || api::run_api_thread(listener, chan, api_filter))
    {
        log_error!("cannot start the API thread: {e}");
        return EXIT_GENERIC;
    }
    let now = timing::Stamp::now();
    log_info!(
        "API socket ready: wall_us={} cpu_us={} rss_kib={} mono_ns={}",
        now.wall_since(&timing::PROCESS_START),
        now.cpu_us,
        timing::rss_kib(),
        now.mono_ns
    );
    let endpoint = vmm::ApiEndpoint {
        requests: req_rx,
        responses: resp_tx,
        wake,
    };
    let opts = vmm::LoopOptions {
        id: a.id.clone(),
        filters,
        start_now: a.config_file.is_some(),
        load,
    };
    let code =
        match vmm::EventLoop::new(res, Some(endpoint), opts, builder::ExtraDevices::default()) {
            Ok(l) => l.run(),
            Err(e) => {
                log_error!("cannot create the event loop: {e}");
                EXIT_GENERIC
            }
        };
    let _ = std::fs::remove_file(&a.api_sock);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_firecracker_flags() {
        let Cli::Run(a) = parse_args(&os(&[
            "--api-sock",
            "/tmp/x.sock",
            "--id=vm1",
            "--level",
            "Debug",
            "--boot-timer",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.api_sock, PathBuf::from("/tmp/x.sock"));
        assert_eq!(a.id, "vm1");
        assert!(a.boot_timer);
        assert!(parse_args(&os(&["--no-api"])).is_err());
        assert!(parse_args(&os(&["--bogus"])).is_err());
        assert!(parse_args(&os(&["--level", "loud"])).is_err());
        assert!(parse_args(&os(&["--api-sock"])).is_err());
        assert_eq!(parse_args(&os(&["--version"])).unwrap(), Cli::Version);
    }
}
