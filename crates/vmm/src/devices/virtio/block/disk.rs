//! Opening the disk image behind a block device: a raw file ([`super::image::Raw`]) or qcow2
//! ([`super::qcow2`]), chosen by the file's magic, as qemu does when no format is given.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::image::{DiskImage, Raw};
use super::qcow2::{Qcow2, Qcow2Error, MAGIC};

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
}

/// Opens `path` as qcow2 (by its magic) or raw; `format` ("raw"/"qcow2") overrides the probe.
pub fn open(
    path: &Path,
    read_only: bool,
    format: Option<&str>,
) -> Result<Box<dyn DiskImage>, DiskError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| DiskError::Open {
            path: path.display().to_string(),
            source,
        })?;
    let mut magic = [0u8; 4];
    let n = file.read_at(&mut magic, 0).unwrap_or(0);
    let is_qcow2 = n == 4 && magic == MAGIC;
    if format == Some("qcow2") && !is_qcow2 {
        return Err(DiskError::Open {
            path: path.display().to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "image_format is qcow2 but the file has no qcow2 header",
            ),
        });
    }
    if is_qcow2 && format != Some("raw") {
        Ok(Box::new(Qcow2::open_file(file, path, read_only)?))
    } else {
        Ok(Box::new(Raw::new(file).map_err(|source| {
            DiskError::Open {
                path: path.display().to_string(),
                source,
            }
        })?))
    }
}
