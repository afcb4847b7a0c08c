//! Shared directories: the host's virtio-9p exports mounted read-only where the lab file says
//! (`shares:`). Idempotent: a share already mounted there is left as it is (a VM configured
//! again by a later `up`).

use std::ffi::CString;

use kobako_agent::proto::Mount;

/// Mounts `m` (its tag's 9p export, read-only, at its path).
pub fn mount(m: &Mount) -> Result<(), String> {
    let tag_ok = m.tag.len() <= 31
        && m.tag.starts_with("kshare")
        && m.tag["kshare".len()..].chars().all(|c| c.is_ascii_digit());
    if !tag_ok {
        return Err(format!("'{}' is not a kobako share tag", m.tag));
    }
    let path_ok = m.path.starts_with('/')
        && m.path != "/"
        && m.path.len() < 4096
        && !m.path.split('/').any(|c| c == ".." || c == ".")
        && !m.path.contains('\0');
    if !path_ok {
        return Err(format!("'{}' is not an absolute guest path", m.path));
    }
    if mounted(&m.tag, &m.path) {
        return Ok(());
    }
    std::fs::create_dir_all(&m.path).map_err(|e| format!("create {}: {e}", m.path))?;
    let (src, target, fstype, data) = (
        CString::new(m.tag.as_str()).map_err(|e| e.to_string())?,
        CString::new(m.path.as_str()).map_err(|e| e.to_string())?,
        CString::new("9p").map_err(|e| e.to_string())?,
        CString::new("trans=virtio,version=9p2000.L,msize=262144").map_err(|e| e.to_string())?,
    );
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "mount share {} on {}: {e} (does the guest kernel have 9p? `kobako image kernel` builds one that does)",
            m.tag, m.path
        ));
    }
    Ok(())
}

/// Whether `/proc/self/mounts` has 9p export `tag` on `path`.
fn mounted(tag: &str, path: &str) -> bool {
    let Ok(t) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    t.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[0] == tag && f[1] == path && f[2] == "9p"
    })
}
