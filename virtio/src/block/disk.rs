//! The seam between the device and its image formats: a raw file or a qcow2 chain. The
//! format comes from the drive's configuration only, never from the file's contents.

use std::fs::File;
use std::path::{Path, PathBuf};

use vm_memory::GuestAddress;

use super::file::{device_id_bytes, DiskError, DiskFile};
use super::qcow2::Qcow2Disk;
use super::request::DEVICE_ID_LEN;
use super::{ImageFormat, IoEngine};
use crate::GuestMemoryMmap;

/// An opened drive image.
#[derive(Debug)]
pub enum Disk {
    Raw(DiskFile),
    Qcow2 {
        image: Box<Qcow2Disk>,
        path: PathBuf,
        read_only: bool,
        device_id: [u8; DEVICE_ID_LEN],
    },
}

impl Disk {
    /// Opens `path` in `format`. qcow2 runs on the Sync engine only (imago's synchronous API
    /// on the `io` thread); `Async` with qcow2 is refused.
    pub fn open(
        path: &Path,
        format: ImageFormat,
        engine: IoEngine,
        read_only: bool,
        drive_id: &str,
    ) -> Result<Self, DiskError> {
        match format {
            ImageFormat::Raw => Ok(Disk::Raw(DiskFile::open(path, read_only, drive_id)?)),
            ImageFormat::Qcow2 => {
                if engine == IoEngine::Async {
                    return Err(DiskError::Qcow2Async);
                }
                Ok(Disk::Qcow2 {
                    image: Box::new(Qcow2Disk::open(path, read_only)?),
                    path: path.to_path_buf(),
                    read_only,
                    device_id: device_id_bytes(drive_id),
                })
            }
        }
    }

    pub fn format(&self) -> ImageFormat {
        match self {
            Disk::Raw(_) => ImageFormat::Raw,
            Disk::Qcow2 { .. } => ImageFormat::Qcow2,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Disk::Raw(d) => d.path(),
            Disk::Qcow2 { path, .. } => path,
        }
    }

    pub fn is_read_only(&self) -> bool {
        match self {
            Disk::Raw(d) => d.is_read_only(),
            Disk::Qcow2 { read_only, .. } => *read_only,
        }
    }

    pub fn nsectors(&self) -> u64 {
        match self {
            Disk::Raw(d) => d.nsectors(),
            Disk::Qcow2 { image, .. } => image.nsectors(),
        }
    }

    pub fn device_id(&self) -> &[u8; DEVICE_ID_LEN] {
        match self {
            Disk::Raw(d) => d.device_id(),
            Disk::Qcow2 { device_id, .. } => device_id,
        }
    }

    /// The (top) image file; the async engine uses it, which only raw drives have.
    pub fn file(&self) -> &File {
        match self {
            Disk::Raw(d) => d.file(),
            Disk::Qcow2 { image, .. } => image.file(),
        }
    }

    pub fn read_into(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        match self {
            Disk::Raw(d) => d.read_into(mem, offset, bufs),
            Disk::Qcow2 { image, .. } => image.read_into(mem, offset, bufs),
        }
    }

    pub fn write_from(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        match self {
            Disk::Raw(d) => d.write_from(mem, offset, bufs),
            Disk::Qcow2 { image, .. } => image.write_from(mem, offset, bufs),
        }
    }

    pub fn flush(&mut self) -> Result<(), DiskError> {
        match self {
            Disk::Raw(d) => d.flush(),
            Disk::Qcow2 { image, .. } => image.flush(),
        }
    }

    /// Writes cached qcow2 metadata back to the image file (no `fdatasync`): what a clean
    /// process exit needs so that completed guest writes stay visible, as they do on a raw
    /// image through the page cache. Nothing to do for raw images.
    pub fn write_back(&mut self) -> Result<(), DiskError> {
        match self {
            Disk::Raw(_) => Ok(()),
            Disk::Qcow2 { image, .. } => image.write_back(),
        }
    }

    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        match self {
            Disk::Raw(d) => d.discard(offset, len),
            Disk::Qcow2 { image, .. } => image.discard(offset, len),
        }
    }

    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        match self {
            Disk::Raw(d) => d.write_zeroes(offset, len, unmap),
            Disk::Qcow2 { image, .. } => image.write_zeroes(offset, len, unmap),
        }
    }
}
