//! Snapshot state of a virtio-blk device.
//!
//! The backing file, drive id, cache mode and engine come from the VM configuration the
//! device is rebuilt from; the state carries what the guest negotiated and saw. Async
//! requests are drained into the used ring before saving, so nothing is in flight.

use serde::{Deserialize, Serialize};

use super::device::Block;
use crate::persist::{VirtioDeviceState, VirtioPersist, VirtioStateError};

/// What a virtio-blk device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {
    pub virtio: VirtioDeviceState,
    /// Disk size in 512-byte sectors the guest was told (config space `capacity`).
    pub capacity: u64,
    /// Whether the guest saw a read-only disk.
    pub read_only: bool,
}

/// Why a saved block state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockStateError {
    #[error("block.virtio.{0}")]
    Virtio(#[from] VirtioStateError),
    #[error("block.capacity: {saved} sectors saved, but the image now has {now}")]
    Capacity { saved: u64, now: u64 },
    #[error("block.read_only: {saved} saved, but the drive is now configured {now}")]
    ReadOnly { saved: bool, now: bool },
}

impl VirtioPersist for Block {
    type State = BlockState;
    type Error = BlockStateError;

    fn quiesce(&mut self) {
        self.drain_async();
    }

    fn save_state(&self) -> BlockState {
        let queues: Vec<_> = self.active.iter().map(|a| &a.queue).collect();
        BlockState {
            virtio: VirtioDeviceState::capture(self, &queues),
            capacity: self.disk.nsectors(),
            read_only: self.disk.is_read_only(),
        }
    }

    fn validate_state(&self, state: &BlockState) -> Result<(), BlockStateError> {
        state.virtio.validate(self)?;
        let now = self.disk.nsectors();
        if state.capacity != now {
            return Err(BlockStateError::Capacity {
                saved: state.capacity,
                now,
            });
        }
        let now = self.disk.is_read_only();
        if state.read_only != now {
            return Err(BlockStateError::ReadOnly {
                saved: state.read_only,
                now,
            });
        }
        Ok(())
    }

    fn restore_state(&mut self, state: &BlockState) -> Result<(), BlockStateError> {
        // Everything else is rebuilt from the configuration; the transport applies the
        // acked features and re-activates.
        self.validate_state(state)
    }

    fn virtio_state(state: &BlockState) -> &VirtioDeviceState {
        &state.virtio
    }
}
