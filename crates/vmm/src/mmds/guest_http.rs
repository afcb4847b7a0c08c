//! The guest's side of the MMDS: HTTP/1.x requests read from a TCP stream and their answers,
//! as Firecracker's MMDS gives them.
//!
//! - `GET /path` walks the data store (`/a/b` = key `b` of key `a`; empty segments ignored, so
//!   `//a/` = `/a`; array elements by index). IMDS format (the default, and always with
//!   `imds_compat`): an object lists its keys one per line, objects with a trailing `/`; a
//!   string is its text; other values are refused. `Accept: application/json` gives JSON.
//! - V2: `PUT /latest/api/token` with `X-metadata-token-ttl-seconds: 1..21600` returns a
//!   token; every `GET` needs it in `X-metadata-token` (401 otherwise). V1 answers `GET`s
//!   without one (and issues tokens too). The EC2 header names (`X-aws-ec2-metadata-token*`)
//!   are accepted as well. A token request carrying `X-Forwarded-For` is refused.
//! - A request is at most [`MAX_REQUEST`] bytes (headers and body), or it is answered 400 and
//!   the connection closed.

use super::{Mmds, MmdsVersion};
use serde_json::Value;

/// Largest request (request line, headers and body) read from the guest.
pub const MAX_REQUEST: usize = 8192;

/// The outcome of reading the front of a connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Incomplete,
    /// A request, answered: the response bytes, whether to close after them and how many
    /// bytes of the buffer the request used.
    Answered {
        response: Vec<u8>,
        close: bool,
        used: usize,
    },
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    extra: Vec<(&'static str, String)>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: body.into(),
            extra: Vec::new(),
        }
    }

    fn bytes(&self, close: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nServer: kobako-vmm MMDS\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }
}

/// Reads one request from the front of `buf` and answers it from `mmds`.
pub fn respond(buf: &[u8], mmds: &mut Mmds) -> Parsed {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= MAX_REQUEST {
            return bad(buf.len(), 413, "The request is too large.");
        }
        return Parsed::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return bad(buf.len(), 400, "The request headers are not valid UTF-8.");
    };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad(buf.len(), 400, "Invalid HTTP request line.");
    };
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return bad(buf.len(), 400, "Unsupported HTTP version."),
    };
    let mut h = Headers::default();
    let mut content_length = 0usize;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return bad(buf.len(), 400, "Invalid HTTP header.");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => match value.parse() {
                Ok(n) => content_length = n,
                Err(_) => return bad(buf.len(), 400, "Invalid Content-Length."),
            },
            "transfer-encoding" => {
                return bad(buf.len(), 400, "Transfer-Encoding is not supported.")
            }
            "connection" => {
                if value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
            "accept" => h.json = value.contains("application/json"),
            "x-metadata-token" | "x-aws-ec2-metadata-token" => h.token = Some(value.to_string()),
            "x-metadata-token-ttl-seconds" | "x-aws-ec2-metadata-token-ttl-seconds" => {
                h.ttl = Some(value.to_string())
            }
            "x-forwarded-for" => h.forwarded = true,
            _ => {}
        }
    }
    let used = match (head_end + 4).checked_add(content_length) {
        Some(n) if n <= MAX_REQUEST => n,
        _ => return bad(buf.len(), 413, "The request is too large."),
    };
    if buf.len() < used {
        return Parsed::Incomplete;
    }
    let reply = answer(method, target, &h, mmds);
    Parsed::Answered {
        response: reply.bytes(close),
        close,
        used,
    }
}

#[derive(Default)]
struct Headers {
    json: bool,
    token: Option<String>,
    ttl: Option<String>,
    forwarded: bool,
}

fn bad(used: usize, status: u16, msg: &str) -> Parsed {
    Parsed::Answered {
        response: Reply::text(status, msg).bytes(true),
        close: true,
        used,
    }
}

fn answer(method: &str, target: &str, h: &Headers, mmds: &mut Mmds) -> Reply {
    // An absolute-form target (`http://169.254.169.254/x`) and a query are tolerated.
    let path = target
        .strip_prefix("http://")
        .map_or(target, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
    let path = path.split(['?', '#']).next().unwrap_or("/");
    if !path.starts_with('/') {
        return Reply::text(400, "Invalid URI.");
    }
    match method {
        "PUT" => put_token(path, h, mmds),
        "GET" => get(path, h, mmds),
        _ => {
            let mut r = Reply::text(405, "Not allowed HTTP method.");
            r.extra.push(("Allow", "GET, PUT".into()));
            r
        }
    }
}

fn put_token(path: &str, h: &Headers, mmds: &mut Mmds) -> Reply {
    if path.trim_end_matches('/') != "/latest/api/token" {
        return Reply::text(
            400,
            "PUT is only accepted on /latest/api/token (a session token).",
        );
    }
    if h.forwarded {
        return Reply::text(
            400,
            "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
        );
    }
    let Some(ttl) = &h.ttl else {
        return Reply::text(400, "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token's lifetime.");
    };
    match mmds.tokens.generate(ttl) {
        Ok(t) => {
            let mut r = Reply::text(200, t);
            r.extra
                .push(("X-metadata-token-ttl-seconds", ttl.trim().to_string()));
            r
        }
        Err(e) => Reply::text(400, e.to_string()),
    }
}

fn get(path: &str, h: &Headers, mmds: &Mmds) -> Reply {
    if mmds.version() == MmdsVersion::V2 {
        match &h.token {
            None => return Reply::text(401, "No MMDS token provided. Use `X-metadata-token` header to specify the session token."),
            Some(t) if !mmds.tokens.is_valid(t) => {
                return Reply::text(401, "MMDS token not valid.")
            }
            Some(_) => {}
        }
    }
    let mut v = mmds.data();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let next = match v {
            Value::Object(o) => o.get(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => {
                return Reply::text(
                    404,
                    format!(
                        "Resource not found: {}.",
                        crate::text::clip(path, crate::text::MAX_ECHO)
                    ),
                )
            }
        }
    }
    if h.json && !mmds.imds_compat() {
        let mut r = Reply::text(200, v.to_string());
        r.content_type = "application/json";
        return r;
    }
    match v {
        Value::String(s) => Reply::text(200, s.clone()),
        Value::Object(o) => {
            let keys: Vec<String> = o
                .iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect();
            Reply::text(200, keys.join("\n"))
        }
        _ => Reply::text(
            400,
            "Cannot retrieve value. The value has an unsupported type (only strings and objects have an IMDS form: ask with Accept: application/json).",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ask(m: &mut Mmds, req: &str) -> (u16, String, String) {
        let Parsed::Answered { response, used, .. } = respond(req.as_bytes(), m) else {
            panic!("incomplete: {req:?}")
        };
        assert_eq!(used, req.len());
        let s = String::from_utf8(response).unwrap();
        let status = s[9..12].parse().unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        (status, head.to_string(), body.to_string())
    }

    fn store() -> Mmds {
        let mut m = Mmds::default();
        m.put(json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "reservation-id": "r-fea54097", "local-hostname": "ip-10-251-50-12.ec2.internal", "public-keys": {"0": {"openssh-key": "ssh-rsa MYKEY"}}, "n": 5}}}))
            .unwrap();
        m
    }

    #[test]
    fn v1_imds_text_and_json() {
        let mut m = store();
        let (s, head, b) = ask(&mut m, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n");
        assert_eq!(s, 200);
        assert!(head.contains("Content-Type: text/plain"));
        assert_eq!(b, "ami-id\nlocal-hostname\nn\npublic-keys/\nreservation-id");
        let (s, _, b) = ask(&mut m, "GET //latest/meta-data//ami-id HTTP/1.0\r\n\r\n");
        assert_eq!((s, b.as_str()), (200, "ami-12345678"));
        let (s, head, b) = ask(
            &mut m,
            "GET /latest/meta-data/public-keys HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        );
        assert_eq!(s, 200);
        assert!(head.contains("application/json"));
        assert_eq!(b, r#"{"0":{"openssh-key":"ssh-rsa MYKEY"}}"#);
        assert_eq!(
            ask(&mut m, "GET /latest/meta-data/n HTTP/1.1\r\n\r\n").0,
            400
        );
        let (s, _, b) = ask(&mut m, "GET /latest/nope HTTP/1.1\r\n\r\n");
        assert_eq!((s, b.as_str()), (404, "Resource not found: /latest/nope."));
        let (s, head, _) = ask(&mut m, "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!(s, 405);
        assert!(head.contains("Allow: GET, PUT"));
        m.configure(MmdsVersion::V1, true);
        let (_, head, _) = ask(
            &mut m,
            "GET /latest/meta-data/public-keys HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        );
        assert!(
            head.contains("text/plain"),
            "imds_compat: text regardless of Accept"
        );
    }

    #[test]
    fn v2_needs_a_session_token() {
        let mut m = store();
        m.configure(MmdsVersion::V2, false);
        let get = "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n";
        assert_eq!(ask(&mut m, get).0, 401);
        let (s, _, b) = ask(
            &mut m,
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: forged\r\n\r\n",
        );
        assert_eq!((s, b.as_str()), (401, "MMDS token not valid."));
        assert_eq!(ask(&mut m, "PUT /latest/api/token HTTP/1.1\r\n\r\n").0, 400);
        assert_eq!(
            ask(
                &mut m,
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n"
            )
            .0,
            400
        );
        assert_eq!(
            ask(&mut m, "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n").0,
            400
        );
        let (s, head, token) = ask(
            &mut m,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        );
        assert_eq!(s, 200);
        assert!(head.contains("X-metadata-token-ttl-seconds: 60"));
        let (s, _, b) = ask(
            &mut m,
            &format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"),
        );
        assert_eq!((s, b.as_str()), (200, "ami-12345678"));
    }

    #[test]
    fn framing_is_bounded() {
        let mut m = store();
        assert_eq!(
            respond(b"GET / HTTP/1.1\r\nHost: x", &mut m),
            Parsed::Incomplete
        );
        assert_eq!(
            respond(b"PUT / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", &mut m),
            Parsed::Incomplete
        );
        // Pipelined: the first request's bytes only.
        let two = b"GET /latest HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let Parsed::Answered { used, close, .. } = respond(two, &mut m) else {
            panic!()
        };
        assert_eq!((used, close), (24, false));
        let huge = vec![b'a'; MAX_REQUEST];
        assert!(matches!(
            respond(&huge, &mut m),
            Parsed::Answered { close: true, .. }
        ));
        let big_body = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", usize::MAX);
        let Parsed::Answered {
            response, close, ..
        } = respond(big_body.as_bytes(), &mut m)
        else {
            panic!()
        };
        assert!(close && response.starts_with(b"HTTP/1.1 413"));
        let bad = respond(b"GET\r\n\r\n", &mut m);
        assert!(matches!(bad, Parsed::Answered { close: true, .. }));
    }
}
