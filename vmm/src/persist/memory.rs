//! The memory file: writing guest RAM sparsely (Full) or only its dirty pages (Diff), and
//! mapping it back `MAP_PRIVATE` on restore.
//!
//! Which pages a Full snapshot writes: those the process has (present or swapped out, from
//! `/proc/self/pagemap`, which sees every write whoever made it: the guest through KVM or the
//! VMM's threads) plus, for a VM that was itself restored, the pages with data in the memory
//! file it maps (not faulted in yet, so absent from pagemap). Pages that read as zero are
//! left as holes, so a guest that touched 50 MiB of 1 GiB costs ~50 MiB of disk and write.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio::{GuestMemoryMmap, GuestRegionMmap};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::mmap::NewBitmap;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use super::{RegionState, PAGE_SIZE};

/// Largest single `pwrite` (runs of pages are split into these).
const MAX_WRITE: usize = 8 << 20;
/// pagemap entries read per `pread`.
const PAGEMAP_CHUNK: usize = 64 * 1024;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;

/// Errors while writing or mapping the memory file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("mem_file_path `{path}`: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot read /proc/self/pagemap: {0}")]
    Pagemap(std::io::Error),
    #[error(
        "memory file `{path}` is {got} bytes, shorter than the {want} bytes of guest memory the \
         snapshot describes"
    )]
    TooShort { path: String, got: u64, want: u64 },
    #[error("memory file `{path}` is not a regular file")]
    NotAFile { path: String },
    #[error("cannot map memory file `{path}`: {reason}")]
    Map { path: String, reason: String },
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
}

/// What a memory-file write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Bytes of guest memory written (the rest are holes).
    pub bytes_written: u64,
    /// The file's length (all of guest memory).
    pub file_len: u64,
}

/// The regions of `mem` as the snapshot describes them: back to back in the file.
pub fn region_states(mem: &GuestMemoryMmap) -> Vec<RegionState> {
    let mut offset = 0;
    mem.iter()
        .map(|r| {
            let s = RegionState {
                guest_addr: r.start_addr().0,
                size: r.len(),
                file_offset: offset,
            };
            offset += r.len();
            s
        })
        .collect()
}

/// Where a restored VM's memory comes from, for the pages this process has not touched yet.
#[derive(Debug, Clone)]
pub enum MemorySource {
    /// The memory file it maps: pages with data in it are guest memory.
    File(Arc<File>),
    /// A Uffd page-fault handler: any page may hold data; reading one faults it in.
    Uffd,
}

fn host_range(mem: &GuestMemoryMmap, r: &RegionState) -> Result<(*mut u8, usize), MemoryFileError> {
    let region = mem
        .find_region(GuestAddress(r.guest_addr))
        .ok_or(MemoryFileError::HostAddress(r.guest_addr))?;
    let host = region
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|_| MemoryFileError::HostAddress(r.guest_addr))?;
    let len =
        usize::try_from(region.len()).map_err(|_| MemoryFileError::HostAddress(r.guest_addr))?;
    Ok((host, len))
}

/// One bit per page of `len` bytes at host address `host`: set where the process has the page
/// (present or swapped), per /proc/self/pagemap.
fn resident_pages(pagemap: &File, host: usize, len: usize) -> Result<Vec<u64>, MemoryFileError> {
    let pages = len.div_ceil(PAGE_SIZE as usize);
    let mut bits = vec![0u64; pages.div_ceil(64)];
    let first = host / PAGE_SIZE as usize;
    let mut buf = vec![0u8; PAGEMAP_CHUNK * 8];
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(PAGEMAP_CHUNK);
        let bytes = &mut buf[..n * 8];
        pagemap
            .read_exact_at(bytes, ((first + done) * 8) as u64)
            .map_err(MemoryFileError::Pagemap)?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(entry);
            if u64::from_le_bytes(w) & (PM_PRESENT | PM_SWAPPED) != 0 {
                let p = done + i;
                bits[p / 64] |= 1 << (p % 64);
            }
        }
        done += n;
    }
    Ok(bits)
}

/// Sets the bits of the pages of `[offset, offset + len)` of `file` that hold data (SEEK_DATA).
fn mark_file_data(file: &File, offset: u64, len: u64, bits: &mut [u64]) -> std::io::Result<()> {
    let end = offset + len;
    let mut pos = offset;
    let fd = file.as_raw_fd();
    while pos < end {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after `pos`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(())
            } else {
                Err(e)
            };
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        let first = (data - offset) / PAGE_SIZE;
        let last = (hole - offset).div_ceil(PAGE_SIZE);
        for p in first..last {
            bits[(p / 64) as usize] |= 1 << (p % 64);
        }
        pos = hole;
    }
    Ok(())
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets the middle.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn create_file(path: &str) -> Result<File, MemoryFileError> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|source| MemoryFileError::Io {
            path: path.to_owned(),
            what: "cannot create",
            source,
        })
}

/// Writes the pages of `[host, host+len)` selected by `bits` at `file_offset` in `out`,
/// coalescing runs; with `skip_zero`, pages that read as zero stay holes.
#[allow(clippy::too_many_arguments)]
fn write_pages(
    out: &File,
    path: &str,
    host: *const u8,
    len: usize,
    file_offset: u64,
    bits: &[u64],
    skip_zero: bool,
    runs: &mut Vec<(u64, u64)>,
) -> Result<u64, MemoryFileError> {
    let page = PAGE_SIZE as usize;
    let pages = len / page;
    // SAFETY: [host, host + len) is one guest memory region mapped for the life of the VM;
    // the vCPUs are paused, so the guest does not change it while it is read.
    let memory = unsafe { std::slice::from_raw_parts(host, len) };
    let mut written = 0u64;
    let mut run_start: Option<usize> = None;
    let mut flush = |start: usize, end: usize, written: &mut u64| -> Result<(), MemoryFileError> {
        runs.push((
            file_offset + (start * page) as u64,
            ((end - start) * page) as u64,
        ));
        let mut at = start * page;
        let stop = end * page;
        while at < stop {
            let n = (stop - at).min(MAX_WRITE);
            out.write_all_at(&memory[at..at + n], file_offset + at as u64)
                .map_err(|source| MemoryFileError::Io {
                    path: path.to_owned(),
                    what: "write failed",
                    source,
                })?;
            *written += n as u64;
            at += n;
        }
        Ok(())
    };
    for p in 0..pages {
        let selected = bits[p / 64] & (1 << (p % 64)) != 0
            && !(skip_zero && is_zero(&memory[p * page..(p + 1) * page]));
        match (selected, run_start) {
            (true, None) => run_start = Some(p),
            (false, Some(s)) => {
                flush(s, p, &mut written)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run_start {
        flush(s, pages, &mut written)?;
    }
    Ok(written)
}

fn finish(out: &File, path: &str, file_len: u64) -> Result<(), MemoryFileError> {
    out.set_len(file_len)
        .map_err(|source| MemoryFileError::Io {
            path: path.to_owned(),
            what: "cannot set its length",
            source,
        })?;
    out.sync_all().map_err(|source| MemoryFileError::Io {
        path: path.to_owned(),
        what: "fsync failed",
        source,
    })
}

/// Writes a Full memory file: every page the guest has, holes elsewhere; fsynced.
pub fn write_full(
    mem: &GuestMemoryMmap,
    path: &str,
    source: Option<&MemorySource>,
) -> Result<WriteStats, MemoryFileError> {
    let regions = region_states(mem);
    let out = create_file(path)?;
    let file_len: u64 = regions.iter().map(|r| r.size).sum();
    // The length first: the file is sparse from the start and writes fill it in.
    out.set_len(file_len)
        .map_err(|source| MemoryFileError::Io {
            path: path.to_owned(),
            what: "cannot set its length",
            source,
        })?;
    let pagemap = File::open("/proc/self/pagemap").map_err(MemoryFileError::Pagemap)?;
    let mut written = 0;
    for r in &regions {
        let (host, len) = host_range(mem, r)?;
        let mut bits = resident_pages(&pagemap, host as usize, len)?;
        match source {
            Some(MemorySource::File(file)) => {
                mark_file_data(file, r.file_offset, r.size, &mut bits).map_err(|source| {
                    MemoryFileError::Io {
                        path: "(the restored memory file)".into(),
                        what: "SEEK_DATA failed",
                        source,
                    }
                })?
            }
            // Every page: those not faulted in yet are read through the handler.
            Some(MemorySource::Uffd) => bits.fill(u64::MAX),
            None => {}
        }
        let mut runs = Vec::new();
        written += write_pages(&out, path, host, len, r.file_offset, &bits, true, &mut runs)?;
    }
    finish(&out, path, file_len)?;
    Ok(WriteStats {
        bytes_written: written,
        file_len,
    })
}

/// Writes a Diff memory file: only the pages set in `dirty` (one bitmap per region, one bit
/// per page), at their usual offsets, holes elsewhere; fsynced. Dirty pages are written even
/// when they are zero. Returns the (file offset, length) runs written: the state file keeps
/// them, since a file system may allocate more than was written (whole blocks), so holes
/// alone cannot tell a merge which pages the diff holds.
pub fn write_diff(
    mem: &GuestMemoryMmap,
    path: &str,
    dirty: &[Vec<u64>],
) -> Result<(WriteStats, Vec<(u64, u64)>), MemoryFileError> {
    let regions = region_states(mem);
    let out = create_file(path)?;
    let file_len: u64 = regions.iter().map(|r| r.size).sum();
    out.set_len(file_len)
        .map_err(|source| MemoryFileError::Io {
            path: path.to_owned(),
            what: "cannot set its length",
            source,
        })?;
    let mut written = 0;
    let mut runs = Vec::new();
    for (r, bits) in regions.iter().zip(dirty) {
        let (host, len) = host_range(mem, r)?;
        if bits.len() * 64 < len / PAGE_SIZE as usize {
            return Err(MemoryFileError::Map {
                path: path.to_owned(),
                reason: "dirty bitmap shorter than its region".into(),
            });
        }
        written += write_pages(&out, path, host, len, r.file_offset, bits, false, &mut runs)?;
    }
    finish(&out, path, file_len)?;
    Ok((
        WriteStats {
            bytes_written: written,
            file_len,
        },
        runs,
    ))
}

/// Opens the memory file for a restore and checks it covers `want` bytes.
pub fn open_memory_file(path: &str, want: u64) -> Result<File, MemoryFileError> {
    let file = File::open(path).map_err(|source| MemoryFileError::Io {
        path: path.to_owned(),
        what: "cannot open",
        source,
    })?;
    let meta = file.metadata().map_err(|source| MemoryFileError::Io {
        path: path.to_owned(),
        what: "cannot stat",
        source,
    })?;
    if !meta.is_file() {
        return Err(MemoryFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    if meta.len() < want {
        return Err(MemoryFileError::TooShort {
            path: path.to_owned(),
            got: meta.len(),
            want,
        });
    }
    Ok(file)
}

/// Maps `file` as guest memory, `MAP_PRIVATE`: nothing is read now, pages fault in from the
/// page cache and guest writes are copy-on-write (the file never changes).
pub fn map_memory_file(
    file: Arc<File>,
    path: &str,
    regions: &[RegionState],
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let map_err = |reason: String| MemoryFileError::Map {
        path: path.to_owned(),
        reason,
    };
    let mut out = Vec::with_capacity(regions.len());
    for r in regions {
        let len = usize::try_from(r.size).map_err(|_| map_err("region too large".into()))?;
        let mapping = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        out.push(
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
                .ok_or_else(|| map_err("region wraps the address space".into()))?,
        );
    }
    GuestMemoryMmap::from_regions(out).map_err(|e| map_err(e.to_string()))
}

/// Copies the `runs` (file offset, length) of a Diff memory file onto `base` at the same
/// offsets: the diff merged onto the Full (or already merged) file it was taken after. Both
/// files must cover `len` bytes. Returns the bytes copied; `base` is fsynced.
pub fn merge_diff(base: &File, diff: &File, runs: &[(u64, u64)], len: u64) -> std::io::Result<u64> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    if base.metadata()?.len() < len {
        return Err(invalid(format!(
            "the base memory file is shorter than {len} bytes"
        )));
    }
    if diff.metadata()?.len() < len {
        return Err(invalid(format!(
            "the diff memory file is shorter than {len} bytes"
        )));
    }
    let mut buf = vec![0u8; MAX_WRITE];
    let mut copied = 0;
    for &(offset, run) in runs {
        if offset.checked_add(run).is_none_or(|end| end > len) {
            return Err(invalid(format!(
                "diff run {offset:#x}+{run:#x} lies outside the {len}-byte memory"
            )));
        }
        let mut at = offset;
        while at < offset + run {
            let n = (offset + run - at).min(MAX_WRITE as u64) as usize;
            diff.read_exact_at(&mut buf[..n], at)?;
            base.write_all_at(&buf[..n], at)?;
            at += n as u64;
            copied += n as u64;
        }
    }
    base.sync_all()?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use vm_memory::Bytes;

    use super::*;
    use crate::config::HugePages;
    use crate::vstate::memory::create_guest_memory;

    fn temp(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("xenia-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name).to_string_lossy().into_owned()
    }

    #[test]
    fn a_full_file_holds_written_pages_and_holes_elsewhere() {
        let mem = create_guest_memory(64 << 20, HugePages::None).unwrap();
        for i in 0..16u64 {
            mem.write_obj(0xabcd_0000 + i, GuestAddress(i * 0x10_0000))
                .unwrap();
        }
        let path = temp("full.mem");
        let stats = write_full(&mem, &path, None).unwrap();
        assert_eq!(stats.file_len, 64 << 20);
        assert_eq!(stats.bytes_written, 16 * PAGE_SIZE);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        // Allocated blocks: the 16 pages, not 64 MiB (some slack for file-system metadata).
        assert!(
            meta.blocks() * 512 <= 64 * PAGE_SIZE,
            "{} blocks",
            meta.blocks()
        );

        let file = Arc::new(open_memory_file(&path, 64 << 20).unwrap());
        let back = map_memory_file(file.clone(), &path, &region_states(&mem)).unwrap();
        for i in 0..16u64 {
            let v: u64 = back.read_obj(GuestAddress(i * 0x10_0000)).unwrap();
            assert_eq!(v, 0xabcd_0000 + i);
        }
        // Copy-on-write: writing the mapping leaves the file as it was.
        back.write_obj(7u64, GuestAddress(0)).unwrap();
        let again = map_memory_file(file.clone(), &path, &region_states(&mem)).unwrap();
        assert_eq!(again.read_obj::<u64>(GuestAddress(0)).unwrap(), 0xabcd_0000);

        // A Full snapshot of the restored VM keeps the pages it never touched (they are only
        // in the source file) and the one it wrote.
        let path2 = temp("full2.mem");
        let src = MemorySource::File(file);
        write_full(&back, &path2, Some(&src)).unwrap();
        let f2 = Arc::new(open_memory_file(&path2, 64 << 20).unwrap());
        let m2 = map_memory_file(f2, &path2, &region_states(&mem)).unwrap();
        assert_eq!(m2.read_obj::<u64>(GuestAddress(0)).unwrap(), 7);
        assert_eq!(
            m2.read_obj::<u64>(GuestAddress(0x50_0000)).unwrap(),
            0xabcd_0005
        );
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&path2);
    }

    #[test]
    fn a_short_memory_file_is_refused_by_name() {
        let path = temp("short.mem");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let e = open_memory_file(&path, 8192).unwrap_err();
        assert!(e.to_string().contains("shorter"), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_diff_merged_onto_its_base_equals_the_full() {
        let mem = create_guest_memory(8 << 20, HugePages::None).unwrap();
        mem.write_obj(1u64, GuestAddress(0)).unwrap();
        mem.write_obj(2u64, GuestAddress(0x1000)).unwrap();
        let base = temp("base.mem");
        write_full(&mem, &base, None).unwrap();
        // Page 1 changes to zero, page 5 gets data.
        mem.write_obj(0u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(5u64, GuestAddress(0x5000)).unwrap();
        let mut dirty = vec![0u64; (8 << 20) / 4096 / 64];
        dirty[0] = (1 << 1) | (1 << 5);
        let diff = temp("diff.mem");
        let (_, runs) = write_diff(&mem, &diff, &[dirty]).unwrap();
        assert_eq!(runs, vec![(0x1000, 0x1000), (0x5000, 0x1000)]);
        let full = temp("full-now.mem");
        write_full(&mem, &full, None).unwrap();
        let b = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&base)
            .unwrap();
        let d = File::open(&diff).unwrap();
        assert_eq!(merge_diff(&b, &d, &runs, 8 << 20).unwrap(), 2 * PAGE_SIZE);
        assert!(merge_diff(&b, &d, &[(8 << 20, 4096)], 8 << 20).is_err());
        assert_eq!(std::fs::read(&base).unwrap(), std::fs::read(&full).unwrap());
        for p in [base, diff, full] {
            let _ = std::fs::remove_file(p);
        }
    }
}
