//! A minimal synchronous client for a Firecracker-compatible API socket (kobako-vmm's): one
//! HTTP/1.1 request per connection, `Content-Length` bodies only (what the server sends).
//!
//! Used by the supervisor (a synchronous process) to read the boot-complete signal and by the
//! `vmm` runtime for pause/resume/status/Ctrl-Alt-Del; requests are small and answered at once.
//! Also the host side of Firecracker's vsock handshake ([`vsock_connect`]), the supervisor's way
//! to the guest agent on the `vmm` runtime.

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
    let mut s = crate::sock::connect(sock)?;
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

/// Firecracker's host side of vsock: connects to the VMM's `uds_path`, asks for guest `port`
/// with `CONNECT <port>\n` and waits up to `timeout` for `OK <host port>\n`. The stream then
/// carries the connection's bytes (nothing after the `OK` line has been read). An error when
/// nobody listens on the port in the guest yet (the VMM closes the socket: the guest answered
/// RST), the guest's driver is not up within `timeout`, or the VMM is not there.
pub fn vsock_connect(uds_path: &Path, port: u32, timeout: Duration) -> std::io::Result<UnixStream> {
    let mut s = crate::sock::connect(uds_path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: what follows the line belongs to the guest's stream.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("nothing listens on vsock port {port} in the guest (yet)"),
                ))
            }
            _ if b[0] == b'\n' => break,
            _ if line.len() >= 32 => return Err(bad("vsock handshake: answer line too long")),
            _ => line.push(b[0]),
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("OK ").map(|p| p.trim().parse::<u32>()) {
        Some(Ok(_)) => {
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
            Ok(s)
        }
        _ => Err(bad(format!("vsock handshake: unexpected answer {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kobako_agent::proto::{self, Frame, Msg, ReadyInfo};
    use kobako_vmm::devices::virtio::testing::VsockGuest;
    use kobako_vmm::devices::virtio::vsock::{
        PacketHeader, HOST_CID, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, TYPE_STREAM,
    };

    fn pkt(src_port: u32, dst_port: u32, op: u16, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 256 << 10,
            fwd_cnt: 0,
        }
    }

    /// The supervisor's handshake against kobako-vmm's real vsock device, whose guest side is
    /// the test driver playing the agent: REQUEST answered, `OK` read, then agent frames both
    /// ways over the stream. A port nobody listens on is refused.
    #[test]
    fn vsock_handshake_and_agent_frames_through_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut g = VsockGuest::new(3, &uds);
        let port = proto::VSOCK_PORT;
        let u = uds.clone();
        let host = std::thread::spawn(move || {
            let mut s = vsock_connect(&u, port, Duration::from_secs(10)).unwrap();
            let f = proto::read_frame(&mut s).unwrap();
            let Ok(Msg::Ready(info)) = f.to_msg() else {
                panic!("expected Ready, got {f:?}");
            };
            proto::write_frame(&mut s, &Frame::msg(0, &Msg::Hello { version: 1 })).unwrap();
            let refused = vsock_connect(&u, 9, Duration::from_secs(10)).unwrap_err();
            (info, refused)
        });
        let mut local = None;
        let mut from_host = Vec::new();
        let mut refused_port = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !host.is_finished() {
            assert!(std::time::Instant::now() < deadline, "handshake timed out");
            for (h, data) in g.recv() {
                match (h.op, h.dst_port) {
                    (OP_REQUEST, p) if p == port => {
                        local = Some(h.src_port);
                        g.send(pkt(port, h.src_port, OP_RESPONSE, 0), &[]);
                        let info = ReadyInfo {
                            version: proto::VERSION,
                            agent_version: "test".into(),
                            hostname: "guest".into(),
                            kernel: "6.1".into(),
                            nproc: 1,
                            mem_total_kib: 1024,
                            agent_start_ms: 1,
                            ready_ms: 2,
                        };
                        let mut b = Vec::new();
                        proto::write_frame(&mut b, &Frame::msg(0, &Msg::Ready(info))).unwrap();
                        g.send(pkt(port, h.src_port, OP_RW, b.len() as u32), &b);
                    }
                    (OP_REQUEST, 9) => {
                        refused_port = true;
                        g.send(pkt(9, h.src_port, OP_RST, 0), &[]);
                    }
                    (OP_RW, _) => from_host.extend_from_slice(&data),
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (info, refused) = host.join().unwrap();
        assert!(local.is_some() && refused_port);
        assert_eq!((info.hostname.as_str(), info.ready_ms), ("guest", 2));
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{refused}"
        );
        g.pump();
        for (h, data) in g.recv() {
            if h.op == OP_RW {
                from_host.extend_from_slice(&data);
            }
        }
        let f = proto::read_frame(&mut &from_host[..]).unwrap();
        assert!(matches!(f.to_msg(), Ok(Msg::Hello { .. })), "{f:?}");
    }
}
