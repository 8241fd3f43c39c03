//! The backing chain, resolved by xenia's policy before imago sees any file.
//!
//! - Only the chain recorded in the images is followed, each backing format must be recorded
//!   (`qemu-img create -F`): a format is never guessed from bytes a guest may have written.
//! - Names resolve relative to the directory of the image that records them; the canonical
//!   path of every backing file must lie inside the top image's directory tree (in a jail,
//!   that tree is inside the jail's root).
//! - At most [`MAX_CHAIN`] images; a file met twice (same device and inode) is a loop.
//! - Backing files are opened read-only; only the top image may be writable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
    pub path: PathBuf,
    pub format: LinkFormat,
    pub file: File,
    /// `Some` for qcow2 links.
    pub header: Option<HeaderInfo>,
}

fn open(path: &Path, writable: bool) -> Result<File, Qcow2Error> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| Qcow2Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads and checks the qcow2 header of `file`.
pub fn read_header(path: &Path, file: &File, writable: bool) -> Result<HeaderInfo, Qcow2Error> {
    let io = |source| Qcow2Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io)?.len();
    let want = len.min(MAX_HEADER_READ) as usize;
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    buf.truncate(got);
    header::parse(&buf, len, writable).map_err(|source| Qcow2Error::Header {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens `top` (a qcow2 image) and every image below it, top first. `writable`: open the top
/// image for writing; `will_write`: check its header as an image that will be written (a
/// pre-flight check opens read-only but applies the writer's rules).
pub fn open_chain(top: &Path, writable: bool, will_write: bool) -> Result<Vec<Link>, Qcow2Error> {
    let canon = |p: &Path| {
        p.canonicalize().map_err(|source| Qcow2Error::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let top_canon = canon(top)?;
    let root = top_canon
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut links: Vec<Link> = Vec::new();
    let mut path = top_canon;
    let mut format = LinkFormat::Qcow2;
    let mut write = writable;
    let mut check_write = will_write;
    loop {
        if links.len() == MAX_CHAIN {
            return Err(Qcow2Error::ChainTooLong {
                path: top.to_path_buf(),
            });
        }
        let file = open(&path, write)?;
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
        let dir = path.parent().unwrap_or(Path::new("/"));
        let candidate = dir.join(&name);
        let resolved = candidate
            .canonicalize()
            .map_err(|source| Qcow2Error::Backing {
                path: path.clone(),
                backing: name.clone(),
                source,
            })?;
        if !resolved.starts_with(&root) {
            return Err(Qcow2Error::OutsideRoot {
                path,
                backing: name,
                root,
            });
        }
        path = resolved;
        write = false;
        check_write = false;
    }
}
