//! The raw disk image and the synchronous I/O backend.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress};

use super::request::{DEVICE_ID_LEN, SECTOR_SHIFT, SECTOR_SIZE};
use crate::GuestMemoryMmap;

/// Errors from opening or using the backing file.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk I/O at byte offset {offset}: {source}")]
    Io { offset: u64, source: std::io::Error },
    #[error("guest memory access at {addr:#x} failed: {reason}")]
    GuestMemory { addr: u64, reason: String },
    #[error(transparent)]
    Qcow2(#[from] super::qcow2::Qcow2Error),
    #[error("qcow2 images need io_engine Sync (the Async engine serves raw images only)")]
    Qcow2Async,
}

/// A raw image file opened for the device.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    read_only: bool,
    nsectors: u64,
    device_id: [u8; DEVICE_ID_LEN],
}

/// `drive_id` padded with zeroes or cut to the 20 bytes of a `GET_ID` answer.
pub fn device_id_bytes(drive_id: &str) -> [u8; DEVICE_ID_LEN] {
    let mut id = [0u8; DEVICE_ID_LEN];
    let src = drive_id.as_bytes();
    let n = src.len().min(DEVICE_ID_LEN);
    id[..n].copy_from_slice(&src[..n]);
    id
}

impl DiskFile {
    pub fn open(path: &Path, read_only: bool, drive_id: &str) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "virtio-blk: {} is {len} bytes, not a multiple of 512; the tail is unreachable",
                path.display()
            );
        }
        Ok(DiskFile {
            file,
            path: path.to_path_buf(),
            read_only,
            nsectors: len >> SECTOR_SHIFT,
            device_id: device_id_bytes(drive_id),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in 512-byte sectors.
    pub fn nsectors(&self) -> u64 {
        self.nsectors
    }

    pub fn device_id(&self) -> &[u8; DEVICE_ID_LEN] {
        &self.device_id
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn seek(&mut self, offset: u64) -> Result<(), DiskError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map(|_| ())
            .map_err(|source| DiskError::Io { offset, source })
    }

    /// Reads the disk at `offset` into the guest buffers.
    pub fn read_into(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        self.seek(offset)?;
        for &(addr, len) in bufs {
            mem.read_exact_volatile_from(addr, &mut self.file, len as usize)
                .map_err(|e| DiskError::GuestMemory {
                    addr: addr.0,
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Writes the guest buffers to the disk at `offset`.
    pub fn write_from(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        self.seek(offset)?;
        for &(addr, len) in bufs {
            mem.write_all_volatile_to(addr, &mut self.file, len as usize)
                .map_err(|e| DiskError::GuestMemory {
                    addr: addr.0,
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Waits until written data is on stable storage.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        self.file
            .sync_data()
            .map_err(|source| DiskError::Io { offset: 0, source })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> Result<(), DiskError> {
        let err = |source| DiskError::Io { offset, source };
        let off = libc::off_t::try_from(offset)
            .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let l = libc::off_t::try_from(len)
            .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `self.file`
        // and stays open for the duration of the call.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if ret != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Deallocates a range (reads back as zeroes on the file systems we care about).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        if len == 0 {
            return Ok(());
        }
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Makes a range read as zeroes.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        if len == 0 {
            return Ok(());
        }
        if unmap {
            return self.discard(offset, len);
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            // Not every file system has ZERO_RANGE; a punched hole reads as zeroes too.
            Err(_) => self.discard(offset, len),
        }
    }
}
