//! `ready:` and `ready_timeout:` of a VM (its own, else `defaults:`): the readiness checks
//! `up` runs in the guest, each checked where it was written.

use super::merge::MergedVm;
use super::{spec_path, Located, Origin, Resolver};
use crate::spec::model::*;
use crate::spec::raw::RawReadyCheck;
use crate::spec::units::Micros;

impl Resolver<'_> {
    /// The VM's readiness checks and how long `up` waits for them (milliseconds).
    pub(super) fn vm_ready(&mut self, m: &MergedVm) -> (Vec<ReadyCheck>, u64) {
        let d = self.raw.defaults.clone().unwrap_or_default();
        let checks = match (&m.ready, d.ready) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(v)) => Some(Located {
                value: v,
                at: self.lab_at(spec_path("defaults.ready")),
            }),
            (None, None) => None,
        };
        let timeout = match (&m.ready_timeout, d.ready_timeout) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(v)) => Some(Located {
                value: v,
                at: self.lab_at(spec_path("defaults.ready_timeout")),
            }),
            (None, None) => None,
        };
        let mut out = Vec::new();
        if let Some(list) = &checks {
            if list.value.len() > MAX_READY_CHECKS {
                self.err(
                    &list.at,
                    format!(
                        "{} readiness checks: a VM may have at most {MAX_READY_CHECKS}",
                        list.value.len()
                    ),
                    "check what tells the VM is usable (one port or command per service)"
                        .to_string(),
                );
            }
            for (i, c) in list.value.iter().enumerate() {
                let at = Origin {
                    src: list.at.src,
                    path: list.at.path.index(i),
                };
                if let Some(c) = self.ready_check(c, &at) {
                    out.push(c);
                }
            }
        }
        let timeout_ms = match &timeout {
            None => DEFAULT_READY_TIMEOUT_MS,
            Some(t) => self.ready_timeout(t.value, &t.at),
        };
        (out, timeout_ms)
    }

    fn ready_timeout(&mut self, t: Micros, at: &Origin) -> u64 {
        let ms = t.0 / 1000;
        if ms == 0 || ms > MAX_READY_TIMEOUT_MS {
            self.err(
                at,
                format!("ready_timeout {t} is not between 1ms and 1h"),
                "write a duration like 60s or 300s".to_string(),
            );
            return DEFAULT_READY_TIMEOUT_MS;
        }
        ms
    }

    /// One `{tcp|http|exec: ...}` entry (written at `at`).
    fn ready_check(&mut self, c: &RawReadyCheck, at: &Origin) -> Option<ReadyCheck> {
        let given = [c.tcp.is_some(), c.http.is_some(), c.exec.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if given != 1 {
            self.err(
                at,
                if given == 0 {
                    "a readiness check needs one of tcp, http, exec".to_string()
                } else {
                    "a readiness check has more than one of tcp, http, exec".to_string()
                },
                "write one check per entry: `{tcp: 6379}`, `{http: \"http://localhost:8080/health\"}` or `{exec: \"redis-cli ping\"}`"
                    .to_string(),
            );
            return None;
        }
        let key = |k: &str| Origin {
            src: at.src,
            path: at.path.key(k),
        };
        if let Some(p) = c.tcp {
            return match u16::try_from(p) {
                Ok(p) if p > 0 => Some(ReadyCheck::Tcp(p)),
                _ => {
                    self.err(
                        &key("tcp"),
                        format!("port {p} is not 1..65535"),
                        "write the TCP port the service listens on, e.g. `tcp: 6379`".to_string(),
                    );
                    None
                }
            };
        }
        if let Some(u) = &c.http {
            let at = key("http");
            if u.len() > MAX_READY_TEXT {
                self.err(
                    &at,
                    format!("URL of {} bytes: at most {MAX_READY_TEXT}", u.len()),
                    None,
                );
                return None;
            }
            return match kobako_agent::probe::parse_http_url(u) {
                Err(why) => {
                    self.err(
                        &at,
                        format!("'{u}': {why}"),
                        "write an http:// URL on the guest itself, e.g. http://localhost:8080/health"
                            .to_string(),
                    );
                    None
                }
                Ok(p) if !kobako_agent::probe::is_local_host(&p.host) => {
                    self.err(
                        &at,
                        format!("'{u}' is not on the guest itself (host '{}')", p.host),
                        "checks run inside the VM: use localhost, 127.0.0.1 or [::1]".to_string(),
                    );
                    None
                }
                Ok(_) => Some(ReadyCheck::Http(u.clone())),
            };
        }
        let cmd = c.exec.clone().unwrap_or_default();
        let at = key("exec");
        if cmd.trim().is_empty() {
            self.err(
                &at,
                "empty command".into(),
                "write a command that exits 0 when the VM is ready, e.g. `redis-cli ping`"
                    .to_string(),
            );
            return None;
        }
        if cmd.len() > MAX_READY_TEXT {
            self.err(
                &at,
                format!("command of {} bytes: at most {MAX_READY_TEXT}", cmd.len()),
                "put a longer check in a script (`files:`) and run that".to_string(),
            );
            return None;
        }
        Some(ReadyCheck::Exec(cmd))
    }
}
