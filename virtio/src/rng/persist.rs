//! Snapshot state of the entropy device: only what the guest negotiated and its queue.
//! Requests are served synchronously, so nothing is in flight when the device is locked.
//! The rate limiter starts full again after a restore (its budget is not saved).

use serde::{Deserialize, Serialize};

use super::Rng;
use crate::persist::{VirtioDeviceState, VirtioPersist, VirtioStateError};

/// What the entropy device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    pub virtio: VirtioDeviceState,
}

/// Why a saved entropy state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RngStateError {
    #[error("entropy.virtio.{0}")]
    Virtio(#[from] VirtioStateError),
}

impl VirtioPersist for Rng {
    type State = RngState;
    type Error = RngStateError;

    fn quiesce(&mut self) {}

    fn save_state(&self) -> RngState {
        let queues: Vec<_> = self.active.iter().flat_map(|a| a.queues.iter()).collect();
        RngState {
            virtio: VirtioDeviceState::capture(self, &queues),
        }
    }

    fn validate_state(&self, state: &RngState) -> Result<(), RngStateError> {
        Ok(state.virtio.validate(self)?)
    }

    fn restore_state(&mut self, state: &RngState) -> Result<(), RngStateError> {
        self.validate_state(state)
    }

    fn virtio_state(state: &RngState) -> &VirtioDeviceState {
        &state.virtio
    }
}
