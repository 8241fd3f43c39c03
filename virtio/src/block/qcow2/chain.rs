//! The backing chain, resolved by xenia's policy before imago sees any file.
//!
//! - Only the chain recorded in the images is followed, each backing format must be recorded
//!   (`qemu-img create -F`): a format is never guessed from bytes a guest may have written.
//! - Names resolve relative to the directory of the image that records them, and must stay
//!   inside the top image's directory tree: backing files are opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` on that directory, so the kernel refuses
//!   `..` and symlinks leading out of it (no path-check-then-open race). An absolute name is
//!   accepted only when it lies lexically under the top image's (absolute) directory.
//! - At most [`MAX_CHAIN`] images; a file met twice (same device and inode) is a loop.
//! - Backing files are opened read-only; only the top image may be writable.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::header::{self, HeaderInfo, MAX_HEADER_READ};
use super::Qcow2Error;

/// Images in a chain, the top one included.
pub const MAX_CHAIN: usize = 16;

/// Format of one image in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFormat {
    Raw,
    Qcow2,
}

/// One opened image of the chain.
#[derive(Debug)]
pub struct Link {
    /// As given (top) or as recorded (backing files), for messages.
    pub path: PathBuf,
    pub format: LinkFormat,
    pub file: File,
    /// `Some` for qcow2 links.
    pub header: Option<HeaderInfo>,
}

/// Opens `rel` beneath the directory `root` (read-only).
fn open_beneath(root: &OwnedFd, rel: &Path) -> std::io::Result<File> {
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zeroed is its documented "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the path is a NUL-terminated string and `how` a valid open_how that both live
    // across the call; the size passed is the struct's; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: openat2 just returned this fd; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Reads up to `buf.len()` bytes at `offset` with `preadv` (the call the `io` thread's filter
/// already allows for imago), retrying on EINTR; returns the bytes read.
pub(super) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let off = libc::off_t::try_from(offset + got as u64)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: one iovec describing `rest`, which is valid for writes of its length and
        // outlives the call; the fd is owned by `file`.
        let n = unsafe { libc::preadv(file.as_raw_fd(), &iov, 1, off) };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(got)
}

/// Reads and checks the qcow2 header of `file`.
pub fn read_header(path: &Path, file: &File, writable: bool) -> Result<HeaderInfo, Qcow2Error> {
    let io = |source| Qcow2Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io)?.len();
    let mut buf = vec![0u8; len.min(MAX_HEADER_READ) as usize];
    let got = read_at(file, &mut buf, 0).map_err(io)?;
    buf.truncate(got);
    let header_err = |source| Qcow2Error::Header {
        path: path.to_path_buf(),
        source,
    };
    let info = header::parse(&buf, len, writable).map_err(header_err)?;
    if writable {
        super::refcheck::check(file, len, &info).map_err(header_err)?;
    }
    Ok(info)
}

/// Where a backing name points, relative to the top image's directory; `None` when it
/// leaves that tree lexically (an absolute name elsewhere, or too many `..`).
fn relative_target(root: &Path, dir: &Path, name: &str) -> Option<PathBuf> {
    let name = Path::new(name);
    let joined = if name.is_absolute() {
        if !root.is_absolute() {
            return None;
        }
        name.strip_prefix(root).ok()?.to_path_buf()
    } else {
        dir.join(name)
    };
    // Lexical normalisation; symlinks are the kernel's business (RESOLVE_BENEATH).
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Opens `top` (a qcow2 image) and every image below it, top first. `writable`: open the top
/// image for writing; `will_write`: check its header as an image that will be written (a
/// pre-flight check opens read-only but applies the writer's rules).
pub fn open_chain(top: &Path, writable: bool, will_write: bool) -> Result<Vec<Link>, Qcow2Error> {
    let root_path = match top.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let root = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&root_path)
        .map(OwnedFd::from)
        .map_err(|source| Qcow2Error::Io {
            path: root_path.clone(),
            source,
        })?;
    let top_file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_CLOEXEC)
        .open(top)
        .map_err(|source| Qcow2Error::Io {
            path: top.to_path_buf(),
            source,
        })?;

    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut links: Vec<Link> = Vec::new();
    let mut file = top_file;
    let mut path = top.to_path_buf();
    // The current image's directory relative to `root`.
    let mut rel_dir = PathBuf::new();
    let mut format = LinkFormat::Qcow2;
    let mut check_write = will_write;
    loop {
        let meta = file.metadata().map_err(|source| Qcow2Error::Io {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(Qcow2Error::NotRegular { path });
        }
        let id = (meta.dev(), meta.ino());
        if seen.contains(&id) {
            return Err(Qcow2Error::Loop { path });
        }
        seen.push(id);
        let header = match format {
            LinkFormat::Raw => None,
            LinkFormat::Qcow2 => Some(read_header(&path, &file, check_write)?),
        };
        let next = header.as_ref().and_then(|h| {
            h.backing_file
                .clone()
                .map(|b| (b, h.backing_format.clone()))
        });
        links.push(Link {
            path: path.clone(),
            format,
            file,
            header,
        });
        let Some((name, fmt)) = next else {
            return Ok(links);
        };
        if links.len() == MAX_CHAIN {
            return Err(Qcow2Error::ChainTooLong {
                path: top.to_path_buf(),
            });
        }
        format = match fmt.as_deref() {
            Some("raw") | Some("file") => LinkFormat::Raw,
            Some("qcow2") => LinkFormat::Qcow2,
            Some(other) => {
                return Err(Qcow2Error::BackingFormat {
                    path,
                    detail: format!("backing format `{other}` is not supported (raw, qcow2)"),
                })
            }
            None => {
                return Err(Qcow2Error::BackingFormat {
                    path,
                    detail: "no backing format recorded; xenia never guesses one \
                             (create the overlay with `qemu-img create -F raw|qcow2`)"
                        .into(),
                })
            }
        };
        let outside = |path: PathBuf, name: String| Qcow2Error::OutsideRoot {
            path,
            backing: name,
            root: root_path.clone(),
        };
        let Some(rel) = relative_target(&root_path, &rel_dir, &name) else {
            return Err(outside(path, name));
        };
        file = match open_beneath(&root, &rel) {
            Ok(f) => f,
            // EXDEV: a symlink or `..` resolved outside the tree; ELOOP: a magic link.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::ELOOP)) => {
                return Err(outside(path, name))
            }
            Err(source) => {
                return Err(Qcow2Error::Backing {
                    path,
                    backing: name,
                    source,
                })
            }
        };
        rel_dir = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        path = root_path.join(&rel);
        check_write = false;
    }
}
