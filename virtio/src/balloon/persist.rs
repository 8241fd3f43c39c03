//! Snapshot state of the balloon: the sizes, the statistics buffer the device holds (its
//! chain head: the restored device holds it again and hands it back at the next poll) and the
//! latest statistics. Inflate and deflate are served synchronously: nothing is in flight.
//!
//! Limitation: the transport restores only devices whose every queue was made ready, so a
//! balloon configured with statistics whose driver did not accept `STATS_VQ` (Linux always
//! does) cannot be restored.

use serde::{Deserialize, Serialize};

use super::{Balloon, BalloonStats};
use crate::persist::{VirtioDeviceState, VirtioPersist, VirtioStateError};

/// What the balloon saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    pub virtio: VirtioDeviceState,
    /// `num_pages` the guest was last told.
    pub target_pages: u32,
    /// `actual` as the driver last wrote it.
    pub actual_pages: u32,
    /// Head of the statistics chain the device held, if any.
    pub stats_head: Option<u16>,
    /// The latest statistics the guest sent, as (tag, value).
    pub latest_stats: Vec<(u16, u64)>,
}

/// Why a saved balloon state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonStateError {
    #[error("balloon.virtio.{0}")]
    Virtio(#[from] VirtioStateError),
    #[error("balloon.stats_head: {0} saved, but the device has no statistics queue")]
    StatsHeadWithoutQueue(u16),
    #[error("balloon.stats_head: {head} is outside the statistics queue of {size} entries")]
    StatsHead { head: u16, size: u16 },
    #[error("balloon.stats_head: saved for a device that was not activated")]
    StatsHeadInactive,
    #[error("balloon.latest_stats: an unknown or repeated tag")]
    Stats,
}

impl VirtioPersist for Balloon {
    type State = BalloonState;
    type Error = BalloonStateError;

    fn quiesce(&mut self) {}

    fn save_state(&self) -> BalloonState {
        let queues: Vec<_> = self.active.iter().flat_map(|a| a.queues.iter()).collect();
        BalloonState {
            virtio: VirtioDeviceState::capture(self, &queues),
            target_pages: self.target_pages(),
            actual_pages: self.actual_pages(),
            stats_head: self.stats_head,
            latest_stats: self.latest_stats.entries(),
        }
    }

    fn validate_state(&self, state: &BalloonState) -> Result<(), BalloonStateError> {
        state.virtio.validate(self)?;
        if BalloonStats::from_entries(&state.latest_stats).is_none() {
            return Err(BalloonStateError::Stats);
        }
        if let Some(head) = state.stats_head {
            if !state.virtio.activated {
                return Err(BalloonStateError::StatsHeadInactive);
            }
            let layout = super::QueueLayout::for_features(state.virtio.acked_features);
            let Some(queue) = layout.stats.and_then(|i| state.virtio.queues.get(i)) else {
                return Err(BalloonStateError::StatsHeadWithoutQueue(head));
            };
            if head >= queue.size {
                return Err(BalloonStateError::StatsHead {
                    head,
                    size: queue.size,
                });
            }
        }
        Ok(())
    }

    fn restore_state(&mut self, state: &BalloonState) -> Result<(), BalloonStateError> {
        self.validate_state(state)?;
        self.restore_sizes(state.target_pages, state.actual_pages);
        self.latest_stats =
            BalloonStats::from_entries(&state.latest_stats).ok_or(BalloonStateError::Stats)?;
        // The transport re-activates the device next; activation takes this over.
        self.restored_stats_head = state.stats_head;
        Ok(())
    }

    fn virtio_state(state: &BalloonState) -> &VirtioDeviceState {
        &state.virtio
    }
}
