//! Named image recipes: images kobako knows how to build by name, so a lab file that says
//! `image: debian-web` works on a machine where nobody built it yet.
//!
//! A recipe is a Debian build ([`crate::debian`]) with fixed packages, extra apt sources and
//! masked units. [`ensure`] builds a recipe's image once into the store and rebuilds it only when
//! it is outdated: the manifest records the recipe's [`Recipe::digest`] (suite, mirror, sources,
//! packages, masked units, Debian recipe version, kobako's AppArmor profiles and the kernel
//! features they are compiled for) and the agent's SHA-256; a change of either
//! makes the next [`ensure`] rebuild it, unless a VM still uses the old one (then the old one
//! is used, with a warning). An image of the same name built by hand (no recipe digest in its
//! manifest) is never replaced.

use std::path::Path;

use crate::debian::{self, DebianError, DebianOptions};
use crate::store::{Image, Store, StoreError};
use crate::{cache, disk, Progress};

/// bookworm-backports, for packages bookworm's main suite does not have (suricata).
pub const BOOKWORM_BACKPORTS: &str = "deb http://deb.debian.org/debian bookworm-backports main";

/// A named image recipe.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    pub name: &'static str,
    /// One line for `kobako image build --help` and error messages.
    pub description: &'static str,
    pub suite: &'static str,
    /// The distribution's archive.
    pub distro: Distro,
    /// Packages on top of the Debian base ([`debian::BASE_PACKAGES`]); `pkg/suite` takes a
    /// package from one of `sources`.
    pub packages: &'static [&'static str],
    /// Extra sources.list lines.
    pub sources: &'static [&'static str],
    /// Units the packages enable that lab VMs start themselves (as `run` services, with the
    /// lab's configuration) or not at all (e2scrub_reap: a boot-time LVM snapshot sweep that
    /// takes seconds of a TCG guest's CPU right when its services start).
    pub mask: &'static [&'static str],
    /// Files written into the image after the packages (absolute path, content).
    pub files: &'static [(&'static str, &'static str)],
}

/// debian-frr's `/etc/frr/daemons`: the routing daemons people configure in labs are on
/// (zebra and staticd always run); the options are Debian's defaults.
const FRR_DAEMONS: &str =
    "# kobako debian-frr: daemons started by frr.service (edit, then `systemctl restart frr`)
bgpd=yes
ospfd=yes
ospf6d=yes
ripd=no
ripngd=no
isisd=yes
pimd=no
pim6d=no
ldpd=no
nhrpd=no
eigrpd=no
babeld=no
sharpd=no
pbrd=no
bfdd=yes
fabricd=no
vrrpd=no
pathd=no
vtysh_enable=yes
zebra_options=\"  -A 127.0.0.1 -s 90000000\"
bgpd_options=\"   -A 127.0.0.1\"
ospfd_options=\"  -A 127.0.0.1\"
ospf6d_options=\" -A ::1\"
isisd_options=\"  -A 127.0.0.1\"
bfdd_options=\"   -A 127.0.0.1\"
staticd_options=\"-A 127.0.0.1\"
";

/// debian-frr: frr.service applies /etc/frr/frr.conf once more when every daemon is up.
/// frrinit.sh runs `vtysh -b` right after launching the daemons; on a slow or loaded host (TCG
/// beside other work) they do not listen yet, vtysh says "failed to connect to any daemons" and
/// FRR runs without its configuration (seen here: a fabric whose BGP never came up).
const FRR_LOAD_DROPIN: &str =
    "# kobako debian-frr: load /etc/frr/frr.conf once every daemon answers (see frr-load-config)
[Service]
ExecStartPost=-/bin/sh /usr/lib/kobako/frr-load-config
TimeoutStartSec=5min
";

const FRR_LOAD_SCRIPT: &str = r#"#!/bin/sh
# kobako debian-frr: wait until watchfrr reports every daemon up, then apply frr.conf (what
# frrinit.sh's own `vtysh -b` does, but after the daemons listen).
[ -s /etc/frr/frr.conf ] || exit 0
up() {
  s=$(vtysh -c 'show watchfrr' 2>/dev/null) || return 1
  all=$(echo "$s" | grep -cE '^  [a-z0-9]+ +[A-Za-z]')
  ok=$(echo "$s" | grep -cE '^  [a-z0-9]+ +Up$')
  [ "$all" -gt 0 ] && [ "$all" = "$ok" ]
}
i=0
while [ $i -lt 480 ] && ! up; do sleep 0.5; i=$((i + 1)); done
exec vtysh -b
"#;

/// debian-frr forwards: it is a router.
const FRR_SYSCTL: &str = "# kobako debian-frr: a router forwards
net.ipv4.ip_forward=1
net.ipv6.conf.all.forwarding=1
net.ipv4.conf.all.rp_filter=0
net.ipv4.conf.default.rp_filter=0
";

/// Where a recipe's packages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    /// deb.debian.org, Debian's keyring.
    Debian,
    /// archive.ubuntu.com, Ubuntu's keyring (host package `ubuntu-keyring`).
    Ubuntu,
}

impl Distro {
    fn mirror(self) -> &'static str {
        match self {
            Distro::Debian => "http://deb.debian.org/debian",
            Distro::Ubuntu => "http://archive.ubuntu.com/ubuntu",
        }
    }

    fn keyring(self) -> Option<(String, String)> {
        match self {
            Distro::Debian => None,
            Distro::Ubuntu => Some((
                "/usr/share/keyrings/ubuntu-archive-keyring.gpg".into(),
                "ubuntu-keyring".into(),
            )),
        }
    }
}

/// The recipes kobako ships: the images of the node templates (`crates/lab/templates`).
pub const RECIPES: &[Recipe] = &[
    Recipe {
        name: "debian-web",
        description: "web-stack template: python3 + redis (API), redis-server (cache), rsyslog (logger)",
        suite: "bookworm",
        distro: Distro::Debian,
        packages: &[
            "python3",
            "python3-redis",
            "redis-server",
            "rsyslog",
            "curl",
            "iputils-ping",
        ],
        sources: &[],
        mask: &[
            "redis-server.service",
            "rsyslog.service",
            "logrotate.timer",
            "e2scrub_reap.service",
        ],
        files: &[],
    },
    Recipe {
        name: "debian-router",
        description: "router-vpn-ids template: iproute2/tc, nftables, wireguard-tools, suricata (bookworm-backports), tcpdump",
        suite: "bookworm",
        distro: Distro::Debian,
        packages: &[
            "nftables",
            "wireguard-tools",
            // apt takes a `/suite` package's dependencies from the default suite: the one
            // suricata 7 needs newer than bookworm's is named too.
            "suricata/bookworm-backports",
            "libhtp2/bookworm-backports",
            "tcpdump",
            "iputils-ping",
            "curl",
        ],
        sources: &[BOOKWORM_BACKPORTS],
        mask: &["suricata.service", "nftables.service", "e2scrub_reap.service"],
        files: &[],
    },
    Recipe {
        name: "debian-frr",
        description: "FRR router (containerlab's frrouting/frr): bgpd, ospfd, ospf6d, isisd, bfdd running at boot, vtysh, forwarding on, tcpdump, traceroute",
        suite: "bookworm",
        distro: Distro::Debian,
        packages: &[
            "frr",
            "frr-pythontools",
            "iproute2",
            "tcpdump",
            "traceroute",
            "iputils-ping",
        ],
        sources: &[],
        mask: &["e2scrub_reap.service"],
        files: &[
            ("/etc/frr/daemons", FRR_DAEMONS),
            ("/etc/sysctl.d/90-kobako-router.conf", FRR_SYSCTL),
            ("/etc/systemd/system/frr.service.d/kobako-load-config.conf", FRR_LOAD_DROPIN),
            ("/usr/lib/kobako/frr-load-config", FRR_LOAD_SCRIPT),
        ],
    },
    Recipe {
        name: "ubuntu",
        description: "Ubuntu 24.04 (noble, main) minbase + systemd + kobako-agent, iproute2, ping, tracepath, curl, tcpdump",
        suite: "noble",
        distro: Distro::Ubuntu,
        packages: &["iputils-ping", "iputils-tracepath", "curl", "tcpdump", "ca-certificates"],
        sources: &[],
        mask: &["e2scrub_reap.service"],
        files: &[],
    },
];

/// The recipe named `name`.
pub fn find(name: &str) -> Option<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name)
}

/// Names of all recipes, comma-separated (for messages).
pub fn names() -> String {
    RECIPES
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Recipe {
    /// The Debian build this recipe stands for.
    pub fn options(&self) -> DebianOptions {
        let mut o = DebianOptions::new(self.name);
        o.suite = self.suite.to_string();
        o.mirror = self.distro.mirror().to_string();
        o.keyring = self.distro.keyring();
        o.packages = self.packages.iter().map(|s| s.to_string()).collect();
        o.sources = self.sources.iter().map(|s| s.to_string()).collect();
        o.mask = self.mask.iter().map(|s| s.to_string()).collect();
        o.files = self
            .files
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect();
        o.recipe = Some((self.name.to_string(), self.digest()));
        o
    }

    /// What the built image depends on, hashed: a change means a rebuild.
    pub fn digest(&self) -> String {
        let recipe = debian::RECIPE.to_le_bytes();
        let mut parts: Vec<&[u8]> = vec![
            &recipe,
            self.suite.as_bytes(),
            self.distro.mirror().as_bytes(),
        ];
        let lists = [self.packages, self.sources, self.mask]
            .map(|l| l.join("\n"))
            .map(String::into_bytes);
        parts.extend(lists.iter().map(|l| l.as_slice()));
        for (path, content) in self.files {
            parts.extend([path.as_bytes(), content.as_bytes()]);
        }
        // What the recipe writes into the tree besides packages: a changed profile rebuilds.
        parts.extend(
            debian::APPARMOR_PROFILES
                .iter()
                .map(|(_, _, t)| t.as_bytes()),
        );
        parts.push(debian::APPARMOR_KERNEL_FEATURES.as_bytes());
        crate::sha256_hex(&parts)[..16].to_string()
    }

    /// Why `img` (of this recipe's name) is not what this recipe and `agent_sha256` would
    /// build; `None` when it is current. Images built by hand are always "current".
    pub fn outdated(&self, img: &Image, agent_sha256: &str) -> Option<String> {
        let m = &img.manifest;
        let digest = m.recipe_digest.as_ref()?;
        if m.recipe != Some(debian::RECIPE) {
            return Some(format!(
                "built by Debian recipe version {}, this kobako has {}",
                m.recipe.map(|r| r.to_string()).unwrap_or("?".into()),
                debian::RECIPE
            ));
        }
        if *digest != self.digest() {
            return Some("its recipe changed (packages, sources or masked units)".into());
        }
        if m.agent_sha256.as_deref() != Some(agent_sha256) {
            return Some("it holds another kobako-agent than this kobako".into());
        }
        None
    }
}

/// The image of recipe `r` in `store`, built first when missing or outdated. `in_use` names the
/// VMs whose disks use an image (an outdated image in use is kept and used, with a warning).
/// Concurrent callers for the same recipe wait for one build.
pub fn ensure(
    store: &Store,
    r: &Recipe,
    agent: &Path,
    in_use: &dyn Fn(&Image) -> Vec<String>,
    progress: &dyn Progress,
) -> Result<Image, DebianError> {
    let agent_sha = disk::sha256_file(agent)?;
    let _lock = cache::lock(&store.root.join(format!(".recipe-{}.lock", r.name)))
        .map_err(disk::io(format!("lock the recipe of {}", r.name)))?;
    match store.get(r.name) {
        Ok(img) => {
            let Some(why) = r.outdated(&img, &agent_sha) else {
                return Ok(img);
            };
            let users = in_use(&img);
            if !users.is_empty() {
                progress.step(&format!(
                    "kobako: warning: image '{}' is outdated ({why}) but VMs use it ({}): using it as it is",
                    r.name,
                    users.join(", ")
                ));
                return Ok(img);
            }
            progress.step(&format!(
                "kobako: image '{}' is outdated ({why}): rebuilding it from its recipe",
                r.name
            ));
            store.remove(r.name, &[])?;
        }
        Err(StoreError::NotFound { .. }) => progress.step(&format!(
            "kobako: image '{}' is not built yet: building it once from its recipe ({}; a few minutes, cached in {})",
            r.name,
            r.description,
            store.root.display()
        )),
        Err(e) => return Err(e.into()),
    }
    debian::build(store, &r.options(), agent, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ImageKind, Manifest};

    fn image(digest: Option<String>, agent: &str) -> Image {
        Image {
            dir: "/nonexistent".into(),
            manifest: Manifest {
                name: "debian-web".into(),
                kind: ImageKind::Debian,
                base: "base.qcow2".into(),
                format: "qcow2".into(),
                size: 0,
                virtual_size: 0,
                created: String::new(),
                packages: Vec::new(),
                source: String::new(),
                sha256: String::new(),
                cloud_init: false,
                build_secs: None,
                init: None,
                agent_sha256: Some(agent.into()),
                recipe: Some(debian::RECIPE),
                recipe_digest: digest,
            },
        }
    }

    #[test]
    fn recipes_are_valid_debian_builds() {
        for r in RECIPES {
            let o = r.options();
            o.all_packages()
                .unwrap_or_else(|e| panic!("{}: {e}", r.name));
            o.check_sources_and_units()
                .unwrap_or_else(|e| panic!("{}: {e}", r.name));
            // Packages from another suite need that suite as a source.
            for p in r.packages {
                if let Some((_, suite)) = p.split_once('/') {
                    assert!(
                        r.sources
                            .iter()
                            .any(|s| s.split_whitespace().nth(2) == Some(suite)),
                        "{}: {p} needs a source for {suite}",
                        r.name
                    );
                }
            }
        }
        assert!(find("debian-router").is_some() && find("nope").is_none());
        assert_eq!(names(), "debian-web, debian-router, debian-frr, ubuntu");
        // debian-frr's daemons are on in the image, and a file path must be absolute.
        let frr = find("debian-frr").unwrap().options();
        assert!(frr
            .files
            .iter()
            .any(|(p, c)| p == "/etc/frr/daemons" && c.contains("bgpd=yes")));
        for bad in ["etc/x", "/etc/../x", "/etc/"] {
            let mut o = frr.clone();
            o.files = vec![(bad.into(), String::new())];
            assert!(o.check_sources_and_units().is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_follows_the_recipe() {
        let r = *find("debian-web").unwrap();
        let mut changed = r;
        changed.packages = &["python3"];
        assert_ne!(r.digest(), changed.digest());
        assert_eq!(r.digest(), find("debian-web").unwrap().digest());
        assert_ne!(r.digest(), find("debian-router").unwrap().digest());
    }

    #[test]
    fn outdated_says_why() {
        let r = find("debian-web").unwrap();
        assert_eq!(r.outdated(&image(Some(r.digest()), "a1"), "a1"), None);
        assert!(r
            .outdated(&image(Some(r.digest()), "a1"), "b2")
            .unwrap()
            .contains("kobako-agent"));
        assert!(r
            .outdated(&image(Some("0".into()), "a1"), "a1")
            .unwrap()
            .contains("recipe changed"));
        let mut old = image(Some(r.digest()), "a1");
        old.manifest.recipe = Some(debian::RECIPE - 1);
        assert!(r.outdated(&old, "a1").unwrap().contains("recipe version"));
        // Built by hand under the recipe's name: never replaced.
        assert_eq!(r.outdated(&image(None, "a1"), "zz"), None);
    }
}
