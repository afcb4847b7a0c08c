//! A minimal synchronous client for a Firecracker-compatible API socket (kobako-vmm's): one
//! HTTP/1.1 request per connection, `Content-Length` bodies only (what the server sends).
//!
//! Used by the supervisor (a synchronous process) to read the boot-complete signal and by the
//! `vmm` runtime for pause/resume/status/Ctrl-Alt-Del; requests are small and answered at once.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Status code and body of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Sends `METHOD path` with an optional JSON body and reads the response.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("response headers longer than 64 KiB"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before the response headers ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("not an HTTP response: {head:?}")))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if len > 1 << 20 {
        return Err(bad(format!("response body of {len} bytes is too large")));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed in the middle of the response body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The guest's boot-complete signal as kobako-vmm recorded it: `(wall_us, cpu_us)` since the
/// VMM process started, or `None` while the guest has not signalled yet.
pub fn boot_time(sock: &Path) -> std::io::Result<Option<(u64, u64)>> {
    let r = request(
        sock,
        "GET",
        "/kobako/boot-time",
        None,
        Duration::from_secs(2),
    )?;
    if r.status != 200 {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| bad(e.to_string()))?;
    match (v["wall_us"].as_u64(), v["cpu_us"].as_u64()) {
        (Some(w), Some(c)) => Ok(Some((w, c))),
        _ => Err(bad(format!("unexpected boot-time answer {}", r.body))),
    }
}
