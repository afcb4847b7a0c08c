//! cloud-init NoCloud seed disks: an ISO 9660 filesystem labelled `cidata` holding `user-data`,
//! `meta-data` (instance-id, local-hostname) and `network-config` (version 2), generated from a
//! VM's settings and attached as an extra virtio-blk disk to images that contain cloud-init.
//!
//! cloud-init finds the seed by its label (its `ds-identify` generator runs `blkid`), so the disk
//! order does not matter. The agent stays the fast path: readiness never waits for cloud-init,
//! which takes seconds of Python under TCG.

use std::path::Path;
use std::process::Command;

use crate::disk::{self, DiskError};
use crate::{deps, Progress};

/// Debian package providing the ISO writer.
pub const PACKAGES: &[&str] = &["genisoimage"];

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Deps(#[from] deps::DepsError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("user-data {path}: {problem}")]
    UserData { path: String, problem: String },
}

/// One network interface as the VM's settings describe it.
#[derive(Debug, Clone, Default)]
pub struct Nic {
    /// Guest interface name (eth0 ...).
    pub name: String,
    pub mac: Option<String>,
    /// CIDR addresses; none means DHCP.
    pub addresses: Vec<String>,
    pub gateway4: Option<String>,
    pub nameservers: Vec<String>,
}

/// What the seed says.
#[derive(Debug, Clone, Default)]
pub struct SeedSpec {
    pub instance_id: String,
    pub hostname: String,
    /// Full user-data (a `#cloud-config` document or a script); default: a minimal cloud-config.
    pub user_data: Option<String>,
    pub nics: Vec<Nic>,
}

impl SeedSpec {
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_str(&self.instance_id),
            yaml_str(&self.hostname)
        )
    }

    pub fn user_data(&self) -> String {
        self.user_data.clone().unwrap_or_else(|| {
            format!(
                "#cloud-config\nhostname: {}\npreserve_hostname: false\n",
                yaml_str(&self.hostname)
            )
        })
    }

    /// Network config version 2. Without NICs it configures nothing (the agent owns networking).
    pub fn network_config(&self) -> String {
        if self.nics.is_empty() {
            return "version: 2\nethernets: {}\n".into();
        }
        let mut s = String::from("version: 2\nethernets:\n");
        for n in &self.nics {
            s += &format!("  {}:\n", yaml_str(&n.name));
            if let Some(m) = &n.mac {
                s += &format!("    match:\n      macaddress: {}\n", yaml_str(m));
                s += &format!("    set-name: {}\n", yaml_str(&n.name));
            }
            if n.addresses.is_empty() {
                s += "    dhcp4: true\n";
            } else {
                s += "    addresses:\n";
                for a in &n.addresses {
                    s += &format!("      - {}\n", yaml_str(a));
                }
            }
            if let Some(g) = &n.gateway4 {
                s += &format!("    gateway4: {}\n", yaml_str(g));
            }
            if !n.nameservers.is_empty() {
                s += "    nameservers:\n      addresses:\n";
                for ns in &n.nameservers {
                    s += &format!("        - {}\n", yaml_str(ns));
                }
            }
        }
        s
    }
}

/// A YAML scalar, quoted (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Read a user-data file, checking it is something cloud-init understands.
pub fn read_user_data(path: &Path) -> Result<String, SeedError> {
    let bad = |problem: String| SeedError::UserData {
        path: path.display().to_string(),
        problem,
    };
    let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(data).map_err(|_| bad("not UTF-8 text".into()))?;
    let first = text.lines().next().unwrap_or("");
    if !(first.starts_with("#cloud-config")
        || first.starts_with("#!")
        || first.starts_with("#include"))
    {
        return Err(bad(
            "must start with '#cloud-config' (or '#!' for a script)".into(),
        ));
    }
    Ok(text)
}

/// Write the seed ISO at `out`.
pub fn write_seed(spec: &SeedSpec, out: &Path, progress: &dyn Progress) -> Result<(), SeedError> {
    deps::ensure(PACKAGES, progress)?;
    let dir = tempfile_dir(out)?;
    let r = (|| {
        for (f, c) in [
            ("meta-data", spec.meta_data()),
            ("user-data", spec.user_data()),
            ("network-config", spec.network_config()),
        ] {
            std::fs::write(dir.join(f), c).map_err(disk::io(format!("write seed {f}")))?;
        }
        disk::run(
            Command::new("genisoimage")
                .args(["-quiet", "-output"])
                .arg(out)
                .args(["-volid", "cidata", "-joliet", "-rock"])
                .arg(dir.join("user-data"))
                .arg(dir.join("meta-data"))
                .arg(dir.join("network-config")),
            "genisoimage",
        )
        .map(|_| ())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    Ok(r?)
}

fn tempfile_dir(out: &Path) -> Result<std::path::PathBuf, DiskError> {
    let d = out.with_extension(format!("d{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(disk::io(format!("create {}", d.display())))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let s = SeedSpec {
            instance_id: "kobako-web-1".into(),
            hostname: "web".into(),
            user_data: None,
            nics: vec![Nic {
                name: "eth0".into(),
                mac: Some("52:54:00:00:00:01".into()),
                addresses: vec!["10.0.0.2/24".into()],
                gateway4: Some("10.0.0.1".into()),
                nameservers: vec![],
            }],
        };
        assert_eq!(
            s.meta_data(),
            "instance-id: \"kobako-web-1\"\nlocal-hostname: \"web\"\n"
        );
        assert!(s.user_data().starts_with("#cloud-config\n"));
        let n = s.network_config();
        assert!(n.contains("macaddress: \"52:54:00:00:00:01\""), "{n}");
        assert!(n.contains("- \"10.0.0.2/24\""), "{n}");
        let empty = SeedSpec::default().network_config();
        assert_eq!(empty, "version: 2\nethernets: {}\n");
    }

    #[test]
    fn user_data_must_be_cloud_config() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ud");
        std::fs::write(&p, "hello").unwrap();
        assert!(read_user_data(&p)
            .unwrap_err()
            .to_string()
            .contains("#cloud-config"));
        std::fs::write(&p, "#cloud-config\nruncmd: [true]\n").unwrap();
        assert!(read_user_data(&p).is_ok());
    }

    #[test]
    fn seed_iso_has_the_label() {
        if !Path::new("/usr/bin/genisoimage").exists() {
            eprintln!("skipped: genisoimage not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("seed.iso");
        let spec = SeedSpec {
            instance_id: "i".into(),
            hostname: "h".into(),
            ..Default::default()
        };
        write_seed(&spec, &out, &crate::StderrProgress).unwrap();
        let data = std::fs::read(&out).unwrap();
        // Primary volume descriptor at sector 16: volume id at offset 40.
        let vd = &data[16 * 2048..17 * 2048];
        assert_eq!(&vd[1..6], b"CD001");
        assert!(vd[40..72].starts_with(b"cidata"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
