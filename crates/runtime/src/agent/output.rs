//! Output of a finished command: [`ExecOutput`], and [`CappedBuf`], the in-memory buffer that
//! keeps a stream up to a cap and ends it with [`truncation_marker`].

/// The result of a finished `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Output was cut at the cap (the streams end with [`truncation_marker`]).
    pub truncated: bool,
}

/// The line that replaces output beyond a cap.
pub fn truncation_marker(kept: usize) -> String {
    format!("\n[kobako: output truncated after {kept} bytes]\n")
}

/// Output collected in memory up to a cap: bytes past it are counted and dropped, and the
/// buffer ends with [`truncation_marker`] once finished.
#[derive(Debug, Clone)]
pub struct CappedBuf {
    data: Vec<u8>,
    max: usize,
    dropped: u64,
}

impl CappedBuf {
    pub fn new(max: usize) -> CappedBuf {
        CappedBuf {
            data: Vec::new(),
            max,
            dropped: 0,
        }
    }

    pub fn push(&mut self, b: &[u8]) {
        let room = self.max.saturating_sub(self.data.len());
        let take = room.min(b.len());
        self.data.extend_from_slice(&b[..take]);
        self.dropped += (b.len() - take) as u64;
    }

    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }

    /// The bytes kept, with the marker appended when something was dropped.
    pub fn finish(mut self) -> Vec<u8> {
        if self.dropped > 0 {
            let m = truncation_marker(self.data.len());
            self.data.extend_from_slice(m.as_bytes());
        }
        self.data
    }
}

impl ExecOutput {
    /// The exit status a shell would report: the code, or 128 + signal.
    pub fn status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}
