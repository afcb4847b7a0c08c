//! Readiness: after a VM is configured, `up` runs its `ready:` checks in the guest (through
//! the agent) until all pass or its `ready_timeout` runs out. Checks pass in file order: each
//! is retried until it passes, then the next one starts, so a check may rely on the ones
//! before it (the port answers, then the health URL).
//!
//! `tcp`/`http` are run by the agent itself ([`kobako_agent::probe`]); `exec` is
//! `/bin/sh -c COMMAND` through the agent's exec, passing on exit 0.

use std::time::{Duration, Instant};

use kobako_agent::proto::{ExecRequest, Probe, ProbeCheck};
use kobako_runtime::agent::AgentClient;

use crate::spec::{ReadyCheck, Vm};

/// Pause between two tries of a check that did not pass.
const RETRY: Duration = Duration::from_millis(250);

/// Longest one try of a check may take (the agent caps probes at 10 s too).
const ONE_TRY: Duration = Duration::from_secs(10);

/// Most bytes of an `exec` check's output kept to explain a failure.
const MAX_DETAIL: usize = 300;

/// A VM whose readiness checks did not all pass in time.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// `check` never passed within the VM's `ready_timeout`.
    #[error(
        "not ready: check `{check}` did not pass within {}s (last try: {last}); the VM keeps \
         running so you can look (`kobako exec {vm} -- sh`; services log to /var/log/kobako/ in \
         the guest): fix the service or its check, or raise `ready_timeout`",
        .timeout.as_secs_f64()
    )]
    TimedOut {
        vm: String,
        check: String,
        timeout: Duration,
        last: String,
    },
    /// The agent could not run the check at all (an old agent, the VM went away).
    #[error("not ready: check `{check}` could not run: {err}")]
    Agent {
        check: String,
        err: kobako_runtime::RuntimeError,
    },
}

/// Runs `vm`'s checks (runtime name `name`) until all pass; how long they took.
/// `on_check` hears each check as it starts (for the VM's stored state).
pub(crate) async fn wait_ready(
    client: &AgentClient,
    vm: &Vm,
    name: &str,
    on_check: impl Fn(&ReadyCheck),
) -> Result<Duration, ReadyError> {
    let t0 = Instant::now();
    let timeout = Duration::from_millis(vm.ready_timeout_ms);
    let deadline = t0 + timeout;
    for check in &vm.ready {
        on_check(check);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (ok, detail) = try_once(
                client,
                check,
                left.clamp(Duration::from_millis(100), ONE_TRY),
            )
            .await
            .map_err(|err| ReadyError::Agent {
                check: check.to_string(),
                err,
            })?;
            if ok {
                break;
            }
            if Instant::now() + RETRY >= deadline {
                return Err(ReadyError::TimedOut {
                    vm: name.to_string(),
                    check: check.to_string(),
                    timeout,
                    last: detail,
                });
            }
            tokio::time::sleep(RETRY).await;
        }
    }
    Ok(t0.elapsed())
}

/// One try of `check`, bounded by `limit`: whether it passed and what was seen.
async fn try_once(
    client: &AgentClient,
    check: &ReadyCheck,
    limit: Duration,
) -> kobako_runtime::Result<(bool, String)> {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    let probe = |check| Probe {
        check,
        timeout_ms: ms,
    };
    match check {
        ReadyCheck::Tcp(port) => client.probe(probe(ProbeCheck::Tcp(*port))).await,
        ReadyCheck::Http(url) => client.probe(probe(ProbeCheck::Http(url.clone()))).await,
        ReadyCheck::Exec(cmd) => {
            let out = client
                .exec(ExecRequest {
                    argv: vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
                    env: Vec::new(),
                    cwd: None,
                    timeout_ms: Some(ms),
                    stdin: false,
                    tty: None,
                    user: None,
                })
                .await?;
            let ok = out.code == Some(0);
            Ok((ok, exec_detail(&out)))
        }
    }
}

/// What an `exec` check's try showed: its exit and the end of its output.
fn exec_detail(out: &kobako_runtime::agent::ExecOutput) -> String {
    let how = match (out.code, out.signal, out.timed_out) {
        (_, _, true) => "timed out".to_string(),
        (Some(c), _, _) => format!("exit {c}"),
        (None, Some(s), _) => format!("killed by signal {s}"),
        (None, None, _) => "no exit status".to_string(),
    };
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    if text.len() > MAX_DETAIL {
        let mut cut = text.len() - MAX_DETAIL;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = format!("…{}", &text[cut..]);
    }
    if text.is_empty() {
        how
    } else {
        format!("{how}: {}", text.replace('\n', " / "))
    }
}
