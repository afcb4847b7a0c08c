//! A small HTTP/1.1 server for the API socket: persistent connections, `Content-Length` bodies,
//! several clients multiplexed with epoll, one request handled at a time.
//!
//! Runs on the API thread (`fc_api`). It knows nothing about the VMM: each complete request is
//! handed to a callback that returns the response.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Largest accepted request body (Firecracker's default `--http-api-max-payload-size`).
pub const MAX_BODY: usize = 51200;
const MAX_HEADER: usize = 8192;
/// Most API connections open at once. The next one is accepted, answered 503 and closed (after
/// the connections already closed by their clients are dropped: see `accept_all`), so the API
/// thread holds at most this many buffers of at most `MAX_HEADER + MAX_BODY + 1024`
/// bytes plus one read chunk (about 3.8 MiB in all).
pub const MAX_CONNECTIONS: usize = 64;
/// Longest a request may take to arrive, from its first byte to its last: a client that
/// stalls in the middle of one is answered 408 and its connection closed, so it cannot hold a
/// connection slot (and its buffer) forever. A connection with no request under way (an idle
/// keep-alive one) is not timed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub use crate::text::{clip, MAX_ECHO};

/// Longest `fault_message` (characters); longer ones keep their start and end.
pub const MAX_FAULT: usize = 640;

/// `s` if it has at most `max` characters, else its start and its end (where error messages
/// put the reason) around "…".
fn clip_middle(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let n = s.chars().count();
    if n <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let tail = max / 3;
    let head = max - tail - 1;
    let head_end = s.char_indices().nth(head).map_or(s.len(), |(i, _)| i);
    let tail_start = s.char_indices().nth(n - tail).map_or(s.len(), |(i, _)| i);
    std::borrow::Cow::Owned(format!("{}…{}", &s[..head_end], &s[tail_start..]))
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub close: bool,
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Self {
        Response {
            status: 204,
            body: None,
        }
    }

    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        Response {
            status,
            body: Some(v.to_string()),
        }
    }

    /// A Firecracker-style error: `{"fault_message": "..."}`, at most [`MAX_FAULT`]
    /// characters (a message that quotes a huge request keeps its start and its end).
    pub fn fault(status: u16, msg: &str) -> Self {
        let msg = clip_middle(msg, MAX_FAULT);
        Response::json(status, &serde_json::json!({ "fault_message": msg }))
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "",
        }
    }

    /// Serialises status line, headers and body.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: Firecracker API\r\n",
            self.status,
            self.reason()
        );
        if close {
            out.push_str("Connection: close\r\n");
        } else {
            out.push_str("Connection: keep-alive\r\n");
        }
        match &self.body {
            Some(b) => {
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                    b.len(),
                    b
                ));
            }
            None => out.push_str("\r\n"),
        }
        out.into_bytes()
    }
}

/// Outcome of trying to parse the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Need more bytes.
    Incomplete,
    /// Headers complete with `Expect: 100-continue` and the body still missing: the client
    /// (curl does this for bodies over 1 KiB) waits for `100 Continue` before sending it.
    NeedContinue,
    /// A request and how many bytes it used.
    Done(Request, usize),
    /// Unparseable: answer this and close.
    Bad(Response),
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses one request from the front of `buf`.
pub fn parse(buf: &[u8]) -> Parse {
    let Some(end) = find_header_end(buf) else {
        if buf.len() > MAX_HEADER {
            return Parse::Bad(Response::fault(400, "Request headers are too long."));
        }
        return Parse::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parse::Bad(Response::fault(400, "Request headers are not valid UTF-8."));
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Bad(Response::fault(400, "Invalid HTTP request line."));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Parse::Bad(Response::fault(400, "Unsupported HTTP version."));
    }
    let mut content_length = 0usize;
    let mut close = version == "HTTP/1.0";
    let mut expect_continue = false;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Parse::Bad(Response::fault(400, "Invalid HTTP header."));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => match value.parse() {
                Ok(n) => content_length = n,
                Err(_) => return Parse::Bad(Response::fault(400, "Invalid Content-Length.")),
            },
            "transfer-encoding" => {
                return Parse::Bad(Response::fault(501, "Transfer-Encoding is not supported."))
            }
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "connection" => {
                if value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
            _ => {}
        }
    }
    if content_length > MAX_BODY {
        return Parse::Bad(Response::fault(
            413,
            &format!("Request payload with size {content_length} is larger than the limit of {MAX_BODY} allowed by server."),
        ));
    }
    let total = end + 4 + content_length;
    if buf.len() < total {
        if expect_continue && buf.len() == end + 4 {
            return Parse::NeedContinue;
        }
        return Parse::Incomplete;
    }
    // Strip a query string; the API has none.
    let path = target.split('?').next().unwrap_or("").to_string();
    Parse::Done(
        Request {
            method: method.to_string(),
            path,
            body: buf[end + 4..total].to_vec(),
            close,
        },
        total,
    )
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// `100 Continue` already sent for the request at the front of `buf`.
    continued: bool,
    /// When the first byte of the unfinished request at the front of `buf` was read (None:
    /// no request under way).
    since: Option<Instant>,
    /// Answer bytes the socket has not taken yet. While any are left the connection is
    /// watched for writability only and nothing more is read or parsed from it, so a client
    /// that sends requests without reading the answers holds one answer here, never blocks
    /// the API thread and never makes it buffer more.
    out: Vec<u8>,
    /// Close once `out` is written.
    close_after: bool,
    /// The connection is registered for `OUT` (else for `IN`).
    writing: bool,
}

const LISTENER: u64 = u64::MAX;

/// Serves `listener` forever, calling `handle` for each request. Returns only on a fatal
/// epoll error.
pub fn serve(
    listener: UnixListener,
    mut handle: impl FnMut(Request) -> Response,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        listener.as_raw_fd(),
        EpollEvent::new(EventSet::IN, LISTENER),
    )?;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let n = match epoll.wait(wait_ms(&conns, Instant::now()), &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in events.iter().take(n) {
            if ev.data() == LISTENER {
                accept_all(&listener, &epoll, &mut conns, &mut handle);
            } else {
                on_conn_event(ev.data(), &epoll, &mut conns, &mut handle);
            }
        }
        drop_late(&epoll, &mut conns, Instant::now());
    }
}

/// Milliseconds until the first unfinished request runs out of time (-1: none under way).
fn wait_ms(conns: &HashMap<RawFd, Conn>, now: Instant) -> i32 {
    conns
        .values()
        .filter_map(|c| c.since)
        .min()
        .map_or(-1, |first| {
            let left = (first + REQUEST_TIMEOUT).saturating_duration_since(now);
            // Rounded up, so the wake-up finds the request late, not a hair early.
            i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
        })
}

/// Answers 408 to, and closes, every connection whose request under way has taken longer than
/// [`REQUEST_TIMEOUT`].
fn drop_late(epoll: &Epoll, conns: &mut HashMap<RawFd, Conn>, now: Instant) {
    let late: Vec<RawFd> = conns
        .iter()
        .filter(|(_, c)| {
            c.since
                .is_some_and(|t| now.saturating_duration_since(t) >= REQUEST_TIMEOUT)
        })
        .map(|(fd, _)| *fd)
        .collect();
    for fd in late {
        if let Some(mut c) = conns.remove(&fd) {
            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            // Best effort: whatever the socket takes now; the close follows either way.
            let _ = send(&mut c, &timed_out().to_bytes(true));
        }
    }
}

/// Accepts every pending connection. One beyond [`MAX_CONNECTIONS`] is answered 503 and
/// closed, but only once the connections epoll reports ready have been serviced: a client
/// that closed its connection (say, one that connected only to see the socket answer) frees
/// its slot before anyone is refused, so a newcomer is refused exactly when
/// `MAX_CONNECTIONS` connections are held by clients that have not closed them.
fn accept_all(
    listener: &UnixListener,
    epoll: &Epoll,
    conns: &mut HashMap<RawFd, Conn>,
    handle: &mut impl FnMut(Request) -> Response,
) {
    while let Ok((mut s, _)) = listener.accept() {
        if s.set_nonblocking(true).is_err() {
            continue;
        }
        if conns.len() >= MAX_CONNECTIONS {
            service_ready(epoll, conns, handle);
        }
        if conns.len() >= MAX_CONNECTIONS {
            // A fresh socket's send buffer takes this short answer whole; if not, the
            // client gets nothing but the close.
            let _ = s.write_all(&busy().to_bytes(true));
            continue;
        }
        let fd = s.as_raw_fd();
        if epoll
            .ctl(ControlOperation::Add, fd, interest(fd, false))
            .is_ok()
        {
            conns.insert(
                fd,
                Conn {
                    stream: s,
                    buf: Vec::new(),
                    continued: false,
                    since: None,
                    out: Vec::new(),
                    close_after: false,
                    writing: false,
                },
            );
        }
    }
}

/// Services the connections that are ready now (a closed one is dropped), without waiting.
/// Epoll is level-triggered: an event taken here and not acted on is reported again.
fn service_ready(
    epoll: &Epoll,
    conns: &mut HashMap<RawFd, Conn>,
    handle: &mut impl FnMut(Request) -> Response,
) {
    let mut ready = vec![EpollEvent::default(); MAX_CONNECTIONS + 1];
    let n = loop {
        match epoll.wait(0, &mut ready) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    };
    for ev in ready.iter().take(n) {
        if ev.data() != LISTENER {
            on_conn_event(ev.data(), epoll, conns, handle);
        }
    }
}

/// Services the connection whose token is `token` (its fd), closing it when it is done.
fn on_conn_event(
    token: u64,
    epoll: &Epoll,
    conns: &mut HashMap<RawFd, Conn>,
    handle: &mut impl FnMut(Request) -> Response,
) {
    // Connection tokens are their fds (>= 0), the listener's is u64::MAX (above).
    let Ok(fd) = RawFd::try_from(token) else {
        return;
    };
    let keep = match conns.get_mut(&fd) {
        Some(c) => {
            let mut keep = service(c, handle);
            let want_out = !c.out.is_empty();
            if keep && want_out != c.writing {
                c.writing = want_out;
                keep = epoll
                    .ctl(ControlOperation::Modify, fd, interest(fd, want_out))
                    .is_ok();
            }
            keep
        }
        None => false,
    };
    if !keep {
        if let Some(c) = conns.remove(&fd) {
            let _ = epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }
}

/// What to wait for on a connection: readable (or the peer's half-close), or writable while
/// an answer is pending (not the half-close then: it would wake us in a loop).
fn interest(fd: RawFd, writing: bool) -> EpollEvent {
    let set = if writing {
        EventSet::OUT
    } else {
        EventSet::IN | EventSet::READ_HANG_UP
    };
    // An accepted socket's fd is >= 0: unsigned_abs is the fd itself.
    EpollEvent::new(set, u64::from(fd.unsigned_abs()))
}

fn timed_out() -> Response {
    Response::fault(
        408,
        &format!(
            "The request did not arrive within {} s: the connection is closed.",
            REQUEST_TIMEOUT.as_secs()
        ),
    )
}

fn busy() -> Response {
    Response::fault(
        503,
        &format!("Too many API connections are open (at most {MAX_CONNECTIONS}): close idle ones and retry."),
    )
}

/// Writes what the socket takes now; Err = the connection is broken.
fn flush(c: &mut Conn) -> io::Result<()> {
    while !c.out.is_empty() {
        match c.stream.write(&c.out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Queues `bytes` and writes what the socket takes; false = the connection is broken.
fn send(c: &mut Conn, bytes: &[u8]) -> bool {
    c.out.extend_from_slice(bytes);
    flush(c).is_ok()
}

/// Writes pending answer bytes, reads what is available and answers complete requests, one
/// at a time; false = close the connection.
fn service(c: &mut Conn, handle: &mut impl FnMut(Request) -> Response) -> bool {
    if flush(c).is_err() {
        return false;
    }
    if !c.out.is_empty() {
        return true;
    }
    if c.close_after {
        return false;
    }
    let mut tmp = [0u8; 4096];
    let mut eof = false;
    let now = Instant::now();
    loop {
        match c.stream.read(&mut tmp) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => {
                c.buf.extend_from_slice(&tmp[..n]);
                if c.buf.len() > MAX_HEADER + MAX_BODY + 1024 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    loop {
        match parse(&c.buf) {
            Parse::Incomplete => break,
            Parse::NeedContinue => {
                if !c.continued {
                    c.continued = true;
                    if !send(c, b"HTTP/1.1 100 Continue\r\n\r\n") {
                        return false;
                    }
                }
                break;
            }
            Parse::Bad(resp) => {
                c.close_after = true;
                c.since = None;
                return send(c, &resp.to_bytes(true)) && !c.out.is_empty();
            }
            Parse::Done(req, used) => {
                c.buf.drain(..used);
                c.continued = false;
                // The next request (if any of it is here) is timed from now.
                c.since = None;
                let close = req.close;
                let resp = handle(req);
                if !send(c, &resp.to_bytes(close)) {
                    return false;
                }
                if close {
                    c.close_after = true;
                    return !c.out.is_empty();
                }
                if !c.out.is_empty() {
                    // The rest waits until the client has taken this answer.
                    return true;
                }
            }
        }
    }
    // What is left is the start of a request: time it from when it began.
    if c.buf.is_empty() {
        c.since = None;
    } else if c.since.is_none() {
        c.since = Some(now);
    }
    // A client that half-closed after its requests still gets pending answers (none here).
    !eof
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_requests_and_rejects_bad_ones() {
        let raw = b"PUT /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n\r\n";
        let Parse::Done(r, used) = parse(raw) else {
            panic!()
        };
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.body.as_slice()),
            ("PUT", "/actions", &b"{}"[..])
        );
        let Parse::Done(r2, _) = parse(&raw[used..]) else {
            panic!()
        };
        assert_eq!(r2.path, "/");
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parse::Incomplete
        );
        assert!(matches!(parse(b"GARBAGE\r\n\r\n"), Parse::Bad(_)));
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Parse::Bad(Response { status: 413, .. })
        ));
        assert_eq!(
            parse(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"),
            Parse::NeedContinue
        );
        assert!(matches!(
            parse(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"),
            Parse::Done(..)
        ));
        let bytes = Response::no_content().to_bytes(false);
        assert!(bytes.starts_with(b"HTTP/1.1 204 No Content\r\n"));
    }

    #[test]
    fn faults_and_echoes_are_capped() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
        assert_eq!(clip("ééé", 2), "éé…");
        let long = format!("Cannot open {}: File name too long", "a".repeat(30_000));
        let r = Response::fault(400, &long);
        let v: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        let m = v["fault_message"].as_str().unwrap();
        assert_eq!(m.chars().count(), MAX_FAULT);
        assert!(
            m.starts_with("Cannot open aaa") && m.ends_with("aaa: File name too long"),
            "{m}"
        );
        assert!(m.contains('…'));
        let short = Response::fault(400, "short");
        assert!(short.body.unwrap().contains("\"short\""));
        assert!(busy()
            .to_bytes(true)
            .starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
    }
}
