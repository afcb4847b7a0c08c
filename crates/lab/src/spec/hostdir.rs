//! A host directory named as a file source (`files: {/opt/tools: ./tools}`, containerlab
//! `binds:`): its regular files, recursively, in name order, bounded; and where a relative
//! host path of such a file points.

use std::path::{Path, PathBuf};

/// Host path `src` as a lab or topology file names it: a relative one starts at `base` (the
/// file's directory) when there is one.
pub fn host_path(base: Option<&Path>, src: &str) -> PathBuf {
    let p = PathBuf::from(src);
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    }
}

/// At most this many files come from one directory.
pub const MAX_FILES: usize = 256;

/// The regular files under `dir` (symlinks and special files skipped) as (path relative to
/// `dir`, host path); an error naming the problem when `dir` cannot be read or holds more
/// than [`MAX_FILES`].
pub fn regular_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d)
            .map_err(|e| format!("cannot read directory {}: {e}", d.display()))?;
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                out.push((rel, p));
            }
        }
        if out.len() > MAX_FILES {
            return Err(format!(
                "directory {} holds more than {MAX_FILES} files",
                dir.display()
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// The mode a copy of host file `p` keeps: its permission bits when it is executable.
pub fn exec_mode(p: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(p).ok()?.permissions().mode() & 0o7777;
    (m & 0o111 != 0).then_some(m)
}
