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
//! | `KOBAKO_WARM`           | [`kobako_lab::controller::warm::set_enabled`] (`0`: off) | on |
//! | `KOBAKO_BALLOON`        | [`kobako_lab::controller::set_free_page_reporting`] (`0`: off) | on |

use std::ffi::OsString;
use std::path::PathBuf;

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
        }
    }

    /// Hands each setting to its library. Called once, first thing in `main`.
    pub fn apply(self) {
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
        kobako_lab::controller::warm::set_enabled(self.warm);
        kobako_lab::controller::set_free_page_reporting(self.balloon);
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
    fn an_empty_path_is_still_set() {
        // As before: a variable that is present names the path, even when empty.
        assert_eq!(of(&[("KOBAKO_STATE", "")]).state, Some(PathBuf::from("")));
    }
}
