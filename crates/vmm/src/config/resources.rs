//! [`VmResources`], the validated configuration of one microVM that the builder consumes, and
//! the checks that turn wire types into it (machine configuration against this host, drive and
//! interface ids, files that must exist). Each setter answers one API request or one section of
//! a `--config-file` document.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{
    BalloonConfig, BalloonError, BootSource, ConfigError, CpuTemplate, Drive, DriveUpdate,
    EntropyConfig, FullConfig, HugePages, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MetricsConfig, MmdsConfig, NetworkInterface, NetworkInterfaceUpdate, SerialConfig, Vsock,
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

/// The validated configuration of one microVM. Every setter either applies its change whole
/// or returns an error and leaves the configuration as it was.
#[derive(Debug, Clone, Default)]
pub struct VmResources {
    pub boot_source: Option<BootSource>,
    pub machine: MachineConfig,
    pub drives: BTreeMap<String, Drive>,
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
                        crate::api::http::clip(id, 64),
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
                        crate::api::http::clip(a, 64)
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
        self.drives.insert(d.drive_id.clone(), d);
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
        for (name, v) in [("pmem", &cfg.pmem), ("memory-hotplug", &cfg.memory_hotplug)] {
            if v.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ConfigError::NotSupported(format!(
                    "The \"{name}\" section is not supported by kobako-vmm."
                )));
            }
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

    /// Drives, interfaces, vsock, entropy, logger, metrics and serial of a document.
    fn apply_devices(&mut self, cfg: FullConfig) -> Result<(), ConfigError> {
        let r = self;
        for d in cfg.drives {
            let id = d.drive_id.clone();
            r.put_drive(&id, d)?;
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
}
