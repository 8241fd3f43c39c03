//! Saved state shared by every virtio device, for snapshots (see `mmio_persist.rs` for the
//! transport, `block/persist.rs` and `net/persist.rs` for the devices).
//!
//! A device's saved state is its device-specific part plus a [`VirtioDeviceState`]: the
//! features the driver acked, whether the device was activated and, if so, its live queues
//! ([`QueueState`], virtio-queue's `QueueState` with serde). Restoring goes through
//! [`VirtioPersist`] and then the transport, which re-activates the device with queues built
//! from the saved ring positions, exactly as the guest's `DRIVER_OK` did at boot: no
//! device-specific re-activation code, no guest handshake.
//!
//! The state is untrusted input: every value is checked against the device it is restored
//! into and against guest memory before anything is applied.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use crate::device::VirtioDevice;
use crate::features::VIRTIO_F_VERSION_1;
use crate::GuestMemoryMmap;

/// One virtio queue: virtio-queue's `QueueState`, field for field, with serde.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueState {
    pub max_size: u16,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
    /// `VIRTIO_RING_F_EVENT_IDX` negotiated.
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<virtio_queue::QueueState> for QueueState {
    fn from(s: virtio_queue::QueueState) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<QueueState> for virtio_queue::QueueState {
    fn from(s: QueueState) -> Self {
        virtio_queue::QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl QueueState {
    /// The state of a live queue.
    pub fn of(queue: &Queue) -> Self {
        queue.state().into()
    }
}

/// Why a saved queue was refused; each names the queue and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueStateError {
    #[error("queues[{index}].max_size: {got}, but the device's queue holds {expected}")]
    MaxSize {
        index: usize,
        got: u16,
        expected: u16,
    },
    #[error("queues[{index}].size: {size} is zero, not a power of two or above the maximum {max}")]
    Size { index: usize, size: u16, max: u16 },
    #[error("queues[{index}].{field}: {addr:#x} is not aligned to {align} bytes")]
    Alignment {
        index: usize,
        field: &'static str,
        addr: u64,
        align: u64,
    },
    #[error("queues[{index}]: rings (desc_table {desc:#x}, avail_ring {avail:#x}, used_ring {used:#x}, size {size}) are not inside guest memory")]
    OutsideMemory {
        index: usize,
        desc: u64,
        avail: u64,
        used: u64,
        size: u16,
    },
    #[error("queues[{index}].ready: false, but the device was activated with it")]
    NotReady { index: usize },
    #[error(
        "queues[{index}].event_idx_enabled: {got}, but the negotiated features say {negotiated}"
    )]
    EventIdx {
        index: usize,
        got: bool,
        negotiated: bool,
    },
    #[error("queues[{index}].next_avail: {next_avail} is {in_flight} entries ahead of next_used {next_used}, more than the queue size {size}")]
    Indices {
        index: usize,
        next_avail: u16,
        next_used: u16,
        in_flight: u16,
        size: u16,
    },
    #[error("queues[{index}]: invalid queue state: {reason}")]
    Other { index: usize, reason: String },
}

/// Builds the live queue `index` of an activated device from `state`, after checking every
/// field: the device's maximum size, a power-of-two size within it, ring alignment, rings
/// inside guest memory, the negotiated event-index mode, and that the device does not hold
/// more chains than the ring has (`next_avail - next_used <= size`).
pub fn restore_queue(
    index: usize,
    state: &QueueState,
    max_size: u16,
    event_idx: bool,
    mem: &GuestMemoryMmap,
) -> Result<Queue, QueueStateError> {
    if state.max_size != max_size {
        return Err(QueueStateError::MaxSize {
            index,
            got: state.max_size,
            expected: max_size,
        });
    }
    if !state.ready {
        return Err(QueueStateError::NotReady { index });
    }
    let size = state.size;
    if size == 0 || !size.is_power_of_two() || size > max_size {
        return Err(QueueStateError::Size {
            index,
            size,
            max: max_size,
        });
    }
    for (field, addr, align) in [
        ("desc_table", state.desc_table, 16u64),
        ("avail_ring", state.avail_ring, 2),
        ("used_ring", state.used_ring, 4),
    ] {
        if addr % align != 0 {
            return Err(QueueStateError::Alignment {
                index,
                field,
                addr,
                align,
            });
        }
    }
    if state.event_idx_enabled != event_idx {
        return Err(QueueStateError::EventIdx {
            index,
            got: state.event_idx_enabled,
            negotiated: event_idx,
        });
    }
    let in_flight = state.next_avail.wrapping_sub(state.next_used);
    if in_flight > size {
        return Err(QueueStateError::Indices {
            index,
            next_avail: state.next_avail,
            next_used: state.next_used,
            in_flight,
            size,
        });
    }
    let queue = Queue::try_from(virtio_queue::QueueState::from(*state)).map_err(|e| {
        QueueStateError::Other {
            index,
            reason: e.to_string(),
        }
    })?;
    if !queue.is_valid(mem) {
        return Err(QueueStateError::OutsideMemory {
            index,
            desc: state.desc_table,
            avail: state.avail_ring,
            used: state.used_ring,
            size,
        });
    }
    Ok(queue)
}

/// What every virtio device saves, whatever its type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioDeviceState {
    /// virtio device id (1 net, 2 block, ...): a state never lands on another kind.
    pub device_type: u32,
    /// Features the driver accepted (0 before `FEATURES_OK`).
    pub acked_features: u64,
    /// Whether the device was serving its queues.
    pub activated: bool,
    /// The live queues, in queue order, when activated; empty otherwise.
    pub queues: Vec<QueueState>,
}

/// Why the shared part of a device state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtioStateError {
    #[error("device_type: {got}, but the device at this position is of type {expected}")]
    DeviceType { got: u32, expected: u32 },
    #[error("acked_features: {acked:#x} has bits {extra:#x} the device does not offer (offered {offered:#x})")]
    FeaturesNotOffered {
        acked: u64,
        extra: u64,
        offered: u64,
    },
    #[error("queues: {got} saved, the activated device has {expected}")]
    QueueCount { got: usize, expected: usize },
    #[error("queues: {got} saved for a device that was not activated")]
    QueuesWithoutActivation { got: usize },
}

impl VirtioDeviceState {
    /// The shared state of `device`; `live_queues` are its queues when it is activated.
    pub fn capture(device: &dyn VirtioDevice, live_queues: &[&Queue]) -> Self {
        let activated = device.is_activated();
        VirtioDeviceState {
            device_type: device.device_type(),
            acked_features: device.acked_features(),
            activated,
            queues: if activated {
                live_queues.iter().map(|q| QueueState::of(q)).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Checks this state against the freshly built `device` it is meant for. The queue
    /// contents are checked by the transport, which knows the negotiated features and memory.
    pub fn validate(&self, device: &dyn VirtioDevice) -> Result<(), VirtioStateError> {
        let expected = device.device_type();
        if self.device_type != expected {
            return Err(VirtioStateError::DeviceType {
                got: self.device_type,
                expected,
            });
        }
        let offered = device.avail_features() | (1u64 << VIRTIO_F_VERSION_1);
        let extra = self.acked_features & !offered;
        if extra != 0 {
            return Err(VirtioStateError::FeaturesNotOffered {
                acked: self.acked_features,
                extra,
                offered,
            });
        }
        let expected = device.queue_max_sizes().len();
        match (self.activated, self.queues.len()) {
            (true, got) if got != expected => Err(VirtioStateError::QueueCount { got, expected }),
            (false, got) if got != 0 => Err(VirtioStateError::QueuesWithoutActivation { got }),
            _ => Ok(()),
        }
    }
}

/// Snapshot support of one virtio device type. The VMM drives every device through this
/// trait and the transport, so a new device (vsock, balloon, rng) implements these five
/// methods and nothing else of the save/restore flow.
///
/// Order on save: `quiesce`, then `save_state` (and the transport's), with the device lock
/// held throughout and the vCPUs paused. On restore, into a device built from the same
/// configuration as at boot: `validate_state`, `restore_state`, then the transport's
/// `restore_state` (which sets the acked features and re-activates).
pub trait VirtioPersist: VirtioDevice {
    /// Plain data: no fds, no host addresses.
    type State;
    /// Names the offending field.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Finishes or rolls back work in flight, so the queues, guest memory and the saved
    /// state agree (async I/O completed into the used ring, a held rx frame published).
    fn quiesce(&mut self);
    /// The device's state (call after `quiesce`, under the same lock).
    fn save_state(&self) -> Self::State;
    /// Checks `state` against this device without changing anything.
    fn validate_state(&self, state: &Self::State) -> Result<(), Self::Error>;
    /// Applies the device-specific part (after validating it again).
    fn restore_state(&mut self, state: &Self::State) -> Result<(), Self::Error>;
    /// The shared part, for the transport.
    fn virtio_state(state: &Self::State) -> &VirtioDeviceState;
}
