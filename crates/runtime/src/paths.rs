//! Where this process keeps runtime state (`/run/kobako` unless the binary says otherwise): the
//! one setting below every module that names a path under it (VM directories, jail roots).

use std::path::PathBuf;

/// Root of runtime state: what [`set_run_root`] fixed (the binary passes `$KOBAKO_RUN`), else
/// `/run/kobako`.
pub fn run_root() -> PathBuf {
    RUN_ROOT
        .get_or_init(|| PathBuf::from("/run/kobako"))
        .clone()
}

/// The run root of this process, fixed by the first [`set_run_root`] or [`run_root`].
static RUN_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the root of runtime state for this process: the binary calls it once at start, before
/// anything asks for [`run_root`]. The first setting (or first use) holds; a later call is
/// ignored and returns false.
pub fn set_run_root(root: PathBuf) -> bool {
    RUN_ROOT.set(root).is_ok()
}
