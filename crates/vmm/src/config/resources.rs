//! [`VmResources`], the validated configuration of one microVM that the builder consumes, and
//! the checks that turn wire types into it (machine configuration against this host, drive and
//! interface ids, files that must exist, pmem backing files). Each setter answers one API
//! request or one section of a `--config-file` document.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{
    BalloonConfig, BalloonError, BootSource, ConfigError, CpuTemplate, Drive, DriveUpdate,
    EntropyConfig, FullConfig, HugePages, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MetricsConfig, MmdsConfig, NetworkInterface, NetworkInterfaceUpdate, Pmem, PmemError,
    PmemUpdate, SerialConfig, Vsock, PMEM_SIZE_ALIGN,
};
use crate::arch::layout::MAX_VCPUS;

/// Host memory in MiB (MemTotal), the upper bound for `mem_size_mib`.
pub fn host_mem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(u64::MAX)
}

fn validate_machine(mc: &MachineConfig) -> Result<(), ConfigError> {
    if mc.vcpu_count == 0
        || mc.vcpu_count > MAX_VCPUS
        || (mc.smt && mc.vcpu_count % 2 == 1 && mc.vcpu_count > 1)
    {
        return Err(ConfigError::VcpuCount);
    }
    if mc.smt {
        return Err(ConfigError::Smt);
    }
    if mc.mem_size_mib == 0 {
        return Err(ConfigError::MemSize);
    }
    let host_mib = host_mem_mib();
    if mc.mem_size_mib > host_mib {
        return Err(ConfigError::MemTooLarge {
            mib: mc.mem_size_mib,
            host_mib,
        });
    }
    if let Some(t) = mc.cpu_template.filter(|t| *t != CpuTemplate::None) {
        return Err(ConfigError::NotSupported(format!(
            "CPU template {t:?} is not supported by kobako-vmm (it applies its own CPUID normalisation, no templates): leave cpu_template out or set it to \"None\"."
        )));
    }
    if mc.huge_pages == HugePages::Hugetlbfs2M {
        return Err(ConfigError::NotSupported(
            "huge_pages \"2M\" (hugetlbfs) is not supported yet; use \"None\" or \"Transparent\""
                .into(),
        ));
    }
    Ok(())
}

fn check_file(what: &'static str, p: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(p)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            what,
            why: format!("{}: {e}", p.display()),
        })
}

fn check_id(what: &'static str, id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            what,
            why: format!("{id:?} must be 1-64 characters of [A-Za-z0-9_-]"),
        })
    }
}

/// At most this many pmem devices: each takes a KVM memory slot, one of the 19 virtio IRQs and
/// at least 128 MiB of guest physical address space above RAM.
pub const MAX_PMEM_DEVICES: usize = 8;

/// A pmem backing file, opened and checked.
#[derive(Debug)]
pub struct PmemFile {
    pub file: File,
    /// A non-zero multiple of [`PMEM_SIZE_ALIGN`].
    pub size: u64,
    /// `(st_dev, st_ino)`: one file backs one device.
    pub id: (u64, u64),
}

fn file_kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens a pmem backing file (read-write unless `read_only`) and checks what the device
/// needs: a regular file (checked before it is opened: opening a FIFO or a device can block
/// or act), of a non-zero size that is a multiple of 2 MiB. Checked at `PUT /pmem` and again
/// when the device maps it at InstanceStart (the file may have changed in between); the
/// checks apply to the file actually opened.
pub fn open_pmem_file(path: &Path, read_only: bool) -> Result<PmemFile, PmemError> {
    let shown = crate::text::clip(&path.display().to_string(), 256).into_owned();
    let check = |m: &std::fs::Metadata| -> Result<u64, PmemError> {
        if !m.file_type().is_file() {
            return Err(PmemError::NotRegular {
                path: shown.clone(),
                kind: file_kind(m.file_type()),
            });
        }
        let size = m.len();
        if size == 0 {
            return Err(PmemError::Empty {
                path: shown.clone(),
            });
        }
        if size % PMEM_SIZE_ALIGN != 0 {
            return Err(PmemError::Unaligned {
                path: shown.clone(),
                size,
                next_mib: size.div_ceil(PMEM_SIZE_ALIGN) * (PMEM_SIZE_ALIGN >> 20),
            });
        }
        Ok(size)
    };
    let missing = |e: std::io::Error| PmemError::Missing {
        path: shown.clone(),
        why: e.to_string(),
    };
    check(&std::fs::metadata(path).map_err(missing)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| PmemError::Open {
            path: shown.clone(),
            mode: if read_only {
                "reading"
            } else {
                "reading and writing"
            },
            why: e.to_string(),
            hint: if read_only {
                ""
            } else {
                ", or set \"read_only\": true to map it read-only"
            },
        })?;
    let m = file.metadata().map_err(missing)?;
    let size = check(&m)?;
    Ok(PmemFile {
        file,
        size,
        id: (m.dev(), m.ino()),
    })
}

/// `(st_dev, st_ino)` of an existing file (`None`: it cannot be stat'ed).
fn file_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The validated configuration of one microVM. Every setter either applies its change whole
/// or returns an error and leaves the configuration as it was.
#[derive(Debug, Clone, Default)]
pub struct VmResources {
    pub boot_source: Option<BootSource>,
    pub machine: MachineConfig,
    pub drives: BTreeMap<String, Drive>,
    /// `PUT /pmem/{id}`: virtio-pmem devices.
    pub pmem: BTreeMap<String, Pmem>,
    pub net: BTreeMap<String, NetworkInterface>,
    pub vsock: Option<Vsock>,
    pub entropy: Option<EntropyConfig>,
    pub logger: Option<LoggerConfig>,
    pub metrics: Option<MetricsConfig>,
    pub serial: Option<SerialConfig>,
    /// `PUT /balloon`.
    pub balloon: Option<BalloonConfig>,
    /// `PUT /cpu-config`: a custom CPU template (checked when set).
    pub cpu_config: Option<crate::arch::cpu_template::CpuConfig>,
    /// `PUT /mmds/config`: which interfaces answer the guest's MMDS requests.
    pub mmds_config: Option<MmdsConfig>,
    /// The MMDS data store, one per process: clones of these resources share it.
    pub mmds: Arc<Mutex<crate::mmds::Mmds>>,
}

impl VmResources {
    /// `PUT /cpu-config` (pre-boot): every modifier is checked now.
    pub fn set_cpu_config(
        &mut self,
        c: crate::arch::cpu_template::CpuConfig,
    ) -> Result<(), crate::arch::cpu_template::CpuTemplateError> {
        c.compile()?;
        self.cpu_config = Some(c);
        Ok(())
    }

    /// `PUT /balloon` (pre-boot): the target must fit in the guest's memory.
    pub fn set_balloon(&mut self, b: BalloonConfig) -> Result<(), BalloonError> {
        self.check_balloon_amount(b.amount_mib)?;
        self.balloon = Some(b);
        Ok(())
    }

    /// A balloon target must not exceed the guest's memory.
    pub fn check_balloon_amount(&self, amount_mib: u32) -> Result<(), BalloonError> {
        if u64::from(amount_mib) > self.machine.mem_size_mib {
            return Err(BalloonError::TooLarge {
                amount_mib,
                mem_mib: self.machine.mem_size_mib,
            });
        }
        Ok(())
    }

    /// `PATCH /balloon` (a new target) and `PATCH /balloon/statistics` on the configuration.
    pub fn update_balloon(
        &mut self,
        amount_mib: Option<u32>,
        stats_s: Option<u16>,
    ) -> Result<(), BalloonError> {
        let Some(b) = self.balloon.clone() else {
            return Err(BalloonError::NotConfigured);
        };
        let mut b = b;
        if let Some(a) = amount_mib {
            self.check_balloon_amount(a)?;
            b.amount_mib = a;
        }
        if let Some(s) = stats_s {
            b.stats_polling_interval_s = s;
        }
        self.balloon = Some(b);
        Ok(())
    }

    /// `PUT /mmds/config`: the interfaces must be configured; the address link-local.
    pub fn set_mmds_config(&mut self, c: MmdsConfig) -> Result<(), ConfigError> {
        if c.network_interfaces.is_empty() {
            return Err(ConfigError::Invalid {
                what: "network_interfaces",
                why: "name at least one network interface (its iface_id) to reach the MMDS through"
                    .into(),
            });
        }
        for id in &c.network_interfaces {
            if !self.net.contains_key(id) {
                return Err(ConfigError::Invalid {
                    what: "network_interfaces",
                    why: format!(
                        "no network interface {:?} is configured (PUT /network-interfaces/{{iface_id}} first; configured: {})",
                        crate::text::clip(id, 64),
                        if self.net.is_empty() { "none".to_string() } else { self.net.keys().cloned().collect::<Vec<_>>().join(", ") }
                    ),
                });
            }
        }
        if let Some(a) = &c.ipv4_address {
            if crate::mmds::parse_ipv4(a).is_none() {
                return Err(ConfigError::Invalid {
                    what: "ipv4_address",
                    why: format!(
                        "{:?} is not a link-local address in 169.254.1.0-169.254.254.255",
                        crate::text::clip(a, 64)
                    ),
                });
            }
        }
        self.mmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .configure(c.version, c.imds_compat);
        self.mmds_config = Some(c);
        Ok(())
    }

    /// `PUT /boot-source`: the kernel must exist and look like a vmlinux or bzImage.
    pub fn set_boot_source(&mut self, b: BootSource) -> Result<(), ConfigError> {
        crate::arch::boot::check_kernel(&b.kernel_image_path).map_err(|e| {
            ConfigError::Kernel(match e {
                crate::arch::boot::BootError::Open { source, .. } => {
                    format!("The kernel file cannot be opened: {source}")
                }
                other => format!("Invalid kernel image: {other}"),
            })
        })?;
        if let Some(rd) = &b.initrd_path {
            std::fs::File::open(rd).map_err(|e| ConfigError::Initrd(e.to_string()))?;
        }
        if let Some(args) = &b.boot_args {
            if args.len() >= crate::arch::layout::CMDLINE_MAX_SIZE {
                return Err(ConfigError::Invalid {
                    what: "boot_args",
                    why: format!(
                        "longer than {} bytes",
                        crate::arch::layout::CMDLINE_MAX_SIZE - 1
                    ),
                });
            }
        }
        self.boot_source = Some(b);
        Ok(())
    }

    /// `PUT /machine-config`.
    pub fn set_machine_config(&mut self, mut mc: MachineConfig) -> Result<(), ConfigError> {
        validate_machine(&mc)?;
        // "None" is the same as no template.
        mc.cpu_template = None;
        self.machine = mc;
        Ok(())
    }

    /// `PATCH /machine-config`.
    pub fn update_machine_config(&mut self, u: MachineConfigUpdate) -> Result<(), ConfigError> {
        let mut mc = self.machine.clone();
        if let Some(v) = u.vcpu_count {
            mc.vcpu_count = v;
        }
        if let Some(v) = u.mem_size_mib {
            mc.mem_size_mib = v;
        }
        if let Some(v) = u.smt {
            mc.smt = v;
        }
        if let Some(v) = u.cpu_template {
            mc.cpu_template = Some(v);
        }
        if let Some(v) = u.track_dirty_pages {
            mc.track_dirty_pages = v;
        }
        if let Some(v) = u.huge_pages {
            mc.huge_pages = v;
        }
        self.set_machine_config(mc)
    }

    /// `PUT /drives/{id}`: at most one root device.
    pub fn put_drive(&mut self, path_id: &str, d: Drive) -> Result<(), ConfigError> {
        if path_id != d.drive_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: d.drive_id,
            });
        }
        check_id("drive_id", &d.drive_id)?;
        if let Some(f) = &d.image_format {
            if f != "raw" && f != "qcow2" {
                return Err(ConfigError::Invalid {
                    what: "image_format",
                    why: format!("{f:?}: use \"raw\" or \"qcow2\" (or leave it out to probe)"),
                });
            }
        }
        for (what, v, ok) in [
            ("cache_type", &d.cache_type, &["Unsafe", "Writeback"]),
            ("io_engine", &d.io_engine, &["Sync", "Async"]),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !ok.contains(v)) {
                return Err(ConfigError::Invalid {
                    what,
                    why: format!("{v:?}: use {:?} or {:?}", ok[0], ok[1]),
                });
            }
        }
        match (&d.path_on_host, &d.socket) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    what: "drive",
                    why: "give path_on_host (a virtio-blk drive) or socket (vhost-user), not both".into(),
                })
            }
            (Some(p), None) => check_file("path_on_host", p)?,
            (None, Some(_)) => {
                return Err(ConfigError::NotSupported(
                    "vhost-user block devices (socket) are not supported by kobako-vmm: give path_on_host, the image file of a virtio-blk drive, instead of socket.".into(),
                ))
            }
            (None, None) => {
                return Err(ConfigError::Invalid {
                    what: "drive",
                    why: "one of path_on_host or socket is required".into(),
                })
            }
        }
        if d.is_root_device
            && self
                .drives
                .values()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err(ConfigError::Invalid {
                what: "drive",
                why: "a root block device already exists".into(),
            });
        }
        if let Some(p) = self
            .pmem
            .values()
            .find(|p| p.root_device && d.is_root_device)
        {
            return Err(ConfigError::Invalid {
                what: "drive",
                why: format!(
                    "pmem device {:?} is the root device already; at most one pmem device or drive can be the root device",
                    p.id
                ),
            });
        }
        if let Some(p) = d.path_on_host.as_deref().and_then(|path| {
            let id = file_id(path)?;
            self.pmem
                .values()
                .find(|p| file_id(&p.path_on_host) == Some(id))
        }) {
            return Err(ConfigError::Invalid {
                what: "path_on_host",
                why: format!(
                    "the file is already the backing file of pmem device {:?}: one file backs one device",
                    p.id
                ),
            });
        }
        self.drives.insert(d.drive_id.clone(), d);
        Ok(())
    }

    /// `PUT /pmem/{id}` (pre-boot): a new pmem device, or a new configuration of the one of
    /// that id (Firecracker's "creates or updates"). The backing file is opened and checked
    /// now; at most one root device among pmem devices and drives (Firecracker's rule).
    pub fn put_pmem(&mut self, path_id: &str, p: Pmem) -> Result<(), ConfigError> {
        if path_id != p.id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: p.id,
            });
        }
        check_id("id", &p.id)?;
        let file = open_pmem_file(&p.path_on_host, p.read_only)?;
        if !self.pmem.contains_key(&p.id) && self.pmem.len() >= MAX_PMEM_DEVICES {
            return Err(PmemError::TooMany {
                max: MAX_PMEM_DEVICES,
            }
            .into());
        }
        if p.root_device {
            let other = self
                .pmem
                .values()
                .find(|o| o.root_device && o.id != p.id)
                .map(|o| format!("pmem device {:?}", o.id))
                .or_else(|| {
                    self.drives
                        .values()
                        .find(|d| d.is_root_device)
                        .map(|d| format!("drive {:?}", d.drive_id))
                });
            if let Some(other) = other {
                return Err(PmemError::SecondRoot { other }.into());
            }
        }
        let shown = || crate::text::clip(&p.path_on_host.display().to_string(), 256).into_owned();
        if let Some(o) = self
            .pmem
            .values()
            .find(|o| o.id != p.id && file_id(&o.path_on_host) == Some(file.id))
        {
            return Err(PmemError::SameFile {
                path: shown(),
                other: format!("pmem device {:?}", o.id),
            }
            .into());
        }
        if let Some(d) = self.drives.values().find(|d| {
            d.path_on_host
                .as_deref()
                .is_some_and(|dp| file_id(dp) == Some(file.id))
        }) {
            return Err(PmemError::SameFile {
                path: shown(),
                other: format!("drive {:?}", d.drive_id),
            }
            .into());
        }
        self.pmem.insert(p.id.clone(), p);
        Ok(())
    }

    /// `PATCH /pmem/{id}` (post-boot: the runtime controller applies it to the live device
    /// too): a new rate limiter.
    pub fn patch_pmem(&mut self, path_id: &str, u: PmemUpdate) -> Result<(), ConfigError> {
        if path_id != u.id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: u.id,
            });
        }
        let Some(p) = self.pmem.get_mut(&u.id) else {
            return Err(PmemError::NoSuchDevice {
                id: crate::text::clip(&u.id, 64).into_owned(),
            }
            .into());
        };
        if let Some(r) = u.rate_limiter {
            p.rate_limiter = Some(r);
        }
        Ok(())
    }

    /// `PATCH /drives/{id}` before boot: updates the stored drive.
    pub fn patch_drive(&mut self, path_id: &str, u: DriveUpdate) -> Result<(), ConfigError> {
        if path_id != u.drive_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: u.drive_id,
            });
        }
        let Some(d) = self.drives.get(&u.drive_id) else {
            return Err(ConfigError::Invalid {
                what: "drive_id",
                why: format!("no drive {:?}", u.drive_id),
            });
        };
        let mut d = d.clone();
        if let Some(p) = u.path_on_host {
            check_file("path_on_host", &p)?;
            d.path_on_host = Some(p);
        }
        if let Some(r) = u.rate_limiter {
            d.rate_limiter = Some(r);
        }
        self.drives.insert(d.drive_id.clone(), d);
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`.
    pub fn put_net(&mut self, path_id: &str, n: NetworkInterface) -> Result<(), ConfigError> {
        if path_id != n.iface_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: n.iface_id,
            });
        }
        check_id("iface_id", &n.iface_id)?;
        if n.host_dev_name.is_empty() || n.host_dev_name.len() >= 16 {
            return Err(ConfigError::Invalid {
                what: "host_dev_name",
                why: "must be 1-15 bytes (IFNAMSIZ)".into(),
            });
        }
        if let Some(mtu) = n.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(ConfigError::Invalid {
                    what: "mtu",
                    why: format!("{mtu} is outside 68..=65535"),
                });
            }
        }
        if let Some(mac) = &n.guest_mac {
            let parts: Vec<_> = mac.split(':').collect();
            if parts.len() != 6
                || !parts
                    .iter()
                    .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
            {
                return Err(ConfigError::Invalid {
                    what: "guest_mac",
                    why: format!("{mac:?} is not a MAC address like 06:00:AC:10:00:02"),
                });
            }
        }
        if self
            .net
            .values()
            .any(|o| o.iface_id != n.iface_id && o.host_dev_name == n.host_dev_name)
        {
            return Err(ConfigError::Invalid {
                what: "host_dev_name",
                why: format!("{} is already used by another interface", n.host_dev_name),
            });
        }
        self.net.insert(n.iface_id.clone(), n);
        Ok(())
    }

    /// `PATCH /network-interfaces/{id}` before boot.
    pub fn patch_net(
        &mut self,
        path_id: &str,
        u: NetworkInterfaceUpdate,
    ) -> Result<(), ConfigError> {
        if path_id != u.iface_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.into(),
                body: u.iface_id,
            });
        }
        let Some(n) = self.net.get_mut(&u.iface_id) else {
            return Err(ConfigError::Invalid {
                what: "iface_id",
                why: format!("no network interface {:?}", u.iface_id),
            });
        };
        if let Some(r) = u.rx_rate_limiter {
            n.rx_rate_limiter = Some(r);
        }
        if let Some(r) = u.tx_rate_limiter {
            n.tx_rate_limiter = Some(r);
        }
        Ok(())
    }

    /// `PUT /vsock`: guest CIDs 0-2 are reserved (VMADDR_CID_HYPERVISOR, _LOCAL, _HOST).
    pub fn set_vsock(&mut self, v: Vsock) -> Result<(), ConfigError> {
        if v.guest_cid < 3 {
            return Err(ConfigError::Invalid {
                what: "guest_cid",
                why: format!("{} is reserved; use 3 or more", v.guest_cid),
            });
        }
        if v.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                what: "uds_path",
                why: "must not be empty".into(),
            });
        }
        self.vsock = Some(v);
        Ok(())
    }

    /// Applies a whole `--config-file` document.
    pub fn from_full(mut cfg: FullConfig) -> Result<VmResources, ConfigError> {
        if cfg.memory_hotplug.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ConfigError::NotSupported(
                "The \"memory-hotplug\" section is not supported by kobako-vmm.".into(),
            ));
        }
        let mut r = VmResources::default();
        if let Some(mc) = cfg.machine_config.take() {
            r.set_machine_config(mc)?;
        }
        if let Some(b) = cfg.boot_source.take() {
            r.set_boot_source(b)?;
        }
        r.apply_devices(cfg)?;
        Ok(r)
    }

    /// The configuration stored in a snapshot: as [`VmResources::from_full`], except that the
    /// kernel is not checked (it is in the memory file; its path is kept for `GET /vm/config`).
    pub fn from_snapshot(mut cfg: FullConfig) -> Result<VmResources, ConfigError> {
        let mut r = VmResources::default();
        r.set_machine_config(cfg.machine_config.take().unwrap_or_default())?;
        r.boot_source = cfg.boot_source.take();
        r.apply_devices(cfg)?;
        Ok(r)
    }

    /// Drives, pmem devices, interfaces, vsock, entropy, logger, metrics and serial of a
    /// document.
    fn apply_devices(&mut self, cfg: FullConfig) -> Result<(), ConfigError> {
        let r = self;
        for d in cfg.drives {
            let id = d.drive_id.clone();
            r.put_drive(&id, d)?;
        }
        for p in cfg.pmem {
            if r.pmem.contains_key(&p.id) {
                return Err(PmemError::DuplicateId {
                    id: crate::text::clip(&p.id, 64).into_owned(),
                }
                .into());
            }
            let id = p.id.clone();
            r.put_pmem(&id, p)?;
        }
        for n in cfg.network_interfaces {
            let id = n.iface_id.clone();
            r.put_net(&id, n)?;
        }
        if let Some(v) = cfg.vsock {
            r.set_vsock(v)?;
        }
        if let Some(m) = cfg.mmds_config {
            r.set_mmds_config(m)?;
        }
        if let Some(c) = cfg.cpu_config {
            r.set_cpu_config(c)
                .map_err(|e| ConfigError::NotSupported(e.to_string()))?;
        }
        if let Some(b) = cfg.balloon {
            r.set_balloon(b)
                .map_err(|e| ConfigError::NotSupported(e.to_string()))?;
        }
        r.entropy = cfg.entropy;
        r.logger = cfg.logger;
        r.metrics = cfg.metrics;
        r.serial = cfg.serial;
        Ok(())
    }

    /// `GET /vm/config`.
    pub fn to_full(&self) -> FullConfig {
        FullConfig {
            boot_source: self.boot_source.clone(),
            machine_config: Some(self.machine.clone()),
            drives: self.drives.values().cloned().collect(),
            pmem: self.pmem.values().cloned().collect(),
            network_interfaces: self.net.values().cloned().collect(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            logger: self.logger.clone(),
            metrics: self.metrics.clone(),
            serial: self.serial.clone(),
            mmds_config: self.mmds_config.clone(),
            balloon: self.balloon.clone(),
            cpu_config: self.cpu_config.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_validation() {
        let mut r = VmResources::default();
        let mc = |v, m| MachineConfig {
            vcpu_count: v,
            mem_size_mib: m,
            ..Default::default()
        };
        assert_eq!(
            r.set_machine_config(mc(0, 128)),
            Err(ConfigError::VcpuCount)
        );
        assert_eq!(
            r.set_machine_config(mc(33, 128)),
            Err(ConfigError::VcpuCount)
        );
        assert_eq!(r.set_machine_config(mc(1, 0)), Err(ConfigError::MemSize));
        assert!(matches!(
            r.set_machine_config(mc(1, 1 << 40)),
            Err(ConfigError::MemTooLarge { .. })
        ));
        assert_eq!(
            r.machine,
            MachineConfig::default(),
            "unchanged after errors"
        );
        r.set_machine_config(mc(32, 256)).unwrap();
        r.update_machine_config(MachineConfigUpdate {
            mem_size_mib: Some(512),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((r.machine.vcpu_count, r.machine.mem_size_mib), (32, 512));
    }

    #[test]
    fn ids_and_vsock() {
        let mut r = VmResources::default();
        let n = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("06:00:AC:10:00:02".into()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert!(matches!(
            r.put_net("eth1", n.clone()),
            Err(ConfigError::IdMismatch { .. })
        ));
        r.put_net("eth0", n.clone()).unwrap();
        let mut bad = n;
        bad.guest_mac = Some("zz".into());
        assert!(r.put_net("eth0", bad).is_err());
        assert!(r
            .set_vsock(Vsock {
                vsock_id: None,
                guest_cid: 2,
                uds_path: "/tmp/v".into()
            })
            .is_err());
    }

    #[test]
    fn pmem_files_ids_and_root_rules() {
        let dir = tempfile::tempdir().unwrap();
        let f = |name: &str, len: u64| {
            let p = dir.path().join(name);
            let file = std::fs::File::create(&p).unwrap();
            file.set_len(len).unwrap();
            p
        };
        let pm = |id: &str, p: &Path, root: bool| Pmem {
            id: id.into(),
            path_on_host: p.to_path_buf(),
            root_device: root,
            read_only: false,
            rate_limiter: None,
        };
        let good = f("good", 4 << 20);
        let mut r = VmResources::default();
        let msg = |e: ConfigError| e.to_string();
        let missing = dir.path().join("nope");
        assert!(
            msg(r.put_pmem("a", pm("a", &missing, false)).unwrap_err()).contains("truncate -s 2M")
        );
        assert!(
            msg(r.put_pmem("a", pm("a", dir.path(), false)).unwrap_err())
                .contains("is not a regular file (it is a directory)")
        );
        assert!(
            msg(r.put_pmem("a", pm("a", &f("empty", 0), false)).unwrap_err()).contains("is empty")
        );
        let e = msg(r
            .put_pmem("a", pm("a", &f("odd", (2 << 20) + 1), false))
            .unwrap_err());
        assert!(
            e.contains("not a multiple of 2 MiB") && e.contains("truncate -s 4M"),
            "{e}"
        );
        assert!(matches!(
            r.put_pmem("b", pm("a", &good, false)),
            Err(ConfigError::IdMismatch { .. })
        ));
        assert!(r.put_pmem("a/b", pm("a/b", &good, false)).is_err());
        assert!(r.pmem.is_empty(), "nothing kept from refused requests");

        r.put_pmem("a", pm("a", &good, false)).unwrap();
        // The same id again: an update (Firecracker's "creates or updates").
        r.put_pmem("a", pm("a", &good, true)).unwrap();
        assert_eq!(r.pmem.len(), 1);
        assert!(r.pmem["a"].root_device);
        assert!(msg(r.put_pmem("b", pm("b", &good, false)).unwrap_err())
            .contains("already used by pmem device \"a\""));
        let second = f("second", 2 << 20);
        assert!(msg(r.put_pmem("b", pm("b", &second, true)).unwrap_err())
            .contains("A root device already exists: pmem device \"a\""));
        r.put_pmem("b", pm("b", &second, false)).unwrap();
        // A root drive now clashes with the root pmem device, and the other way round.
        let disk = f("disk", 2 << 20);
        let drive = |root| Drive {
            drive_id: "d".into(),
            path_on_host: Some(disk.clone()),
            is_root_device: root,
            partuuid: None,
            is_read_only: false,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
            socket: None,
            image_format: None,
        };
        assert!(r
            .put_drive("d", drive(true))
            .unwrap_err()
            .to_string()
            .contains("pmem device \"a\" is the root device already"));
        r.put_pmem("a", pm("a", &good, false)).unwrap();
        r.put_drive("d", drive(true)).unwrap();
        assert!(msg(r.put_pmem("b", pm("b", &second, true)).unwrap_err())
            .contains("drive \"d\" is the root device"));
        assert!(msg(r.put_pmem("c", pm("c", &disk, false)).unwrap_err())
            .contains("already used by drive \"d\""));
        for i in 2..MAX_PMEM_DEVICES {
            let id = format!("p{i}");
            r.put_pmem(&id, pm(&id, &f(&id, 2 << 20), false)).unwrap();
        }
        let e = msg(r
            .put_pmem("z", pm("z", &f("z", 2 << 20), false))
            .unwrap_err());
        assert!(e.contains("Too many pmem devices: at most 8"), "{e}");
        assert_eq!(r.to_full().pmem.len(), MAX_PMEM_DEVICES);

        // PATCH: id checks, the limiter recorded.
        let upd: PmemUpdate = serde_json::from_str(
            r#"{"id": "a", "rate_limiter": {"ops": {"size": 1, "refill_time": 10}}}"#,
        )
        .unwrap();
        assert!(r.patch_pmem("b", upd.clone()).is_err());
        r.patch_pmem("a", upd).unwrap();
        assert!(r.pmem["a"].rate_limiter.is_some());
        let nope: PmemUpdate = serde_json::from_str(r#"{"id": "q"}"#).unwrap();
        assert!(msg(r.patch_pmem("q", nope).unwrap_err()).contains("No pmem device \"q\""));
    }

    #[test]
    fn pmem_in_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p");
        std::fs::File::create(&p).unwrap().set_len(2 << 20).unwrap();
        let doc = |pmem: &str| -> FullConfig {
            serde_json::from_str(&format!(r#"{{"pmem": {pmem}}}"#)).unwrap()
        };
        let one = format!(r#"[{{"id": "p", "path_on_host": "{}"}}]"#, p.display());
        let r = VmResources::from_full(doc(&one)).unwrap();
        assert!(
            !r.pmem["p"].root_device && !r.pmem["p"].read_only,
            "defaults"
        );
        let v = serde_json::to_value(r.to_full()).unwrap();
        assert_eq!(v["pmem"][0]["path_on_host"], p.display().to_string());
        assert_eq!(v["pmem"][0]["root_device"], false);
        assert!(VmResources::from_full(doc("null")).unwrap().pmem.is_empty());
        let two = format!(
            r#"[{{"id": "p", "path_on_host": "{0}"}}, {{"id": "p", "path_on_host": "{0}"}}]"#,
            p.display()
        );
        assert!(VmResources::from_full(doc(&two))
            .unwrap_err()
            .to_string()
            .contains("appears more than once"));
        // No pmem: GET /vm/config has no pmem key (as before pmem existed).
        let v = serde_json::to_value(VmResources::default().to_full()).unwrap();
        assert!(v.get("pmem").is_none());
    }
}
