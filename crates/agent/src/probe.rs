//! Readiness checks the agent runs itself ([`crate::proto::Probe`]): a TCP connect to a
//! loopback port, or an HTTP/1.0 GET whose status line is read (at most [`MAX_HEAD`] bytes).
//! Plain `std` networking, so an image needs neither `nc` nor `curl`; every step has a timeout.

use crate::proto::{Probe, ProbeCheck};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest timeout the agent accepts for one probe.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of an HTTP answer read while looking for its status line.
pub const MAX_HEAD: usize = 4096;

/// Longest URL a probe may carry.
pub const MAX_URL: usize = 2048;

/// Runs `p`: whether it passed, and what was seen.
pub fn run(p: &Probe) -> (bool, String) {
    let timeout = Duration::from_millis(p.timeout_ms.max(1)).min(MAX_TIMEOUT);
    match &p.check {
        ProbeCheck::Tcp(port) => tcp(*port, timeout),
        ProbeCheck::Http(url) => http(url, timeout),
    }
}

fn describe(e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            format!("timed out after {} ms", timeout.as_millis())
        }
        _ => e.to_string(),
    }
}

/// A TCP connection to `port` on 127.0.0.1, else on ::1 (a service listening on IPv6 only).
fn tcp(port: u16, timeout: Duration) -> (bool, String) {
    if port == 0 {
        return (false, "port 0".into());
    }
    let mut last = String::new();
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        match TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout) {
            Ok(_) => return (true, format!("connected to {ip}:{port}")),
            Err(e) => {
                if last.is_empty() {
                    last = describe(&e, timeout);
                }
            }
        }
    }
    (false, last)
}

/// The parts of an `http://host[:port][/path]` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses an `http://` URL (no userinfo, no https). The reason when it cannot.
pub fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    if url.len() > MAX_URL {
        return Err(format!("URL longer than {MAX_URL} bytes"));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("not an http:// URL".into());
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL contains whitespace or control characters".into());
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err("user names in the URL are not supported".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some(end) = v6.find(']') else {
            return Err("unclosed '[' in the host".into());
        };
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p,
            None if after.is_empty() => "",
            None => return Err(format!("unexpected '{after}' after the host")),
        };
        (v6[..end].to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (authority.to_string(), ""),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let port = if port.is_empty() {
        80
    } else {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("port '{port}' is not 1..65535")),
        }
    };
    Ok(HttpUrl { host, port, path })
}

/// Whether `host` names the guest itself: `localhost`, 127.0.0.0/8 or ::1.
pub fn is_local_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

fn http(url: &str, timeout: Duration) -> (bool, String) {
    let u = match parse_http_url(url) {
        Ok(u) => u,
        Err(e) => return (false, e),
    };
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = if u.host.eq_ignore_ascii_case("localhost") {
        vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), u.port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), u.port),
        ]
    } else if let Ok(ip) = u.host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, u.port)]
    } else {
        match (u.host.as_str(), u.port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return (false, format!("cannot resolve {}: {e}", u.host)),
        }
    };
    let mut last = format!("no address for {}", u.host);
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = describe(&e, timeout),
        }
    }
    let Some(mut s) = stream else {
        return (false, last);
    };
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {host}:{}\r\nUser-Agent: kobako-ready\r\nConnection: close\r\n\r\n",
        u.path, u.port
    );
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let _ = s.set_write_timeout(Some(left()));
    if let Err(e) = s.write_all(req.as_bytes()) {
        return (false, describe(&e, timeout));
    }
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < MAX_HEAD {
        if Instant::now() >= deadline {
            return (
                false,
                format!("no answer within {} ms", timeout.as_millis()),
            );
        }
        let _ = s.set_read_timeout(Some(left()));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (false, describe(&e, timeout)),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim();
    let mut parts = line.split_whitespace();
    let status = match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code,
        _ if line.is_empty() => return (false, "connection closed without an answer".into()),
        _ => {
            let shown: String = line.chars().take(60).collect();
            return (false, format!("not an HTTP answer: '{shown}'"));
        }
    };
    (
        (200..400).contains(&status),
        format!("HTTP {}", line.split_once(' ').map_or(line, |x| x.1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn probe(check: ProbeCheck) -> (bool, String) {
        run(&Probe {
            check,
            timeout_ms: 1000,
        })
    }

    #[test]
    fn tcp_passes_on_a_listener_and_says_refused_otherwise() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (ok, what) = probe(ProbeCheck::Tcp(port));
        assert!(ok, "{what}");
        drop(l);
        let (ok, what) = probe(ProbeCheck::Tcp(port));
        assert!(!ok);
        assert_eq!(what, "connection refused");
    }

    fn serve_once(answer: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut b = [0u8; 1024];
                let _ = c.read(&mut b);
                let _ = c.write_all(answer);
            }
        });
        port
    }

    #[test]
    fn http_2xx_and_3xx_pass_others_fail_with_the_status() {
        let p = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let r = probe(ProbeCheck::Http(format!("http://localhost:{p}/health")));
        assert_eq!(r, (true, "HTTP 200 OK".into()));
        let p = serve_once(b"HTTP/1.0 302 Found\r\n\r\n");
        assert!(probe(ProbeCheck::Http(format!("http://127.0.0.1:{p}/"))).0);
        let p = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let r = probe(ProbeCheck::Http(format!("http://127.0.0.1:{p}")));
        assert_eq!(r, (false, "HTTP 503 Service Unavailable".into()));
        let p = serve_once(b"SSH-2.0-OpenSSH\r\n");
        let r = probe(ProbeCheck::Http(format!("http://127.0.0.1:{p}/")));
        assert!(!r.0 && r.1.contains("not an HTTP answer"), "{r:?}");
    }

    #[test]
    fn http_to_a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let t = Instant::now();
        let r = run(&Probe {
            check: ProbeCheck::Http(format!("http://127.0.0.1:{p}/")),
            timeout_ms: 300,
        });
        assert!(!r.0, "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(3));
        drop(l);
    }

    #[test]
    fn urls() {
        let u = parse_http_url("http://localhost:8080/health?x=1").unwrap();
        assert_eq!(
            u,
            HttpUrl {
                host: "localhost".into(),
                port: 8080,
                path: "/health?x=1".into()
            }
        );
        assert_eq!(parse_http_url("http://[::1]/").unwrap().host, "::1");
        assert_eq!(parse_http_url("http://127.0.0.1").unwrap().port, 80);
        assert_eq!(parse_http_url("http://h?a").unwrap().path, "/?a");
        for bad in [
            "https://localhost/",
            "ftp://x",
            "http://",
            "http://a:0/",
            "http://a:99999/",
            "http://u@localhost/",
            "http://local host/",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
        assert!(is_local_host("localhost") && is_local_host("127.0.0.5") && is_local_host("::1"));
        assert!(!is_local_host("10.0.0.1") && !is_local_host("example.com"));
    }
}
