//! Starting many VMs at once (a node, a lab): create all, start them with bounded parallelism,
//! wait for every agent, and report per-VM results. A failure of one VM does not stop the others;
//! the caller decides what to do with a partial result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kobako_agent::proto::ReadyInfo;

use crate::agent::AgentClient;
use crate::{Result, Runtime, VmConfig, VmDir};

/// One started VM.
pub struct Started {
    pub vm: VmDir,
    pub client: AgentClient,
    pub info: ReadyInfo,
    /// From the start of `start_all` to this VM's Ready.
    pub ready_after: Duration,
}

/// How many VM processes to launch at the same moment. Launching is cheap next to booting, so
/// this bounds only the burst of process creation; boots then share the CPUs.
pub fn default_parallelism() -> usize {
    (crate::host::cpus() as usize * 4).max(4)
}

/// Create and start every VM; wait until each is ready (or failed). Results are in input order.
pub async fn start_all(
    rt: Arc<dyn Runtime>,
    cfgs: Vec<VmConfig>,
    parallelism: usize,
) -> Vec<Result<Started>> {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallelism.max(1)));
    let tasks: Vec<_> = cfgs
        .into_iter()
        .map(|cfg| {
            let rt = rt.clone();
            let sem = sem.clone();
            tokio::spawn(async move {
                let vm = {
                    let _permit = sem.acquire().await;
                    let vm = rt.create(&cfg).await?;
                    if let Err(e) = rt.start(&vm).await {
                        let _ = vm.remove();
                        return Err(e);
                    }
                    vm
                };
                match crate::wait_ready(&vm, Duration::from_secs(cfg.ready_timeout_secs)).await {
                    Ok((client, info)) => Ok(Started {
                        vm,
                        client,
                        info,
                        ready_after: t0.elapsed(),
                    }),
                    Err(e) => {
                        let _ = rt.kill(&vm).await;
                        Err(e)
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(match t.await {
            Ok(r) => r,
            Err(e) => Err(crate::RuntimeError::Agent(format!(
                "start task failed: {e}"
            ))),
        });
    }
    out
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12), in clock ticks.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Resident set size of a process in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Proportional set size of a process in KiB (`/proc/PID/smaps_rollup`): its resident pages,
/// each shared page counted as its share among the processes mapping it. Summed over
/// processes, the memory they really take, which RSS overcounts for shared pages.
pub fn pss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_and_rss_are_visible() {
        let pid = std::process::id() as i32;
        // Burn a little CPU so the counter is non-zero.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
        assert!(rss_kib(pid).unwrap() > 100);
        assert!(cpu_time(-5).is_none());
    }
}
