//! virtio-blk over a raw image file.
//!
//! - `device.rs`: features, config space, activation, runtime updates (`PATCH`).
//! - `event_handler.rs`: what runs on the `io` thread.
//! - `request.rs`: descriptor-chain parsing and validation.
//! - `file.rs`: the image and the synchronous backend; `io_uring.rs`: the async engine.
//! - `disk.rs`: raw or qcow2, as the drive's `image_format` says; `qcow2/`: overlays.
//! - `persist.rs`: snapshot state.

mod device;
pub mod disk;
mod event_handler;
pub mod file;
pub mod io_uring;
pub mod metrics;
mod persist;
pub mod qcow2;
pub mod request;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_alloc;
#[cfg(test)]
mod tests_hardening;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use device::{Block, BlockError, BLOCK_QUEUE_SIZE};
pub use metrics::{BlockMetrics, BlockMetricsSnapshot};
pub use persist::{BlockState, BlockStateError};

use crate::rate_limiter::RateLimiterConfig;

/// Host caching strategy, with Firecracker's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CacheType {
    /// `VIRTIO_BLK_F_FLUSH` is not offered: the guest never asks for flushes.
    #[default]
    Unsafe,
    /// `VIRTIO_BLK_F_FLUSH` is offered; a completed flush means `fdatasync` returned.
    Writeback,
}

/// How requests reach the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking reads and writes on the `io` thread.
    #[default]
    Sync,
    /// io_uring; completions come back through the ring's eventfd on the `io` loop.
    Async,
}

/// How the image file is interpreted: set by the drive's configuration, never probed from the
/// file's contents (a guest could write any header into a raw disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ImageFormat {
    #[default]
    Raw,
    /// qcow2 v2/v3 with an optional backing chain (Sync engine only).
    Qcow2,
}

/// Everything needed to build a block device (the VMM converts its drive config to this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Drive id; also the `GET_ID` answer (cut or zero-padded to 20 bytes).
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_read_only: bool,
    pub cache_type: CacheType,
    pub io_engine: IoEngine,
    pub image_format: ImageFormat,
    pub rate_limiter: Option<RateLimiterConfig>,
}
