//! The VMM's logger: one line per event, to stderr by default or to the file/FIFO given by
//! `--log-path` or `PUT /logger`. Used from every thread (a `Mutex` around the sink); the hot
//! paths (vCPU exits) count instead of logging.
//!
//! Line format, close to Firecracker's: `[<id>:<thread>:<LEVEL>] message`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Log levels, as named in Firecracker's `PUT /logger` (`Error`, `Warning`, `Info`, `Debug`,
/// `Trace`, `Off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warning = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    /// Parses a level name (case-insensitive; `Warn` accepted too).
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "off" => Level::Off,
            "error" => Level::Error,
            "warning" | "warn" => Level::Warning,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Level::Off => "OFF",
            Level::Error => "ERROR",
            Level::Warning => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Warning as u8);
static SINK: Mutex<Option<File>> = Mutex::new(None);
static ID: Mutex<String> = Mutex::new(String::new());

/// Sets the instance id shown in every line.
pub fn set_id(id: &str) {
    *ID.lock().unwrap_or_else(|e| e.into_inner()) = id.to_string();
}

/// Sets the maximum level that is written.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// True when `level` would be written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed) && level != Level::Off
}

/// Sends lines to `path` (appended; a FIFO works too) instead of stderr.
pub fn set_path(path: &Path) -> std::io::Result<()> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    Ok(())
}

/// Writes one line (used by the macros).
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let thread = std::thread::current();
    let line = format!(
        "[{}:{}:{}] {}\n",
        ID.lock().unwrap_or_else(|e| e.into_inner()),
        thread.name().unwrap_or("?"),
        level.name(),
        args
    );
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    match sink.as_mut() {
        Some(f) => {
            let _ = f.write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Logs at error level.
#[macro_export]
macro_rules! log_error { ($($t:tt)*) => { $crate::logger::write($crate::logger::Level::Error, format_args!($($t)*)) } }
/// Logs at warning level.
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::logger::write($crate::logger::Level::Warning, format_args!($($t)*)) } }
/// Logs at info level.
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::logger::write($crate::logger::Level::Info, format_args!($($t)*)) } }
/// Logs at debug level.
#[macro_export]
macro_rules! log_debug { ($($t:tt)*) => { $crate::logger::write($crate::logger::Level::Debug, format_args!($($t)*)) } }
