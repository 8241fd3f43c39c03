//! One module per fuzz target; each exposes `pub fn run(data: &[u8])`.
//!
//! A target panics only on a finding: a panic in the code under test, or a property of the
//! output that must hold for every input (checked with `assert!`). Inputs the code refuses
//! are the normal case and just return.

pub mod config;
pub mod http_api;
pub mod mmds;
pub mod qcow2;
pub mod rate_limiter;
pub mod snapshot_state;
pub mod virtio_blk;
pub mod virtio_mmio;
pub mod virtio_net_tx;
