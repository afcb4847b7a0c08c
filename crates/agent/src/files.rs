//! File transfer and inspection: put (streamed, verified, atomic), get (streamed, checksummed),
//! stat, recursive list, mkdir.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use kobako_agent::proto::{DirEntry, FileInfo, FileKind, Frame, Kind, Msg, PutFile};
use sha2::{Digest, Sha256};

use crate::{fail, lock, reply, send, Input, Sessions};

/// A transfer whose host goes silent this long is abandoned (and its partial file removed).
const IDLE: Duration = Duration::from_secs(60);

fn done(stream: u32, sha256: Option<String>, size: Option<u64>) {
    reply(stream, &Msg::Done { sha256, size });
}

/// Why a put or a list failed; the agent sends the message to the host.
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("{}", describe(.err, .path))]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: is a directory", .0.display())]
    IsDir(PathBuf),
    #[error("{}: not a file path", .0.display())]
    NotAFilePath(PathBuf),
    #[error("{}: no data from the host for {secs} s; transfer abandoned", .path.display())]
    HostSilent { path: PathBuf, secs: u64 },
    /// The session was dropped: the host went away mid-transfer.
    #[error("{}: transfer interrupted", .0.display())]
    Interrupted(PathBuf),
    #[error("{}: received {got} bytes, expected {expected}", .path.display())]
    SizeMismatch {
        path: PathBuf,
        got: u64,
        expected: u64,
    },
    #[error("{}: checksum mismatch (sent {sent}, received {got})", .path.display())]
    ChecksumMismatch {
        path: PathBuf,
        sent: String,
        got: String,
    },
}

/// An I/O error about `path`, described as [`describe`] does.
fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |err| FileError::Io {
        path: path.to_path_buf(),
        err,
    }
}

fn describe(e: &std::io::Error, path: &Path) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "{}: the directory {} does not exist in the guest",
            path.display(),
            path.parent().unwrap_or(Path::new("/")).display()
        ),
        Some(libc::ENOSPC) => format!("{}: the guest's disk is full", path.display()),
        Some(libc::EISDIR) => format!("{}: is a directory", path.display()),
        _ => format!("{}: {e}", path.display()),
    }
}

pub fn put(stream: u32, req: PutFile, rx: Receiver<Input>, sessions: Sessions) {
    let path = PathBuf::from(&req.path);
    let r = receive(&path, &req, rx);
    lock(&sessions).remove(&stream);
    match r {
        Ok((sha, size)) => done(stream, Some(sha), Some(size)),
        Err(e) => fail(stream, e.to_string()),
    }
}

fn receive(path: &Path, req: &PutFile, rx: Receiver<Input>) -> Result<(String, u64), FileError> {
    if path.is_dir() {
        return Err(FileError::IsDir(path.into()));
    }
    let name = path
        .file_name()
        .ok_or_else(|| FileError::NotAFilePath(path.into()))?;
    let tmp = path.with_file_name(format!(".{}.kobako-part", name.to_string_lossy()));
    let mut f = File::create(&tmp).map_err(io_at(path))?;
    let cleanup = |e: FileError| {
        let _ = fs::remove_file(&tmp);
        Err(e)
    };
    let mut h = Sha256::new();
    let mut size = 0u64;
    let expected = loop {
        match rx.recv_timeout(IDLE) {
            Ok(Input::Data(buf)) => {
                if let Err(e) = f.write_all(&buf) {
                    return cleanup(io_at(path)(e));
                }
                h.update(&buf);
                size += buf.len() as u64;
            }
            Ok(Input::End(sha)) => break sha,
            Ok(Input::Resize(..)) => {}
            Err(RecvTimeoutError::Timeout) => {
                return cleanup(FileError::HostSilent {
                    path: path.into(),
                    secs: IDLE.as_secs(),
                })
            }
            // The session was dropped: the host went away mid-transfer.
            Err(RecvTimeoutError::Disconnected) => {
                return cleanup(FileError::Interrupted(path.into()))
            }
        }
    };
    if let Err(e) = f.sync_all() {
        return cleanup(io_at(path)(e));
    }
    drop(f);
    let got = hex::encode(h.finalize());
    if size != req.size {
        return cleanup(FileError::SizeMismatch {
            path: path.into(),
            got: size,
            expected: req.size,
        });
    }
    if got != expected {
        return cleanup(FileError::ChecksumMismatch {
            path: path.into(),
            sent: expected,
            got,
        });
    }
    if let Err(e) = fs::set_permissions(&tmp, fs::Permissions::from_mode(req.mode & 0o7777)) {
        return cleanup(io_at(path)(e));
    }
    if req.uid.is_some() || req.gid.is_some() {
        if let Err(e) = std::os::unix::fs::chown(&tmp, req.uid, req.gid) {
            return cleanup(io_at(path)(e));
        }
    }
    if let Err(e) = fs::rename(&tmp, path) {
        return cleanup(io_at(path)(e));
    }
    Ok((got, size))
}

fn kind_of(ft: fs::FileType) -> FileKind {
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

fn info(md: &fs::Metadata) -> FileInfo {
    FileInfo {
        exists: true,
        kind: kind_of(md.file_type()),
        size: md.len(),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    }
}

pub fn get(stream: u32, path: &str) {
    let p = Path::new(path);
    let mut f = match File::open(p) {
        Ok(f) => f,
        Err(e) => return fail(stream, describe(&e, p)),
    };
    let md = match f.metadata() {
        Ok(m) => m,
        Err(e) => return fail(stream, describe(&e, p)),
    };
    if md.is_dir() {
        return fail(stream, format!("{path}: is a directory (list it first)"));
    }
    reply(stream, &Msg::FileInfo(info(&md)));
    let mut h = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                size += n as u64;
                send(&Frame {
                    stream,
                    kind: Kind::Stdout,
                    payload: buf[..n].to_vec(),
                });
            }
            Err(e) => return fail(stream, describe(&e, p)),
        }
    }
    send(&Frame {
        stream,
        kind: Kind::Stdout,
        payload: Vec::new(),
    });
    done(stream, Some(hex::encode(h.finalize())), Some(size));
}

pub fn stat(stream: u32, path: &str) {
    match fs::symlink_metadata(path) {
        Ok(md) => reply(stream, &Msg::FileInfo(info(&md))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => reply(
            stream,
            &Msg::FileInfo(FileInfo {
                exists: false,
                kind: FileKind::Other,
                size: 0,
                mode: 0,
                uid: 0,
                gid: 0,
            }),
        ),
        Err(e) => fail(stream, describe(&e, Path::new(path))),
    }
}

pub fn list(stream: u32, path: &str) {
    let root = Path::new(path);
    let mut entries = Vec::new();
    if let Err(e) = walk(root, root, &mut entries) {
        return fail(stream, e.to_string());
    }
    reply(stream, &Msg::Entries { entries });
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<DirEntry>) -> Result<(), FileError> {
    let rd = fs::read_dir(dir).map_err(io_at(dir))?;
    let mut items: Vec<_> = rd.flatten().collect();
    items.sort_by_key(|e| e.file_name());
    for e in items {
        let p = e.path();
        let md = fs::symlink_metadata(&p).map_err(io_at(&p))?;
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        let kind = kind_of(md.file_type());
        out.push(DirEntry {
            path: rel,
            kind,
            size: md.len(),
            mode: md.mode() & 0o7777,
            target: if kind == FileKind::Symlink {
                fs::read_link(&p)
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned())
            } else {
                None
            },
        });
        if kind == FileKind::Dir {
            walk(root, &p, out)?;
        }
    }
    Ok(())
}

pub fn mkdir(stream: u32, path: &str, mode: u32, parents: bool) {
    let p = Path::new(path);
    let r = if parents {
        fs::create_dir_all(p)
    } else {
        match fs::create_dir(p) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
            r => r,
        }
    };
    match r.and_then(|_| fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777))) {
        Ok(()) => done(stream, None, None),
        Err(e) => fail(stream, describe(&e, p)),
    }
}
