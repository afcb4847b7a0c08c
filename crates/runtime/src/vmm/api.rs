//! The VMM's API socket (`vmm/api.sock`): one request with the VMM's refusal as an error,
//! the instance state, and the wait for a restored VM to run.

use std::time::Duration;

use super::{VmmRuntime, API_SOCKET, EXIT_SNAPSHOT_LOAD};
use crate::vmdir::VmDir;
use crate::{io, Result, RuntimeError};

impl VmmRuntime {
    pub(super) fn api(
        &self,
        vm: &VmDir,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<()> {
        api_call(vm, method, path, body, Duration::from_secs(5)).map(|_| ())
    }
}

/// One request to a VM's VMM API; a refusal becomes an error with the VMM's reason.
pub(super) fn api_call(
    vm: &VmDir,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    let r = crate::fcapi::request(&vm.file(API_SOCKET), method, path, body, timeout)
        .map_err(io(format!("VMM API of '{}'", vm.name)))?;
    if r.status / 100 == 2 {
        Ok(r.body)
    } else {
        let why = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_string))
            .unwrap_or(r.body);
        Err(RuntimeError::Invalid(format!(
            "VM '{}': {method} {path} refused by the VMM ({}): {why}",
            vm.name, r.status
        )))
    }
}

/// The VMM's instance state ("Not started", "Running", "Paused"), when it answers.
pub(super) fn instance_state(vm: &VmDir) -> Option<String> {
    let r = crate::fcapi::request(
        &vm.file(API_SOCKET),
        "GET",
        "/",
        None,
        Duration::from_secs(2),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v["state"].as_str().map(str::to_string)
}

/// After `kobako vmm --snapshot-load`: waits until the VMM has restored and resumed the guest,
/// or fails with the VMM's reason (it exits with [`EXIT_SNAPSHOT_LOAD`] and logs why).
pub(super) async fn wait_restored(vm: &VmDir) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if vm.vm_pid().is_none() {
            // Give the supervisor a moment to record the exit.
            for _ in 0..100 {
                if vm.exit().is_some() || vm.supervisor_pid().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let how = vm
                .exit()
                .map(|e| match e.code {
                    Some(EXIT_SNAPSHOT_LOAD) => "the VMM refused the snapshot".to_string(),
                    _ => e.describe(),
                })
                .unwrap_or_else(|| "the VMM ended".into());
            return Err(RuntimeError::ExitedEarly {
                name: vm.name.clone(),
                how,
                console: crate::vmdir::tail(&vm.file("vm.log"), 8),
            });
        }
        match instance_state(vm).as_deref() {
            Some("Running") | Some("Paused") => return Ok(()),
            _ if std::time::Instant::now() > deadline => {
                return Err(RuntimeError::ReadyTimeout {
                    name: vm.name.clone(),
                    secs: 120,
                    console: crate::vmdir::tail(&vm.file("vm.log"), 8),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}
