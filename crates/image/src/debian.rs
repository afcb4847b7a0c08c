//! `kobako image build debian`: a Debian root filesystem made by `mmdebstrap` (variant minbase,
//! plus systemd and the packages asked for), with kobako-agent as a systemd service, into ext4,
//! stored as a qcow2 base in the image store.
//!
//! What the recipe adds to minbase, and why:
//! - `systemd-sysv` (init) and `udev` (device units: without it `serial-getty@ttyS0` waits 90 s
//!   for `dev-ttyS0.device`); `iproute2` and `procps` (the tools a user expects next to the
//!   agent: ip, ps, free).
//! - `/usr/local/sbin/kobako-agent` + `kobako-agent.service`, started early (no default
//!   dependencies) and restarted if it ends; as a non-PID-1 process it only serves the
//!   virtio-serial port `kobako.agent`.
//! - `kobako-hostname.service`: sets the hostname from `kobako.hostname=` on the kernel command
//!   line (the agent does that only as PID 1).
//! - poweroff/halt become reboot: microvm has no ACPI, so a real power-off would halt the CPU
//!   forever; kobako VMs run with `-no-reboot`, where a reset ends the VM process (the agent has
//!   already told the host it was a power-off).
//! - a root autologin on the serial console (`kobako vm console`), fstab for `/dev/vda`, and the
//!   periodic timers (apt, fstrim, e2scrub) masked: a lab VM should not wake up to do upkeep.
//!
//! - `apparmor` and kobako's profiles for the template services (`guest/apparmor/`: redis,
//!   rsyslogd, suricata, wg, the web-stack API), each installed only when its program is in the
//!   image; the agent starts after `apparmor.service`, so every service it starts finds its
//!   profile loaded. Lab VMs choose the mode on the kernel command line (enforce, complain, off).
//!
//! Downloaded .debs are kept in `$KOBAKO_CACHE/apt` (mmdebstrap sync-in/sync-out hooks), so a
//! rebuild downloads only what changed. Progress lines go to the given [`Progress`].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::disk::{self, DiskError};
use crate::store::{self, ImageKind, Manifest, Store, StoreError};
use crate::{base, cache, deps, Progress};

/// Version of the recipe below: images built by an older one are reported as outdated.
pub const RECIPE: u32 = 6;

/// Debian packages the build needs on the host.
pub const BUILD_PACKAGES: &[&str] = &["mmdebstrap", "qemu-utils", "e2fsprogs"];

/// Packages every kobako Debian image has on top of minbase.
pub const BASE_PACKAGES: &[&str] = &["systemd-sysv", "udev", "iproute2", "procps", "apparmor"];

/// kobako's AppArmor profiles (`guest/apparmor/`): (file name under /etc/apparmor.d, the
/// program that makes it apply, profile text). A profile is installed when its program is in
/// the image.
pub const APPARMOR_PROFILES: &[(&str, &str, &str)] = &[
    (
        "kobako.redis",
        "usr/bin/redis-check-rdb",
        include_str!("../../../guest/apparmor/kobako.redis"),
    ),
    (
        "kobako.rsyslogd",
        "usr/sbin/rsyslogd",
        include_str!("../../../guest/apparmor/kobako.rsyslogd"),
    ),
    (
        "kobako.suricata",
        "usr/bin/suricata",
        include_str!("../../../guest/apparmor/kobako.suricata"),
    ),
    (
        "kobako.wg",
        "usr/bin/wg",
        include_str!("../../../guest/apparmor/kobako.wg"),
    ),
    (
        "kobako.web-api",
        "usr/bin/python3",
        include_str!("../../../guest/apparmor/kobako.web-api"),
    ),
];

/// `--with docker`: what Docker in a VM needs.
pub const DOCKER_PACKAGES: &[&str] = &["docker.io", "iptables", "ca-certificates"];

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error(transparent)]
    Deps(#[from] deps::DepsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("--with {0}: unknown preset (known: docker)")]
    UnknownPreset(String),
    #[error("package name '{0}' is not a Debian package name")]
    BadPackage(String),
    #[error("apt source '{0}' is not a sources.list line (write it like 'deb http://deb.debian.org/debian bookworm-backports main')")]
    BadSource(String),
    #[error("unit name '{0}' is not a systemd unit name (like redis-server.service)")]
    BadUnit(String),
    #[error("recipe file path '{0}' is not an absolute guest path (like /etc/frr/daemons)")]
    BadFile(String),
    #[error("mmdebstrap failed (exit {code:?}); last lines:\n{tail}\n(is the Debian mirror reachable? is a package name wrong?)")]
    Mmdebstrap { code: Option<i32>, tail: String },
}

/// What to build.
#[derive(Debug, Clone)]
pub struct DebianOptions {
    pub name: String,
    /// Extra packages.
    pub packages: Vec<String>,
    /// Presets (`docker`).
    pub with: Vec<String>,
    pub suite: String,
    pub mirror: String,
    /// The archive's signing keyring on the host when it is not Debian's (Ubuntu:
    /// /usr/share/keyrings/ubuntu-archive-keyring.gpg), and the host package that has it.
    pub keyring: Option<(String, String)>,
    /// More apt sources, as sources.list lines (`deb http://deb.debian.org/debian
    /// bookworm-backports main`): mmdebstrap adds them after the mirror. Their packages are
    /// installed only when asked for with `pkg/suite` (backports are pinned low by apt).
    pub sources: Vec<String>,
    /// systemd units to mask in the image (services a package enables that kobako VMs start
    /// themselves, or not at all).
    pub mask: Vec<String>,
    /// Files written into the tree after the packages (absolute guest path, content), e.g. a
    /// recipe's daemon switches; they replace what a package put there.
    pub files: Vec<(String, String)>,
    /// Filesystem size the guest sees; default: the content plus 2 GiB, at least 4 GiB.
    pub size_bytes: Option<u64>,
    /// The named recipe this build follows and its digest ([`crate::recipes`]), recorded in
    /// the manifest so a changed recipe is rebuilt.
    pub recipe: Option<(String, String)>,
}

impl DebianOptions {
    pub fn new(name: &str) -> DebianOptions {
        DebianOptions {
            name: name.to_string(),
            packages: Vec::new(),
            with: Vec::new(),
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            keyring: None,
            sources: Vec::new(),
            mask: Vec::new(),
            files: Vec::new(),
            size_bytes: None,
            recipe: None,
        }
    }

    /// Every package to include, presets expanded, in order, without duplicates.
    pub fn all_packages(&self) -> Result<Vec<String>, DebianError> {
        let mut v: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        for w in &self.with {
            match w.as_str() {
                "docker" => v.extend(DOCKER_PACKAGES.iter().map(|s| s.to_string())),
                other => return Err(DebianError::UnknownPreset(other.to_string())),
            }
        }
        for p in &self.packages {
            // `name`, `name=version` or `name/suite` (apt's syntax for another suite's version).
            let word = |w: &str| {
                !w.is_empty()
                    && w.chars().all(|c| {
                        c.is_ascii_lowercase()
                            || c.is_ascii_digit()
                            || matches!(c, '+' | '-' | '.' | ':' | '=' | '~')
                    })
            };
            let ok = match p.split_once('/') {
                Some((name, suite)) => word(name) && word(suite) && !suite.contains('='),
                None => word(p),
            };
            if !ok {
                return Err(DebianError::BadPackage(p.clone()));
            }
            v.push(p.clone());
        }
        let mut seen = std::collections::HashSet::new();
        v.retain(|p| seen.insert(p.clone()));
        Ok(v)
    }
}

impl DebianOptions {
    /// Extra sources must be one `deb URI SUITE COMPONENT...` line each; masked units plain
    /// unit names (they become file names in the image).
    pub fn check_sources_and_units(&self) -> Result<(), DebianError> {
        for s in &self.sources {
            let w: Vec<&str> = s.split_whitespace().collect();
            if w.len() < 4 || w[0] != "deb" || !w[1].contains("://") || s.contains('\n') {
                return Err(DebianError::BadSource(s.clone()));
            }
        }
        for u in &self.mask {
            let ok = u.contains('.')
                && !u.starts_with('.')
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
            if !ok {
                return Err(DebianError::BadUnit(u.clone()));
            }
        }
        for (path, _) in &self.files {
            let ok = path.starts_with('/')
                && path.len() > 1
                && !path.ends_with('/')
                && path.split('/').all(|c| c != ".." && c != ".");
            if !ok {
                return Err(DebianError::BadFile(path.clone()));
            }
        }
        Ok(())
    }
}

/// Build a Debian image into the store. `agent` is the static kobako-agent binary.
pub fn build(
    store: &Store,
    opts: &DebianOptions,
    agent: &Path,
    progress: &dyn Progress,
) -> Result<store::Image, DebianError> {
    let t0 = Instant::now();
    let packages = opts.all_packages()?;
    opts.check_sources_and_units()?;
    deps::ensure(BUILD_PACKAGES, progress)?;
    if let Some((_, package)) = &opts.keyring {
        deps::ensure(&[package.as_str()], progress)?;
    }
    let apt_cache = cache::root().join("apt");
    std::fs::create_dir_all(&apt_cache).map_err(disk::io("create the apt cache"))?;
    // One Debian build at a time per machine: the apt cache is synced in and out by each build,
    // and two builds of one name would race to publish it.
    let _lock = cache::lock(&apt_cache.join(".lock")).map_err(disk::io("lock the apt cache"))?;
    let (st, root) = base::stage(store, &opts.name)?;

    progress.step(&format!(
        "debian: mmdebstrap {} minbase + {} (apt cache {})",
        opts.suite,
        packages.join(","),
        apt_cache.display()
    ));
    mmdebstrap(opts, &packages, &root, &apt_cache, progress)?;
    let t_strap = t0.elapsed().as_secs_f64();

    progress.step("debian: installing kobako-agent and the boot recipe");
    let agent_bytes = base::read_agent(agent)?;
    customize(&root, &agent_bytes)?;
    for unit in &opts.mask {
        link(&root, "/dev/null", &format!("etc/systemd/system/{unit}"))?;
    }
    for (path, content) in &opts.files {
        write(
            &root,
            path.trim_start_matches('/'),
            content.as_bytes(),
            0o644,
        )?;
    }
    let cloud_init = base::has_cloud_init(&root);
    let disk = base::tree_to_base(
        &root,
        &st.dir,
        opts.size_bytes,
        |content| (content + (2 << 30)).max(4 << 30),
        "debian",
        progress,
    )?;
    let m = Manifest {
        packages,
        source: std::iter::once(format!("mmdebstrap {} minbase {}", opts.suite, opts.mirror))
            .chain(opts.sources.iter().map(|s| format!("+ {s}")))
            .chain(opts.recipe.iter().map(|(n, _)| format!("(recipe {n})")))
            .collect::<Vec<_>>()
            .join(" "),
        cloud_init,
        recipe: Some(RECIPE),
        recipe_digest: opts.recipe.as_ref().map(|(_, d)| d.clone()),
        ..base::manifest(&opts.name, ImageKind::Debian, &disk, agent, t0)?
    };
    let build_secs = t0.elapsed().as_secs_f64();
    let img = st.commit(m)?;
    progress.step(&format!(
        "debian: image '{}' built in {:.0} s (mmdebstrap {:.0} s): {:.0} MiB qcow2{}",
        opts.name,
        build_secs,
        t_strap,
        img.manifest.size as f64 / 1048576.0,
        if cloud_init { ", with cloud-init" } else { "" }
    ));
    Ok(img)
}

fn mmdebstrap(
    opts: &DebianOptions,
    packages: &[String],
    root: &Path,
    apt_cache: &Path,
    progress: &dyn Progress,
) -> Result<(), DebianError> {
    let cache = apt_cache.display().to_string();
    let mut c = Command::new("mmdebstrap");
    c.args([
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        "--verbose",
    ])
    .arg(format!("--include={}", packages.join(",")))
    // No manuals, translations or docs (~60 MB of a minbase + systemd tree); copyrights stay.
    // Kept in the image's dpkg config, so later installs in a VM skip them too.
    .args([
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    ])
    // Keep downloaded .debs between builds (mmdebstrap(1), "EXAMPLES": apt cache).
    .args([
        "--skip=download/empty",
        "--skip=essential/unlink",
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
    ])
    .arg(format!(
        "--setup-hook=sync-in {cache} /var/cache/apt/archives/"
    ))
    .arg(format!(
        "--customize-hook=sync-out /var/cache/apt/archives {cache}"
    ))
    .args(opts.keyring.iter().map(|(k, _)| format!("--keyring={k}")))
    .arg(&opts.suite)
    .arg(root)
    .arg(&opts.mirror)
    // Further sources.list lines (mmdebstrap(1): every MIRROR starting with "deb " is a line).
    .args(&opts.sources)
    .env("DEBIAN_FRONTEND", "noninteractive")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(disk::io("run mmdebstrap"))?;
    // mmdebstrap prints "I: ..." phases on stderr; forward the phases, keep the tail for errors.
    let stderr = child.stderr.take();
    let stdout = child.stdout.take();
    let out_thread = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut o) = stdout {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let mut tail: Vec<String> = Vec::new();
    if let Some(e) = stderr {
        use std::io::BufRead;
        let mut last_phase = Instant::now();
        for line in std::io::BufReader::new(e).lines().map_while(Result::ok) {
            let phase = line.starts_with("I: ")
                && !line.starts_with("I: running ")
                && !line.contains("skipping");
            if phase || (line.starts_with("Get:") && last_phase.elapsed().as_secs() >= 5) {
                progress.step(&format!("debian:   {}", line.trim_start_matches("I: ")));
                last_phase = Instant::now();
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
    }
    let _ = out_thread.join();
    let st = child.wait().map_err(disk::io("wait for mmdebstrap"))?;
    if !st.success() {
        let t = tail
            .iter()
            .filter(|l| !l.starts_with("Get:"))
            .cloned()
            .collect::<Vec<_>>();
        return Err(DebianError::Mmdebstrap {
            code: st.code(),
            tail: t[t.len().saturating_sub(12)..]
                .iter()
                .map(|l| format!("  | {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Ok(())
}

const AGENT_UNIT: &str = "\
[Unit]
Description=kobako guest agent (virtio-serial port kobako.agent)
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStart=/usr/local/sbin/kobako-agent
Restart=always
RestartSec=200ms
KillMode=process

[Install]
WantedBy=sysinit.target
";

const HOSTNAME_UNIT: &str = "\
[Unit]
Description=kobako: hostname from kobako.hostname= on the kernel command line
DefaultDependencies=no
After=systemd-remount-fs.service
Before=sysinit.target network-pre.target cloud-init-local.service
ConditionKernelCommandLine=kobako.hostname

[Service]
Type=oneshot
ExecStart=/usr/local/lib/kobako/set-hostname

[Install]
WantedBy=sysinit.target
";

const HOSTNAME_SCRIPT: &str = r#"#!/bin/sh
# Set the hostname from kobako.hostname= (kernel command line) and make it resolvable.
for w in $(cat /proc/cmdline); do
  case "$w" in kobako.hostname=*) h="${w#kobako.hostname=}" ;; esac
done
[ -n "$h" ] || exit 0
echo "$h" > /proc/sys/kernel/hostname
echo "$h" > /etc/hostname
grep -q "^127.0.1.1 $h\$" /etc/hosts 2>/dev/null || {
  grep -v '^127.0.1.1 ' /etc/hosts > /etc/hosts.kobako 2>/dev/null
  echo "127.0.1.1 $h" >> /etc/hosts.kobako
  mv /etc/hosts.kobako /etc/hosts
}
"#;

/// AppArmor features of kobako's guest kernel (the cache key of compiled profiles).
pub const APPARMOR_KERNEL_FEATURES: &str = include_str!("../../../guest/apparmor/kernel-features");

const AGENT_AFTER_APPARMOR: &str = "\
# kobako: a process started before its AppArmor profile is loaded stays unconfined, so the
# agent (which starts the lab's services) waits for apparmor.service (skipped at once when
# the kernel has AppArmor off: `apparmor=0`).
[Unit]
After=apparmor.service
";

const CLOUD_CFG: &str = "\
# kobako: seeds come from a NoCloud disk (labelled cidata) generated per VM.
datasource_list: [NoCloud, None]
locale: false
";

const AUTOLOGIN: &str = "\
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
";

/// Writes and links resolve inside the tree (its own symlinks stop at its root): an imported
/// tree's `etc -> /host/dir` can never make them write on the host.
fn write(root: &Path, rel: &str, content: &[u8], mode: u32) -> Result<(), DiskError> {
    crate::inroot::Root::open(root)
        .and_then(|t| t.write(rel, content, mode))
        .map_err(disk::io(format!("write /{rel} in {}", root.display())))
}

fn link(root: &Path, target: &str, rel: &str) -> Result<(), DiskError> {
    crate::inroot::Root::open(root)
        .and_then(|t| t.symlink(target, rel))
        .map_err(disk::io(format!("symlink /{rel} in {}", root.display())))
}

/// Write the agent, units and config files into a Debian tree.
pub(crate) fn customize(root: &Path, agent: &[u8]) -> Result<(), DiskError> {
    write(root, base::AGENT_PATH.trim_start_matches('/'), agent, 0o755)?;
    customize_systemd(root)?;
    write(root, "etc/hostname", b"kobako\n", 0o644)?;
    write(
        root,
        "etc/hosts",
        b"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    // Every VM gets its own machine-id on first boot (systemd generates it when empty).
    write(root, "etc/machine-id", b"", 0o444)?;
    customize_apparmor(root)
}

/// With AppArmor in the tree: kobako's profiles for the programs the image has, and the
/// agent ordered after the profiles are loaded.
fn customize_apparmor(root: &Path) -> Result<(), DiskError> {
    let t =
        crate::inroot::Root::open(root).map_err(disk::io(format!("open {}", root.display())))?;
    if !t.is_dir("etc/apparmor.d") {
        return Ok(());
    }
    for (name, program, text) in APPARMOR_PROFILES {
        if t.exists(program) {
            write(
                root,
                &format!("etc/apparmor.d/{name}"),
                text.as_bytes(),
                0o644,
            )?;
        }
    }
    write(
        root,
        "etc/systemd/system/kobako-agent.service.d/apparmor.conf",
        AGENT_AFTER_APPARMOR.as_bytes(),
        0o644,
    )?;
    precompile_apparmor(root, &t)
}

/// Compile every profile of the tree into its AppArmor cache (`/var/cache/apparmor/<hash of
/// the kernel's features>/`) for kobako's guest kernel, whose features are
/// `guest/apparmor/kernel-features` (`aa-features-abi -x` in a guest). Without the cache each
/// VM's first boot compiles them: 15 s of `apparmor.service` under TCG instead of 1 s. A tree
/// without `apparmor_parser` is left as it is; a failure only costs that boot time, so it is
/// not an error.
fn precompile_apparmor(root: &Path, t: &crate::inroot::Root) -> Result<(), DiskError> {
    if !t.exists("sbin/apparmor_parser") {
        return Ok(());
    }
    let features = "tmp/kobako-apparmor-features";
    write(root, features, APPARMOR_KERNEL_FEATURES.as_bytes(), 0o644)?;
    let mut profiles: Vec<String> = std::fs::read_dir(root.join("etc/apparmor.d"))
        .map_err(disk::io("list etc/apparmor.d"))?
        .flatten()
        .filter(|e| e.file_type().map(|f| f.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !t.exists(&format!("etc/apparmor.d/disable/{n}")))
        .map(|n| format!("/etc/apparmor.d/{n}"))
        .collect();
    profiles.sort();
    // In a mount namespace of its own with /proc (the parser writes no cache without it, and
    // still exits 0), gone with the process.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t proc proc \"$0/proc\" && exec chroot \"$0\" \"$@\"")
        .arg(root)
        .args([
            "/sbin/apparmor_parser",
            "--features-file",
            &format!("/{features}"),
            "--skip-kernel-load",
            "--write-cache",
            "--cache-loc",
            "/var/cache/apparmor",
            "--",
        ])
        .args(&profiles)
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_file(root.join(features));
    // The compiled profiles, next to the cache directory's `.features`.
    let cached = std::fs::read_dir(root.join("var/cache/apparmor"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    match out {
        Ok(o) if o.status.success() && cached >= profiles.len() => {}
        Ok(o) => tracing::warn!(
            "precompiling AppArmor profiles: {} of {} cached ({}): {}",
            cached,
            profiles.len(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!("precompiling AppArmor profiles: unshare: {e}"),
    }
    Ok(())
}

/// The systemd side of the recipe (also used for imported trees that have systemd): agent and
/// hostname units, serial console, power-off as reset, masked timers, fstab. The agent binary
/// itself must be at /usr/local/sbin/kobako-agent.
pub(crate) fn customize_systemd(root: &Path) -> Result<(), DiskError> {
    // Debian keeps units in /lib/systemd (usr-merged: /usr/lib/systemd); both resolve.
    let in_tree = |rel: &str| {
        crate::inroot::Root::open(root)
            .map(|t| t.is_dir(rel))
            .unwrap_or(false)
    };
    let sysdir = if in_tree("lib/systemd/system") {
        "/lib/systemd/system"
    } else {
        "/usr/lib/systemd/system"
    };
    let w = |rel: &str, c: &[u8], mode: u32| write(root, rel, c, mode);
    let l = |target: &str, rel: &str| link(root, target, rel);
    w(
        "etc/systemd/system/kobako-agent.service",
        AGENT_UNIT.as_bytes(),
        0o644,
    )?;
    l(
        "/etc/systemd/system/kobako-agent.service",
        "etc/systemd/system/sysinit.target.wants/kobako-agent.service",
    )?;
    w(
        "usr/local/lib/kobako/set-hostname",
        HOSTNAME_SCRIPT.as_bytes(),
        0o755,
    )?;
    w(
        "etc/systemd/system/kobako-hostname.service",
        HOSTNAME_UNIT.as_bytes(),
        0o644,
    )?;
    l(
        "/etc/systemd/system/kobako-hostname.service",
        "etc/systemd/system/sysinit.target.wants/kobako-hostname.service",
    )?;
    // Serial console with root autologin.
    l(
        &format!("{sysdir}/serial-getty@.service"),
        "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service",
    )?;
    w(
        "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
        AUTOLOGIN.as_bytes(),
        0o644,
    )?;
    // Power-off is a reset on microvm (no ACPI); see the module docs.
    l(
        &format!("{sysdir}/reboot.target"),
        "etc/systemd/system/poweroff.target",
    )?;
    l(
        &format!("{sysdir}/reboot.target"),
        "etc/systemd/system/halt.target",
    )?;
    // No upkeep timers, no waiting for a network nobody configured.
    for unit in [
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        "systemd-networkd-wait-online.service",
        "getty@tty1.service",
        // Debian's fallback gettys on tty2-6 (there are no VTs).
        "getty-static.service",
    ] {
        l("/dev/null", &format!("etc/systemd/system/{unit}"))?;
    }
    // Generators for hardware a microVM does not have. Each costs ~0.5 s of a TCG guest's boot
    // (measured: 13 generators took 4.5 s before the first unit started).
    for g in [
        "systemd-cryptsetup-generator",
        "systemd-debug-generator",
        "systemd-gpt-auto-generator",
        "systemd-hibernate-resume-generator",
        "systemd-integritysetup-generator",
        "systemd-veritysetup-generator",
        "systemd-system-update-generator",
        "systemd-sysv-generator",
        "systemd-rc-local-generator",
        "systemd-run-generator",
        // serial-getty@ttyS0 is enabled explicitly.
        "systemd-getty-generator",
    ] {
        l("/dev/null", &format!("etc/systemd/system-generators/{g}"))?;
    }
    // cloud-init (when installed): only the NoCloud seed, and no locale generation (minbase has
    // no locales; update-locale fails and marks the run as errored).
    if in_tree("etc/cloud") {
        w(
            "etc/cloud/cloud.cfg.d/90-kobako.cfg",
            CLOUD_CFG.as_bytes(),
            0o644,
        )?;
    }
    w(
        "etc/fstab",
        b"# kobako: the root disk is the first virtio-blk device\n/dev/vda / ext4 rw,relatime,errors=remount-ro 0 0\n",
        0o644,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn packages_expand_presets_and_reject_junk() {
        let mut o = DebianOptions::new("x");
        o.packages = vec!["nginx".into(), "iproute2".into()];
        o.with = vec!["docker".into()];
        let p = o.all_packages().unwrap();
        assert_eq!(p[0], "systemd-sysv");
        assert!(p.contains(&"docker.io".to_string()));
        assert_eq!(p.iter().filter(|x| *x == "iproute2").count(), 1);
        o.packages = vec!["rm -rf".into()];
        assert!(o.all_packages().is_err());
        // apt's `pkg/suite`, but nothing else with a slash.
        o.packages = vec!["suricata/bookworm-backports".into()];
        assert!(o.all_packages().is_ok());
        for bad in ["/etc/passwd", "a/", "a/b/c", "a/b=1"] {
            o.packages = vec![bad.into()];
            assert!(o.all_packages().is_err(), "{bad}");
        }
        o.packages = vec![];
        o.with = vec!["k8s".into()];
        assert!(o
            .all_packages()
            .unwrap_err()
            .to_string()
            .contains("unknown preset"));
    }

    #[test]
    fn sources_and_masked_units_are_checked() {
        let mut o = DebianOptions::new("x");
        o.sources = vec!["deb http://deb.debian.org/debian bookworm-backports main".into()];
        o.mask = vec!["redis-server.service".into(), "getty@tty2.service".into()];
        o.check_sources_and_units().unwrap();
        for bad in [
            "http://deb.debian.org/debian",
            "deb bookworm main x",
            "deb http://x bookworm\ndeb http://y sid main",
        ] {
            o.sources = vec![bad.into()];
            assert!(o.check_sources_and_units().is_err(), "{bad}");
        }
        o.sources.clear();
        for bad in ["../../etc/passwd.service", "redis", ".service"] {
            o.mask = vec![bad.into()];
            assert!(o.check_sources_and_units().is_err(), "{bad}");
        }
    }

    #[test]
    fn customize_writes_the_recipe() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("lib/systemd/system")).unwrap();
        customize(d.path(), b"agent").unwrap();
        let r = d.path();
        assert_eq!(
            std::fs::read(r.join("usr/local/sbin/kobako-agent")).unwrap(),
            b"agent"
        );
        assert_eq!(
            std::fs::read_link(
                r.join("etc/systemd/system/sysinit.target.wants/kobako-agent.service")
            )
            .unwrap(),
            PathBuf::from("/etc/systemd/system/kobako-agent.service")
        );
        assert_eq!(
            std::fs::read_link(r.join("etc/systemd/system/poweroff.target")).unwrap(),
            PathBuf::from("/lib/systemd/system/reboot.target")
        );
        assert!(std::fs::read_to_string(r.join("etc/fstab"))
            .unwrap()
            .contains("/dev/vda / ext4"));
    }

    #[test]
    fn apparmor_profiles_follow_the_programs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("lib/systemd/system")).unwrap();
        // No AppArmor in the tree: nothing of it is written.
        customize(r, b"agent").unwrap();
        assert!(!r.join("etc/systemd/system/kobako-agent.service.d").exists());
        std::fs::create_dir_all(r.join("etc/apparmor.d")).unwrap();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/redis-check-rdb"), b"").unwrap();
        customize(r, b"agent").unwrap();
        assert!(
            std::fs::read_to_string(r.join("etc/apparmor.d/kobako.redis"))
                .unwrap()
                .contains("profile kobako-redis /usr/bin/redis-check-rdb")
        );
        assert!(!r.join("etc/apparmor.d/kobako.suricata").exists());
        assert!(std::fs::read_to_string(
            r.join("etc/systemd/system/kobako-agent.service.d/apparmor.conf")
        )
        .unwrap()
        .contains("After=apparmor.service"));
        // Every shipped profile is kobako's and names the program it is installed for.
        for (name, program, text) in APPARMOR_PROFILES {
            assert!(name.starts_with("kobako."), "{name}");
            assert!(text.contains("abi <abi/3.0>"), "{name}");
            if *program != "usr/bin/python3" {
                assert!(text.contains(&format!(" /{program} ")), "{name}");
            }
        }
    }
}
