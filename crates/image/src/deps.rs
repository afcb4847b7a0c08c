//! Host packages. Steps call [`ensure`] with the Debian packages they need; only missing ones are
//! installed, so a second run costs one `dpkg-query`.

use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error("cannot query installed packages (is this Debian? dpkg-query failed: {0})")]
    Query(std::io::Error),
    #[error("missing packages {missing:?} and not root: run `sudo apt-get install {}`", missing.join(" "))]
    NotRoot { missing: Vec<String> },
    #[error("`apt-get install {}` failed (exit {code:?}); see the output above", packages.join(" "))]
    Install {
        packages: Vec<String>,
        code: Option<i32>,
    },
}

/// The packages of `wanted` that are not installed.
pub fn missing(wanted: &[&str]) -> Result<Vec<String>, DepsError> {
    let mut out = Vec::new();
    for p in wanted {
        let o = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .stderr(Stdio::null())
            .output()
            .map_err(DepsError::Query)?;
        if !String::from_utf8_lossy(&o.stdout).contains("install ok installed") {
            out.push(p.to_string());
        }
    }
    Ok(out)
}

/// Install whatever of `wanted` is missing (non-interactively).
pub fn ensure(wanted: &[&str], progress: &dyn crate::Progress) -> Result<(), DepsError> {
    let missing = missing(wanted)?;
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DepsError::NotRoot { missing });
    }
    progress.step(&format!("installing host packages: {}", missing.join(" ")));
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    // Try without refreshing the lists first: fast when they are current.
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().map(String::as_str));
    let ok = run(&args).map(|s| s.success()).unwrap_or(false);
    if !ok {
        let _ = run(&["update", "-q"]);
        let st = run(&args).map_err(|_| DepsError::Install {
            packages: missing.clone(),
            code: None,
        })?;
        if !st.success() {
            return Err(DepsError::Install {
                packages: missing,
                code: st.code(),
            });
        }
    }
    Ok(())
}
