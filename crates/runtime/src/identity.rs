//! A restored guest's own identity, given through its agent: the kernel RNG reseeded from the
//! host, the host's clock, and (for clones) MACs, hostname and a new machine-id. Every VM
//! restored from a snapshot starts from the same memory; this makes it itself.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::{Result, RuntimeError};

/// `n` bytes from the host's CSPRNG.
pub fn host_random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    if let Ok(mut r) = std::fs::File::open("/dev/urandom") {
        let _ = r.read_exact(&mut b);
    }
    b
}

/// How far a restored guest's clock may be from the host's after [`fresh_identity`] (the round
/// trip of the message that set it).
const CLOCK_TOLERANCE: Duration = Duration::from_millis(250);

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// What a restored guest is given by [`fresh_identity`].
#[derive(Debug, Clone, Default)]
pub struct NewIdentity {
    pub hostname: Option<String>,
    /// `(MAC in the snapshot, MAC of this VM)` per NIC.
    pub macs: Vec<(String, String)>,
    /// A new random machine-id (clones); a restored checkpoint keeps its own.
    pub machine_id: bool,
}

/// Gives a guest restored from a snapshot its own identity through the agent: the kernel RNG
/// reseeded from 64 bytes of the host's randomness, the host's clock (ns), and what `id` asks
/// (MACs, hostname, a new machine-id). Returns the machine-id given, if any.
///
/// Agents older than the `identity` message get the same through a shell (RNG: the bytes are
/// mixed into the pool without a forced reseed; MACs cannot be changed that way).
pub async fn fresh_identity(
    client: &crate::agent::AgentClient,
    id: &NewIdentity,
) -> Result<Option<String>> {
    let machine_id = id.machine_id.then(|| hex::encode(host_random(16)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let req = kobako_agent::proto::Identity {
        seed: hex::encode(host_random(64)),
        realtime_ns: Some(now.as_nanos() as u64),
        macs: id.macs.clone(),
        hostname: id.hostname.clone(),
        machine_id: machine_id.clone(),
    };
    let sent = Instant::now();
    match client.identity(req).await {
        Ok(()) => {
            // The clock was set to the host's time at sending: off by however long the message
            // took to be applied (seconds for a clone on a loaded host). Set it again, alone,
            // until a round trip is short: the guest's clock is then the host's within it.
            let mut took = sent.elapsed();
            for _ in 0..3 {
                if took <= CLOCK_TOLERANCE {
                    break;
                }
                let t = Instant::now();
                client
                    .identity(kobako_agent::proto::Identity {
                        seed: String::new(),
                        realtime_ns: Some(realtime_ns()),
                        macs: Vec::new(),
                        hostname: None,
                        machine_id: None,
                    })
                    .await?;
                took = t.elapsed();
            }
            return Ok(machine_id);
        }
        Err(RuntimeError::Agent(m)) if m.contains("unknown variant") => {}
        Err(e) => return Err(e),
    }
    if id.macs.iter().any(|(a, b)| !a.eq_ignore_ascii_case(b)) {
        return Err(RuntimeError::Agent(
            "the guest's kobako-agent is too old to change MAC addresses (rebuild the image)"
                .into(),
        ));
    }
    let mut script = format!(
        "echo {} > /dev/urandom; date -u -s @{} > /dev/null",
        hex::encode(host_random(64)),
        now.as_secs()
    );
    if let Some(h) = &id.hostname {
        script.push_str(&format!(
            "; hostname '{h}'; echo '{h}' > /etc/hostname 2>/dev/null"
        ));
    }
    if let Some(m) = &machine_id {
        script.push_str(&format!("; echo {m} > /etc/machine-id"));
    }
    let out = client
        .exec(kobako_agent::proto::ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script],
            env: Vec::new(),
            cwd: None,
            timeout_ms: Some(10_000),
            stdin: false,
            tty: None,
            user: None,
        })
        .await?;
    if out.code != Some(0) {
        return Err(RuntimeError::Agent(format!(
            "giving the restored guest its identity failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(machine_id)
}
