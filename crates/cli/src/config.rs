//! The process's configuration from its environment: the one place that reads the `KOBAKO_*`
//! variables the libraries act on, once at start, and hands each value to the library that owns
//! it (the libraries read no environment).
//!
//! | variable                | library setting                           | unset             |
//! |-------------------------|-------------------------------------------|-------------------|
//! | `KOBAKO_STATE`          | [`kobako_state::set_state_root`]          | /var/lib/kobako   |
//! | `KOBAKO_RUN`            | [`kobako_runtime::vmdir::set_run_root`]   | /run/kobako       |
//! | `KOBAKO_CACHE`          | [`kobako_image::cache::set_root`] (warm snapshots: `warm` under it) | /var/cache/kobako |
//! | `KOBAKO_IMAGES`         | [`kobako_image::store::set_root`]         | /var/lib/kobako/images |
//! | `KOBAKO_AGENT`          | [`kobako_image::tiny::set_agent`]         | searched          |
//! | `KOBAKO_NET_USERSPACE`  | [`kobako_net::lab::set_userspace`] (set and not `0`) | off    |
//!
//! How lab VMs boot is a value, [`BootSettings`], kept here for the commands that start labs,
//! scenarios and functions to pass down ([`boot_settings`]):
//!
//! | variable                | `BootSettings` field                      | unset             |
//! |-------------------------|-------------------------------------------|-------------------|
//! | `KOBAKO_ACCEL`          | `accel` (auto, kvm, tcg; `vm run --accel` reads it too) | auto |
//! | `KOBAKO_WARM`           | `warm` (`0`: off; `up --cold` too)        | on                |
//! | `KOBAKO_BALLOON`        | `free_page_reporting` (`0`: off)          | on                |

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use kobako_lab::controller::BootSettings;

/// The library settings the environment gives: `None` leaves a library's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub state: Option<PathBuf>,
    pub run: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    pub images: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    pub net_userspace: bool,
    pub warm: bool,
    pub balloon: bool,
    /// `KOBAKO_ACCEL` as given (checked when a command boots something).
    pub accel: Option<String>,
}

/// How lab VMs boot in this process, from the environment read at start ([`Config::apply`]).
static BOOT: OnceLock<Result<BootSettings, kobako_boot::UnknownAccel>> = OnceLock::new();

/// The boot settings of this process (defaults when [`Config::apply`] did not run), or why the
/// environment gives none (`KOBAKO_ACCEL` is not a known accelerator).
pub fn boot_settings() -> anyhow::Result<BootSettings> {
    BOOT.get_or_init(|| Ok(BootSettings::default()))
        .clone()
        .map_err(|e| anyhow::anyhow!("KOBAKO_ACCEL={e}"))
}

impl Config {
    /// Reads the process's environment.
    pub fn from_env() -> Config {
        Config::from_vars(|name| std::env::var_os(name))
    }

    /// Builds the configuration from a variable lookup (the environment, or a test's table).
    fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Config {
        let path = |name: &str| var(name).map(PathBuf::from);
        Config {
            state: path("KOBAKO_STATE"),
            run: path("KOBAKO_RUN"),
            cache: path("KOBAKO_CACHE"),
            images: path("KOBAKO_IMAGES"),
            agent: path("KOBAKO_AGENT"),
            net_userspace: var("KOBAKO_NET_USERSPACE").is_some_and(|v| v != "0"),
            warm: var("KOBAKO_WARM").is_none_or(|v| v != "0"),
            balloon: var("KOBAKO_BALLOON").is_none_or(|v| v != "0"),
            accel: var("KOBAKO_ACCEL").map(|v| v.to_string_lossy().into_owned()),
        }
    }

    /// The boot settings these variables give.
    pub fn boot(&self) -> Result<BootSettings, kobako_boot::UnknownAccel> {
        let accel = match &self.accel {
            Some(a) => a.parse()?,
            None => kobako_boot::AccelMode::Auto,
        };
        Ok(BootSettings {
            accel,
            warm: self.warm,
            free_page_reporting: self.balloon,
        })
    }

    /// Hands each setting to its library. Called once, first thing in `main`.
    pub fn apply(self) {
        let _ = BOOT.set(self.boot());
        if let Some(p) = self.state {
            kobako_state::set_state_root(p);
        }
        if let Some(p) = self.run {
            kobako_runtime::vmdir::set_run_root(p);
        }
        if let Some(p) = self.cache {
            kobako_image::cache::set_root(p);
        }
        if let Some(p) = self.images {
            kobako_image::store::set_root(p);
        }
        if let Some(p) = self.agent {
            kobako_image::tiny::set_agent(p);
        }
        kobako_net::lab::set_userspace(self.net_userspace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(vars: &[(&str, &str)]) -> Config {
        Config::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn unset_leaves_the_defaults() {
        assert_eq!(
            of(&[]),
            Config {
                warm: true,
                balloon: true,
                ..Config::default()
            }
        );
    }

    #[test]
    fn each_variable_lands_in_its_setting() {
        let c = of(&[
            ("KOBAKO_STATE", "/s"),
            ("KOBAKO_RUN", "/r"),
            ("KOBAKO_CACHE", "/c"),
            ("KOBAKO_IMAGES", "/i"),
            ("KOBAKO_AGENT", "/a"),
            ("KOBAKO_NET_USERSPACE", "1"),
            ("KOBAKO_WARM", "0"),
        ]);
        assert_eq!(c.state.as_deref(), Some(std::path::Path::new("/s")));
        assert_eq!(c.run.as_deref(), Some(std::path::Path::new("/r")));
        assert_eq!(c.cache.as_deref(), Some(std::path::Path::new("/c")));
        assert_eq!(c.images.as_deref(), Some(std::path::Path::new("/i")));
        assert_eq!(c.agent.as_deref(), Some(std::path::Path::new("/a")));
        assert!(c.net_userspace);
        assert!(!c.warm);
    }

    #[test]
    fn zero_and_other_values_of_the_flags() {
        assert!(!of(&[("KOBAKO_NET_USERSPACE", "0")]).net_userspace);
        assert!(of(&[("KOBAKO_NET_USERSPACE", "")]).net_userspace);
        assert!(of(&[("KOBAKO_WARM", "1")]).warm);
        assert!(of(&[("KOBAKO_WARM", "")]).warm);
    }

    #[test]
    fn boot_settings_from_the_variables() {
        let b = of(&[("KOBAKO_ACCEL", "tcg"), ("KOBAKO_BALLOON", "0")])
            .boot()
            .unwrap();
        assert_eq!(b.accel, kobako_boot::AccelMode::Tcg);
        assert!(b.warm && !b.free_page_reporting);
        assert_eq!(of(&[]).boot().unwrap(), BootSettings::default());
        let e = of(&[("KOBAKO_ACCEL", "hvf")]).boot().unwrap_err();
        assert_eq!(e, kobako_boot::UnknownAccel("hvf".into()));
        assert_eq!(e.to_string(), "'hvf': use auto, kvm or tcg");
    }

    #[test]
    fn an_empty_path_is_still_set() {
        // As before: a variable that is present names the path, even when empty.
        assert_eq!(of(&[("KOBAKO_STATE", "")]).state, Some(PathBuf::from("")));
    }
}
