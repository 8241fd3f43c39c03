//! Snapshot state of the socket device. Connections are not saved, as with Firecracker:
//! their other ends are host processes this snapshot cannot carry. At snapshot time every
//! connection is closed on the host side and the guest is owed a TRANSPORT_RESET event
//! (virtio 1.2 section 5.10.6.6), delivered on the event queue once the loop runs again
//! (the source VM, if resumed) or after the restore (the new VM): the guest's driver then
//! drops its connections and reads `guest_cid` again. The listening socket is the new
//! device's own (bound at `uds_path`, or `vsock_override.uds_path` on load).

use serde::{Deserialize, Serialize};

use super::Vsock;
use crate::persist::{VirtioDeviceState, VirtioPersist, VirtioStateError};

/// What the socket device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    pub virtio: VirtioDeviceState,
    /// The CID the guest was given (the configuration must still say the same).
    pub guest_cid: u64,
}

/// Why a saved socket device state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VsockStateError {
    #[error("vsock.virtio.{0}")]
    Virtio(#[from] VirtioStateError),
    #[error("vsock.guest_cid: {saved} saved, the configuration says {configured}")]
    Cid { saved: u64, configured: u64 },
}

impl VirtioPersist for Vsock {
    type State = VsockState;
    type Error = VsockStateError;

    fn quiesce(&mut self) {
        // The host ends cannot be saved: close them now, and tell the guest once it runs.
        self.kill_all();
        if self.active.is_some() {
            self.reset_event_pending = true;
        }
        self.wake_loop();
    }

    fn save_state(&self) -> VsockState {
        let queues: Vec<_> = self.active.iter().flat_map(|a| a.queues.iter()).collect();
        VsockState {
            virtio: VirtioDeviceState::capture(self, &queues),
            guest_cid: self.cid,
        }
    }

    fn validate_state(&self, state: &VsockState) -> Result<(), VsockStateError> {
        state.virtio.validate(self)?;
        if state.guest_cid != self.cid {
            return Err(VsockStateError::Cid {
                saved: state.guest_cid,
                configured: self.cid,
            });
        }
        Ok(())
    }

    fn restore_state(&mut self, state: &VsockState) -> Result<(), VsockStateError> {
        self.validate_state(state)?;
        // The transport re-activates the device next; the event goes out then.
        self.reset_event_pending = state.virtio.activated;
        Ok(())
    }

    fn virtio_state(state: &VsockState) -> &VirtioDeviceState {
        &state.virtio
    }
}
