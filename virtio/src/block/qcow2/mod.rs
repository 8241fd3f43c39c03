//! qcow2 images with backing chains, through the `imago` crate (sync API, on the `io` thread).
//!
//! xenia checks each header (`header.rs`) and resolves the chain itself (`chain.rs`); imago
//! then gets explicitly opened files only (its implicit-open gate denies everything), so every
//! file a drive touches was chosen by xenia's policy. Why imago: see README.md beside this file.

pub mod chain;
pub mod fuzz;
pub mod header;
mod refcheck;

use std::fs::File;
use std::path::{Path, PathBuf};

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder};
use vm_memory::bitmap::{AtomicBitmap, BS};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::file::DiskError;
use super::request::SECTOR_SHIFT;
use crate::GuestMemoryMmap;

pub use chain::MAX_CHAIN;
use chain::{Link, LinkFormat};
pub use header::{HeaderError, HeaderInfo};

type Storage = imago::file::File;
type Access = FormatAccess<Storage>;

/// Why a qcow2 image (or its chain) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Header { path: PathBuf, source: HeaderError },
    #[error("{path}: not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path}: backing file `{backing}` cannot be opened: {source}")]
    Backing {
        path: PathBuf,
        backing: String,
        source: std::io::Error,
    },
    #[error("{path}: backing file `{backing}` lies outside {root}, the directory tree of the drive's image")]
    OutsideRoot {
        path: PathBuf,
        backing: String,
        root: PathBuf,
    },
    #[error("{path}: the backing chain loops (this file appears twice)")]
    Loop { path: PathBuf },
    #[error("{path}: backing chain longer than {MAX_CHAIN} images")]
    ChainTooLong { path: PathBuf },
    #[error("{path}: {detail}")]
    BackingFormat { path: PathBuf, detail: String },
    #[error("{path}: qcow2: {source}")]
    Imago {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A qcow2 image and its chain, ready for guest I/O.
pub struct Qcow2Disk {
    access: Access,
    /// The top image's fd (a duplicate of the one imago holds): `fdatasync` for flushes, and
    /// what [`Qcow2Disk::file`] hands out.
    top: File,
    virtual_size: u64,
    chain_len: usize,
    /// Whether the top image was opened for writing.
    writable: bool,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("virtual_size", &self.virtual_size)
            .field("chain_len", &self.chain_len)
            .finish()
    }
}

fn imago_err(path: &Path) -> impl Fn(std::io::Error) -> Qcow2Error + '_ {
    move |source| Qcow2Error::Imago {
        path: path.to_path_buf(),
        source,
    }
}

fn storage(link: Link, writable: bool) -> Result<(Storage, PathBuf), Qcow2Error> {
    let path = link.path;
    // Says how the fd was opened (no fcntl probe); buffered I/O, no file name (imago must
    // resolve nothing by itself).
    let opts = imago::StorageOpenOptions::new().write(writable);
    let s = Storage::from_open_file(link.file, opts).map_err(imago_err(&path))?;
    Ok((s, path))
}

impl Qcow2Disk {
    /// Opens `path` as a qcow2 image (writable unless `read_only`) with its backing chain.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Qcow2Error> {
        Self::open_with(path, !read_only, !read_only)
    }

    /// Pre-flight check (e.g. at `PUT /drives`): opens the whole chain read-only, applying
    /// the rules of a writer unless `read_only`, and closes it again.
    pub fn validate(path: &Path, read_only: bool) -> Result<(), Qcow2Error> {
        Self::open_with(path, false, !read_only).map(drop)
    }

    fn open_with(path: &Path, writable: bool, will_write: bool) -> Result<Self, Qcow2Error> {
        let read_only = !writable;
        let mut links = chain::open_chain(path, writable, will_write)?;
        let chain_len = links.len();
        let top = links[0].file.try_clone().map_err(|source| Qcow2Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // Open bottom-up: each qcow2 image gets the image below as its explicit backing.
        let mut below: Option<Access> = None;
        while let Some(link) = links.pop() {
            let writable = links.is_empty() && !read_only;
            let format = link.format;
            let (s, p) = storage(link, writable)?;
            let access = match format {
                LinkFormat::Raw => {
                    let raw = Raw::builder(s)
                        .write(false)
                        .open(DenyImplicitOpenGate::default())
                        .map_err(imago_err(&p))?;
                    FormatAccess::new(raw)
                }
                LinkFormat::Qcow2 => {
                    let q = Qcow2::<Storage>::builder(s)
                        .write(writable)
                        .backing(below.take())
                        .data_file(None)
                        .open(DenyImplicitOpenGate::default())
                        .map_err(imago_err(&p))?;
                    FormatAccess::new(q)
                }
            };
            below = Some(access);
        }
        let access = below.ok_or_else(|| Qcow2Error::ChainTooLong {
            path: path.to_path_buf(),
        })?;
        let virtual_size = access.size();
        Ok(Qcow2Disk {
            access,
            top,
            virtual_size,
            chain_len,
            writable,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn nsectors(&self) -> u64 {
        self.virtual_size >> SECTOR_SHIFT
    }

    /// Images in the chain (top included).
    pub fn chain_len(&self) -> usize {
        self.chain_len
    }

    /// The top image file.
    pub fn file(&self) -> &File {
        &self.top
    }

    fn slices<'m>(
        mem: &'m GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<Vec<VolatileSlice<'m, BS<'m, AtomicBitmap>>>, DiskError> {
        let mut out = Vec::with_capacity(bufs.len());
        for &(addr, len) in bufs {
            for s in mem.get_slices(addr, len as usize) {
                out.push(s.map_err(|e| DiskError::GuestMemory {
                    addr: addr.0,
                    reason: e.to_string(),
                })?);
            }
        }
        Ok(out)
    }

    /// Reads the virtual disk at `offset` into the guest buffers (falling through the chain).
    pub fn read_into(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        let slices = Self::slices(mem, bufs)?;
        let (iov, _guard) = IoVectorMut::from_volatile_slice(slices.iter());
        self.access
            .readv(iov, offset)
            .map_err(|source| DiskError::Io { offset, source })
    }

    /// Writes the guest buffers at `offset` (allocating clusters in the top image).
    pub fn write_from(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        self.check_writable(offset)?;
        let slices = Self::slices(mem, bufs)?;
        let (iov, _guard) = IoVector::from_volatile_slice(slices.iter());
        self.access
            .writev(iov, offset)
            .map_err(|source| DiskError::Io { offset, source })
    }

    /// A read-only image is never asked to change: imago would still try to allocate for a
    /// write on an image opened read-only (found by the `qcow2` fuzz target, where a crafted
    /// image made that allocation recurse without bound).
    fn check_writable(&self, offset: u64) -> Result<(), DiskError> {
        if self.writable {
            Ok(())
        } else {
            Err(DiskError::Io {
                offset,
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the qcow2 image is open read-only",
                ),
            })
        }
    }

    fn datasync(&self) -> Result<(), DiskError> {
        self.top
            .sync_data()
            .map_err(|source| DiskError::Io { offset: 0, source })
    }

    /// Makes every completed write durable, data and metadata: guest data first (so no
    /// table written below can point at clusters whose contents are not yet stable), then
    /// imago's cached L2 tables and refcount blocks, then the file again.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        self.datasync()?;
        self.access
            .flush()
            .map_err(|source| DiskError::Io { offset: 0, source })?;
        self.datasync()
    }

    /// Writes imago's cached L2 tables and refcount blocks to the file (no barrier).
    pub fn write_back(&mut self) -> Result<(), DiskError> {
        self.access
            .flush()
            .map_err(|source| DiskError::Io { offset: 0, source })
    }

    /// Discard: the range reads back as zeroes (zero clusters where whole clusters are
    /// covered; the backing image no longer shows through).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        if len == 0 {
            return Ok(());
        }
        self.check_writable(offset)?;
        self.access
            .discard_to_zero(offset, len)
            .map_err(|source| DiskError::Io { offset, source })
    }

    /// Write-zeroes: with `unmap` the clusters are freed, otherwise they stay allocated.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        if len == 0 {
            return Ok(());
        }
        self.check_writable(offset)?;
        if unmap {
            return self.discard(offset, len);
        }
        self.access
            .write_zeroes(offset, len)
            .map_err(|source| DiskError::Io { offset, source })
    }
}

#[cfg(test)]
mod tests;
