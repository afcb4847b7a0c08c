//! Files the server keeps per lab outside the database, and forgetting them when the lab goes:
//! packet captures (`<state>/server/captures/<lab>/`, with the registry of the captures running
//! in this process) and the saved graph layout (`<state>/server/layouts/<lab>.json`). Shared by
//! the API handlers ([`crate::api::captures`], [`crate::api::layout`]) and [`crate::cascade`],
//! so the cascade does not depend on the API for them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A capture running in this process.
pub(crate) struct Running {
    pub(crate) stop: Arc<AtomicBool>,
    /// `lab/link`.
    pub(crate) link: String,
    /// Frames so far.
    pub(crate) packets: Arc<AtomicU64>,
}

/// Captures running in this process, by id.
pub(crate) fn running() -> &'static Mutex<HashMap<String, Running>> {
    static R: OnceLock<Mutex<HashMap<String, Running>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// `<state>/server/captures/<lab>`.
pub(crate) fn captures_dir(state_dir: &Path, lab: &str) -> PathBuf {
    crate::server_dir(state_dir).join("captures").join(lab)
}

/// `<state>/server/layouts/<lab>.json`.
pub(crate) fn layout_file(state_dir: &Path, lab: &str) -> PathBuf {
    crate::server_dir(state_dir)
        .join("layouts")
        .join(format!("{lab}.json"))
}

/// Removes a deleted lab's captures. Running ones are stopped first and their end awaited
/// (at most 5 s: they look at the stop flag every 50 ms), so none writes its record into a
/// later lab of the same name.
pub(crate) fn forget_captures(state_dir: &Path, lab: &str) {
    let prefix = format!("{lab}/");
    let t0 = std::time::Instant::now();
    loop {
        let left = {
            let live = running().lock().unwrap_or_else(|e| e.into_inner());
            let mut n = 0;
            for r in live.values().filter(|r| r.link.starts_with(&prefix)) {
                r.stop.store(true, Ordering::Relaxed);
                n += 1;
            }
            n
        };
        if left == 0 || t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(captures_dir(state_dir, lab));
}

/// Removes a deleted lab's layout.
pub(crate) fn forget_layout(state_dir: &Path, lab: &str) {
    let _ = std::fs::remove_file(layout_file(state_dir, lab));
}
