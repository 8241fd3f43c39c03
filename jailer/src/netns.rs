//! `--netns`: join an existing network namespace (e.g. one made by `ip netns add`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("join network namespace {path} (is it a network namespace handle?): {source}")]
    Join { path: PathBuf, source: io::Error },
}

/// Joins the network namespace at `path`; the fd is closed again on return.
pub fn join(path: &Path) -> Result<(), NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    sys::setns(file.as_raw_fd(), libc::CLONE_NEWNET).map_err(|source| NetnsError::Join {
        path: path.to_path_buf(),
        source,
    })
}
