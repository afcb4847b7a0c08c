//! The host <-> guest agent protocol, version 1.
//!
//! One byte stream (a virtio-serial port on the QEMU runtime, a vsock connection on the own VMM)
//! carries frames. Several sessions share it: every frame names its stream, so one slow `exec`
//! never blocks another. Stream 0 carries connection-level messages (`Hello`/`Ready`,
//! `ShuttingDown`); the host picks a fresh non-zero stream id for every request.
//!
//! ```text
//! frame = len:u32le  stream:u32le  kind:u8  payload[len]
//! ```
//! `kind` says what the payload is: a JSON [`Msg`] or raw bytes of one of a process's standard
//! streams (an empty data payload is that stream's end of file). Payloads are at most
//! [`MAX_PAYLOAD`] bytes so a corrupt length can never make either side allocate gigabytes.
//!
//! This module is pure encoding: no I/O policy, no threads. The guest agent (this crate's binary)
//! and the host client (`kobako-runtime`) both use it.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Protocol version spoken by this build. Bumped on incompatible changes; both sides send theirs
/// in `Hello`/`Ready` and the host refuses an agent it does not understand.
pub const VERSION: u32 = 1;

/// Largest payload of one frame (1 MiB). Larger data is split into several frames.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Header size in bytes: length, stream id, kind.
pub const HEADER_LEN: usize = 9;

/// Name of the virtio-serial port the agent listens on (QEMU: `virtserialport,name=...`).
pub const PORT_NAME: &str = "kobako.agent";

/// The AF_VSOCK port the agent also listens on when the guest has vsock (kobako's own VMM,
/// whose host side is Firecracker's: the host connects to the VMM's `uds_path` and writes
/// `CONNECT 1024\n`).
pub const VSOCK_PORT: u32 = 1024;

/// What a frame's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A JSON-encoded [`Msg`].
    Msg = 1,
    /// Bytes for a process's stdin (host -> guest). Empty = close stdin.
    Stdin = 2,
    /// Bytes a process wrote to stdout (guest -> host). Empty = stdout closed.
    Stdout = 3,
    /// Bytes a process wrote to stderr (guest -> host). Empty = stderr closed.
    Stderr = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Msg),
            2 => Some(Kind::Stdin),
            3 => Some(Kind::Stdout),
            4 => Some(Kind::Stderr),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A JSON message frame.
    pub fn msg(stream: u32, msg: &Msg) -> Frame {
        Frame {
            stream,
            kind: Kind::Msg,
            // Serialising our own enum to JSON cannot fail (no maps with non-string keys).
            payload: serde_json::to_vec(msg).unwrap_or_default(),
        }
    }

    /// Decode the payload of a `Kind::Msg` frame.
    pub fn to_msg(&self) -> Result<Msg, ProtoError> {
        if self.kind != Kind::Msg {
            return Err(ProtoError::NotAMessage);
        }
        serde_json::from_slice(&self.payload).map_err(|e| ProtoError::BadMessage(e.to_string()))
    }

    /// Encode header and payload into one buffer (so a frame is written with one `write_all`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.stream.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ProtoError {
    Io(io::Error),
    /// The peer closed the channel (clean EOF between frames).
    Closed,
    TooLarge(usize),
    UnknownKind(u8),
    NotAMessage,
    BadMessage(String),
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::Io(e) => write!(f, "agent channel I/O error: {e}"),
            ProtoError::Closed => write!(f, "agent channel closed"),
            ProtoError::TooLarge(n) => write!(
                f,
                "frame of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit (corrupt stream?)"
            ),
            ProtoError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            ProtoError::NotAMessage => write!(f, "frame is data, not a message"),
            ProtoError::BadMessage(e) => write!(f, "malformed agent message: {e}"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Parse a header; returns (payload length, stream, kind).
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(usize, u32, Kind), ProtoError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let stream = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_PAYLOAD {
        return Err(ProtoError::TooLarge(len));
    }
    let kind = Kind::from_u8(h[8]).ok_or(ProtoError::UnknownKind(h[8]))?;
    Ok((len, stream, kind))
}

/// Read one frame from a blocking reader.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, ProtoError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => {
                return Err(ProtoError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "channel closed inside a frame header",
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtoError::Io(e)),
        }
    }
    let (len, stream, kind) = parse_header(&h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(ProtoError::Io)?;
    Ok(Frame {
        stream,
        kind,
        payload,
    })
}

/// Write one frame to a blocking writer.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> io::Result<()> {
    w.write_all(&f.encode())?;
    w.flush()
}

/// Control messages. Tagged by `"type"` so the JSON is readable in logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    // ---- host -> guest ----
    /// Start of a host session; the agent answers with `Ready` on stream 0.
    Hello { version: u32 },
    /// Run a process. Its stdout/stderr come back as data frames on the same stream, then `Exited`.
    Exec(ExecRequest),
    /// Send a signal to the process of this stream.
    Signal { signal: i32 },
    /// Shut the guest down (power off, or reboot when `reboot`).
    Shutdown { reboot: bool },
    /// Change the terminal size of this stream's TTY process.
    Resize { rows: u16, cols: u16 },
    /// Write a file: data follows as `Stdin` frames, then `PutEnd` with the data's SHA-256. The
    /// file appears at `path` only if everything arrived intact (written to a temporary name in
    /// the same directory, then renamed).
    PutFile(PutFile),
    /// End of a `PutFile`'s data.
    PutEnd { sha256: String },
    /// Read a file: the agent answers `FileInfo`, the bytes as `Stdout` frames, an empty `Stdout`
    /// frame, then `Done` with the SHA-256 of what it sent.
    GetFile { path: String },
    /// Describe a path (no error if missing: `exists: false`).
    Stat { path: String },
    /// List a directory tree (recursive, paths relative to `path`).
    ListDir { path: String },
    /// Create a directory (and its parents when `parents`).
    Mkdir {
        path: String,
        mode: u32,
        #[serde(default)]
        parents: bool,
    },
    /// Apply network configuration.
    NetConfig(NetConfig),
    /// Replace the set of supervised services (the VM's `run` commands).
    SetServices { services: Vec<ServiceSpec> },
    /// State of the supervised services.
    ServiceStatus,
    /// The last `tail_bytes` of a service's log.
    ServiceLogs { name: String, tail_bytes: u64 },
    /// Give a guest restored from a snapshot its own identity (answered with `Done`).
    Identity(Identity),
    /// Run one readiness check inside the guest (a TCP connect or an HTTP GET on the guest's
    /// own addresses), answered with `ProbeResult`. An agent older than this message answers
    /// `Error` ("unknown variant `probe`"), which the host turns into "rebuild the image".
    Probe(Probe),
    /// Mount a shared directory (the host's virtio-9p export `tag`) read-only at `path`,
    /// answered with `Done`. An agent older than this message answers `Error` ("unknown
    /// variant `mount`"), which the host turns into "rebuild the image".
    Mount(Mount),

    // ---- guest -> host ----
    /// The agent is up. Sent unsolicited when a host connects and in answer to `Hello`.
    Ready(ReadyInfo),
    /// The process of this stream started.
    Started { pid: i32 },
    /// The process of this stream ended: `code` if it exited, `signal` if a signal killed it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        /// True when the agent killed it because `timeout_ms` passed.
        timed_out: bool,
    },
    /// The request on this stream failed; `message` says why.
    Error { message: String },
    /// The guest is going down now (sent just before the agent stops everything).
    ShuttingDown { reboot: bool },
    /// A request completed. `sha256`/`size` for file transfers.
    Done {
        #[serde(default)]
        sha256: Option<String>,
        #[serde(default)]
        size: Option<u64>,
    },
    /// Answer to `GetFile` (before the data) and `Stat`.
    FileInfo(FileInfo),
    /// Answer to `ListDir`.
    Entries { entries: Vec<DirEntry> },
    /// Answer to `ServiceStatus`.
    Services { services: Vec<ServiceState> },
    /// Answer to `ServiceLogs`.
    Logs { data: String },
    /// Answer to `Probe`: whether the check passed and what was seen (`connection refused`,
    /// `HTTP 503`, `timed out after 1000 ms` ...).
    ProbeResult { ok: bool, detail: String },
}

/// A shared directory to mount ([`Msg::Mount`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The 9p mount tag (`kshare0`, ...).
    pub tag: String,
    /// Where the guest sees the directory (absolute).
    pub path: String,
}

/// A readiness check the agent runs itself (no `nc`/`curl` needed in the image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// What to check.
    pub check: ProbeCheck,
    /// Connect and answer timeout, in milliseconds (the agent caps it at 10 s).
    pub timeout_ms: u64,
}

/// What a [`Probe`] checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeCheck {
    /// A TCP connection to this port on the guest's loopback (127.0.0.1, then ::1) is accepted.
    Tcp(u16),
    /// An HTTP/1.0 GET of this `http://` URL answers 2xx or 3xx.
    Http(String),
}

/// A file to write in the guest.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutFile {
    pub path: String,
    pub mode: u32,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// Expected size in bytes (checked at the end).
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub exists: bool,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Relative to the listed directory, '/'-separated.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    /// Link target for symlinks.
    #[serde(default)]
    pub target: Option<String>,
}

/// A fresh identity for a guest restored from a snapshot (a warm clone, a function's clone, a
/// restored checkpoint): every clone of one snapshot starts with the same memory, so the same
/// kernel RNG state, MAC addresses, hostname, machine-id and a clock stopped at the snapshot.
/// Applied in this order: RNG, clock, MACs, hostname, machine-id.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Host randomness (hex, at least 32 bytes): added to the kernel's pool with full credit
    /// (`RNDADDENTROPY`), then the kernel's CRNG is reseeded from it (`RNDRESEEDCRNG`), so the
    /// very next random byte differs between clones.
    #[serde(default)]
    pub seed: String,
    /// The host's wall clock (nanoseconds since the epoch), set with `clock_settime`.
    #[serde(default)]
    pub realtime_ns: Option<u64>,
    /// `(current MAC, new MAC)`: each interface found by its current MAC gets the new one.
    #[serde(default)]
    pub macs: Vec<(String, String)>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// 32 lowercase hex digits, written to /etc/machine-id.
    #[serde(default)]
    pub machine_id: Option<String>,
}

/// Network configuration applied by the agent (over rtnetlink, no guest tools needed).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<IfaceConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Lines for /etc/hosts besides localhost ("10.0.0.2 web").
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Name servers for /etc/resolv.conf.
    #[serde(default)]
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IfaceConfig {
    /// Interface name in the guest (eth0...), or empty with `mac` set to find it by MAC.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// Rename the interface to this (when found by MAC).
    #[serde(default)]
    pub rename: Option<String>,
    /// Addresses in CIDR form, IPv4 or IPv6 ("10.0.0.2/24", "fd00::2/64").
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Bring it up (default true).
    #[serde(default = "yes")]
    pub up: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Destination in CIDR form, or "default".
    pub dst: String,
    #[serde(default)]
    pub via: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub metric: Option<u32>,
}

/// A supervised service: a shell command the agent keeps running.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// Run with `/bin/sh -c`.
    pub command: String,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub running: bool,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

/// An `exec` request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the process (SIGKILL) after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// When false the process's stdin is /dev/null and no Stdin frames are expected.
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (output arrives as `Stdout` only).
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Run as this user (name or numeric uid), with its groups and home.
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// What the agent reports when it is ready.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub version: u32,
    pub agent_version: String,
    pub hostname: String,
    pub kernel: String,
    pub nproc: u32,
    pub mem_total_kib: u64,
    /// Guest monotonic clock (CLOCK_BOOTTIME, ms since the kernel started) when the agent began.
    pub agent_start_ms: u64,
    /// Same clock when the agent finished its init work and sent its first `Ready`.
    pub ready_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_layout() {
        let f = Frame {
            stream: 7,
            kind: Kind::Stdout,
            payload: b"hi".to_vec(),
        };
        let bytes = f.encode();
        assert_eq!(bytes, [2, 0, 0, 0, 7, 0, 0, 0, 3, b'h', b'i']);
        let back = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn msg_roundtrip() {
        let m = Msg::Exec(ExecRequest {
            argv: vec!["echo".into(), "x".into()],
            timeout_ms: Some(5),
            ..Default::default()
        });
        let f = Frame::msg(3, &m);
        assert_eq!(f.to_msg().unwrap(), m);
        let json = String::from_utf8(f.payload).unwrap();
        assert!(json.contains("\"type\":\"exec\""), "{json}");
    }

    #[test]
    fn rejects_huge_and_unknown_frames() {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
        h[8] = 1;
        assert!(matches!(parse_header(&h), Err(ProtoError::TooLarge(_))));
        let mut h = [0u8; HEADER_LEN];
        h[8] = 99;
        assert!(matches!(parse_header(&h), Err(ProtoError::UnknownKind(99))));
    }

    #[test]
    fn eof_between_frames_is_closed_inside_is_error() {
        assert!(matches!(read_frame(&mut &[][..]), Err(ProtoError::Closed)));
        assert!(matches!(
            read_frame(&mut &[1u8, 0, 0][..]),
            Err(ProtoError::Io(_))
        ));
        let truncated = [5u8, 0, 0, 0, 1, 0, 0, 0, 1, b'{'];
        assert!(matches!(
            read_frame(&mut &truncated[..]),
            Err(ProtoError::Io(_))
        ));
    }

    #[test]
    fn unknown_exec_fields_are_rejected() {
        let f = Frame {
            stream: 1,
            kind: Kind::Msg,
            payload: br#"{"type":"exec","argv":["x"],"bogus":1}"#.to_vec(),
        };
        assert!(matches!(f.to_msg(), Err(ProtoError::BadMessage(_))));
    }
}
