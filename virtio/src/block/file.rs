//! The raw disk image and the synchronous I/O backend.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryBackend};

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
    #[error("{path} is neither a regular file nor a block device")]
    NotADisk { path: PathBuf },
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
    /// iovec array reused by every read and write (no allocation per request).
    iovs: IoVecScratch,
}

/// The iovec array of the request being transferred; empty between requests, so no pointer
/// into guest memory outlives the call that made it.
#[derive(Default)]
struct IoVecScratch(Vec<libc::iovec>);

// SAFETY: the vector is empty except during one `read_into`/`write_from` call on the thread
// that owns the disk; the pointers it holds then are never dereferenced by Rust code.
unsafe impl Send for IoVecScratch {}

impl std::fmt::Debug for IoVecScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoVecScratch")
            .field("capacity", &self.0.capacity())
            .finish()
    }
}

/// iovecs kept allocated between requests: one per data buffer of a full request (buffers
/// that straddle a memory-region boundary need one more each, and grow it once).
const IOV_SCRATCH: usize = super::request::SEG_MAX as usize;

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
        let size_err = |source| DiskError::Size {
            path: path.to_path_buf(),
            source,
        };
        let file_type = file.metadata().map_err(size_err)?.file_type();
        let len = if file_type.is_block_device() {
            // A block device's inode size is 0: its capacity is where its end is.
            (&file).seek(SeekFrom::End(0)).map_err(size_err)?
        } else if file_type.is_file() {
            file.metadata().map_err(size_err)?.len()
        } else {
            return Err(DiskError::NotADisk {
                path: path.to_path_buf(),
            });
        };
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
            iovs: IoVecScratch(Vec::with_capacity(IOV_SCRATCH)),
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

    /// Reads the disk at `offset` into the guest buffers (`preadv`: the file offset is
    /// neither used nor moved).
    pub fn read_into(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        let iovs = &mut self.iovs.0;
        let res = guest_iovecs(mem, bufs, iovs)
            .and_then(|()| transfer(self.file.as_raw_fd(), iovs, offset, Direction::Read));
        iovs.clear();
        res
    }

    /// Writes the guest buffers to the disk at `offset` (`pwritev`).
    pub fn write_from(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        let iovs = &mut self.iovs.0;
        let res = guest_iovecs(mem, bufs, iovs)
            .and_then(|()| transfer(self.file.as_raw_fd(), iovs, offset, Direction::Write));
        iovs.clear();
        res
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

/// Fills `iovs` with iovecs covering the guest buffers (one per contiguous host piece). The
/// parser bounds the buffers at `seg_max`, so this stays small.
fn guest_iovecs(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
    iovs: &mut Vec<libc::iovec>,
) -> Result<(), DiskError> {
    iovs.clear();
    for &(addr, len) in bufs {
        for slice in GuestMemoryBackend::get_slices(mem, addr, len as usize) {
            let slice = slice.map_err(|e| DiskError::GuestMemory {
                addr: addr.0,
                reason: e.to_string(),
            })?;
            iovs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// The kernel's `UIO_MAXIOV`.
const IOV_MAX: usize = 1024;

/// `preadv`/`pwritev` of every byte `iovs` covers at `offset`, resuming after short
/// transfers. Reaching the end of the file early is an error (the parser checked the range
/// against the capacity, so the file shrank under us).
fn transfer(
    fd: libc::c_int,
    iovs: &mut [libc::iovec],
    mut offset: u64,
    dir: Direction,
) -> Result<(), DiskError> {
    let mut first = 0;
    while first < iovs.len() {
        if iovs[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let batch = &iovs[first..iovs.len().min(first + IOV_MAX)];
        let err = |source| DiskError::Io { offset, source };
        let off = libc::off_t::try_from(offset)
            .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // The batch is at most IOV_MAX long.
        let count = batch.len() as libc::c_int;
        // SAFETY: every iovec points into guest memory that stays mapped for the call (the
        // caller holds the memory), with the length of the slice it was built from; `count`
        // is the batch's exact length. preadv writes only inside those buffers; pwritev only
        // reads them.
        let n = unsafe {
            match dir {
                Direction::Read => libc::preadv(fd, batch.as_ptr(), count, off),
                Direction::Write => libc::pwritev(fd, batch.as_ptr(), count, off),
            }
        };
        let mut n = match usize::try_from(n) {
            Ok(0) => return Err(err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))),
            Ok(n) => n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err(e));
            }
        };
        offset += n as u64;
        // Skip what was transferred; the first iovec left may be partly done.
        while n > 0 && first < iovs.len() {
            let iov = &mut iovs[first];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                iov.iov_len = 0;
                first += 1;
            } else {
                // SAFETY: `n` < `iov_len`, so the advanced pointer stays inside the buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}
