//! Saved state of the virtio-mmio transport: the registers the driver wrote, the status, the
//! interrupt state; and the restore path that re-activates the device with its saved queues.
//!
//! The transport never locks its own device here: the caller (the VMM's device set) holds the
//! transport lock and then the device lock, the order the vCPU path takes them, and passes
//! the device in.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::{build_queue, status::*, MmioTransport, QueueConfigError, QueueRegs};
use crate::device::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::features::{self, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::persist::{restore_queue, QueueStateError, VirtioDeviceState};

/// One queue's registers as the driver wrote them (validated only once the queue is ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRegsState {
    pub max_size: u16,
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub ready: bool,
}

/// The virtio-mmio registers of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioTransportState {
    /// The status register as the driver set it (`DEVICE_NEEDS_RESET` is `needs_reset`).
    pub device_status: u32,
    pub features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    /// The driver set a feature bit above 63 (which fails `FEATURES_OK`).
    pub unknown_features_accepted: bool,
    pub queue_select: u32,
    pub queues: Vec<QueueRegsState>,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub needs_reset: bool,
}

/// Why a saved transport state was refused; each names the field.
#[derive(Debug, thiserror::Error)]
pub enum TransportStateError {
    #[error("transport.queues: {got} saved, the device has {expected}")]
    QueueCount { got: usize, expected: usize },
    #[error("transport.queues[{index}].max_size: {got}, the device's queue holds {expected}")]
    QueueMaxSize {
        index: usize,
        got: u16,
        expected: u16,
    },
    #[error("transport.device_status: {0:#x} is not a state the initialisation sequence reaches")]
    Status(u32),
    #[error("transport.interrupt_status: {0:#x} has bits other than VRING (1) and CONFIG (2)")]
    InterruptStatus(u32),
    #[error("transport.driver_features: {features:#x} after FEATURES_OK has bits {extra:#x} that were not offered")]
    FeaturesNotOffered { features: u64, extra: u64 },
    #[error("transport.driver_features: {0:#x} after FEATURES_OK lacks VIRTIO_F_VERSION_1")]
    NoVersion1(u64),
    #[error("transport.unknown_features_accepted: set, but FEATURES_OK was accepted")]
    UnknownFeatures,
    #[error(
        "device.acked_features: {acked:#x}, but the transport's negotiation gives {expected:#x}"
    )]
    AckedMismatch { acked: u64, expected: u64 },
    #[error("transport.queues[{index}].ready: set before FEATURES_OK")]
    ReadyTooEarly { index: usize },
    #[error("transport.queues[{index}]: {source}")]
    QueueRegs {
        index: usize,
        source: QueueConfigError,
    },
    #[error("device.activated: set, but the status {0:#x} has no DRIVER_OK")]
    ActivatedTooEarly(u32),
    #[error(
        "device.activated: false with DRIVER_OK and no needs_reset (activation cannot have failed)"
    )]
    NotActivated,
    #[error("device.{source}")]
    Queue {
        #[from]
        source: QueueStateError,
    },
    #[error(
        "device.queues[{index}].{field}: the live queue disagrees with the transport's register"
    )]
    QueueMismatch { index: usize, field: &'static str },
    #[error("cannot duplicate a queue EventFd: {0}")]
    EventFd(std::io::Error),
    #[error("re-activating the device failed: {0}")]
    Activate(#[from] ActivateError),
}

impl From<&QueueRegs> for QueueRegsState {
    fn from(r: &QueueRegs) -> Self {
        QueueRegsState {
            max_size: r.max_size,
            size: r.size,
            desc_table: r.desc,
            avail_ring: r.avail,
            used_ring: r.used,
            ready: r.ready,
        }
    }
}

impl From<&QueueRegsState> for QueueRegs {
    fn from(s: &QueueRegsState) -> Self {
        QueueRegs {
            max_size: s.max_size,
            size: s.size,
            desc: s.desc_table,
            avail: s.avail_ring,
            used: s.used_ring,
            ready: s.ready,
        }
    }
}

/// Status values the transport can hold: the prefixes of the initialisation sequence, each
/// possibly with `FAILED`.
fn status_is_reachable(status: u32) -> bool {
    let steps = [
        0,
        ACKNOWLEDGE,
        ACKNOWLEDGE | DRIVER,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    ];
    steps.contains(&(status & !FAILED))
}

impl MmioTransport {
    /// The registers, status and interrupt state. Does not lock the device.
    pub fn save_state(&self) -> MmioTransportState {
        MmioTransportState {
            device_status: self.device_status,
            features_select: self.features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            unknown_features_accepted: self.unknown_features_accepted,
            queue_select: self.queue_select,
            queues: self.queues.iter().map(QueueRegsState::from).collect(),
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            needs_reset: self.interrupt.needs_reset(),
        }
    }

    /// Checks `state` and the device's shared state `dev` against this transport and its
    /// `device` (passed in, already locked by the caller). Returns the queues to re-activate
    /// the device with, or `None` when it is not to be activated.
    pub fn validate_state(
        &self,
        state: &MmioTransportState,
        device: &dyn VirtioDevice,
        dev: &VirtioDeviceState,
    ) -> Result<Option<Vec<Queue>>, TransportStateError> {
        use TransportStateError as E;
        let max_sizes = device.queue_max_sizes();
        if state.queues.len() != max_sizes.len() {
            return Err(E::QueueCount {
                got: state.queues.len(),
                expected: max_sizes.len(),
            });
        }
        for (index, (q, &max)) in state.queues.iter().zip(max_sizes).enumerate() {
            if q.max_size != max {
                return Err(E::QueueMaxSize {
                    index,
                    got: q.max_size,
                    expected: max,
                });
            }
        }
        let status = state.device_status;
        if !status_is_reachable(status) {
            return Err(E::Status(status));
        }
        if state.interrupt_status & !3 != 0 {
            return Err(E::InterruptStatus(state.interrupt_status));
        }
        let features_ok = status & FEATURES_OK != 0;
        let expected_acked = if features_ok {
            let offered = device.avail_features() | (1u64 << VIRTIO_F_VERSION_1);
            let extra = state.driver_features & !offered;
            if extra != 0 {
                return Err(E::FeaturesNotOffered {
                    features: state.driver_features,
                    extra,
                });
            }
            if !features::has(state.driver_features, VIRTIO_F_VERSION_1) {
                return Err(E::NoVersion1(state.driver_features));
            }
            if state.unknown_features_accepted {
                return Err(E::UnknownFeatures);
            }
            state.driver_features & device.avail_features()
        } else {
            0
        };
        if dev.acked_features != expected_acked {
            return Err(E::AckedMismatch {
                acked: dev.acked_features,
                expected: expected_acked,
            });
        }
        let event_idx = features::has(state.driver_features, VIRTIO_RING_F_EVENT_IDX);
        for (index, q) in state.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            if !features_ok {
                return Err(E::ReadyTooEarly { index });
            }
            build_queue(&QueueRegs::from(q), &self.mem, event_idx)
                .map_err(|source| E::QueueRegs { index, source })?;
        }
        let driver_ok = status & DRIVER_OK != 0;
        if dev.activated && !driver_ok {
            return Err(E::ActivatedTooEarly(status));
        }
        if driver_ok && !dev.activated && !state.needs_reset {
            return Err(E::NotActivated);
        }
        if !dev.activated {
            return Ok(None);
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, ((live, regs), &max)) in dev
            .queues
            .iter()
            .zip(&state.queues)
            .zip(max_sizes)
            .enumerate()
        {
            let queue = restore_queue(index, live, max, event_idx, &self.mem)?;
            let mismatch = |field| E::QueueMismatch { index, field };
            if !regs.ready {
                return Err(mismatch("ready"));
            }
            if live.size != regs.size {
                return Err(mismatch("size"));
            }
            if live.desc_table != regs.desc_table {
                return Err(mismatch("desc_table"));
            }
            if live.avail_ring != regs.avail_ring {
                return Err(mismatch("avail_ring"));
            }
            if live.used_ring != regs.used_ring {
                return Err(mismatch("used_ring"));
            }
            queues.push(queue);
        }
        // A device that broke (needs reset) stays stopped until the driver resets it.
        Ok((!state.needs_reset).then_some(queues))
    }

    /// Applies a saved state to this freshly built transport: validates it first (see
    /// [`Self::validate_state`]), then sets the registers, hands the device its acked
    /// features, and re-activates it with the restored queues (the device's io-loop wiring
    /// is the boot-time one: its queue EventFds are this transport's ioeventfds).
    pub fn restore_state(
        &mut self,
        state: &MmioTransportState,
        device: &mut dyn VirtioDevice,
        dev: &VirtioDeviceState,
    ) -> Result<(), TransportStateError> {
        let queues = self.validate_state(state, device, dev)?;
        let queue_evts = match queues {
            Some(_) => Some(
                self.queue_evts
                    .iter()
                    .map(EventFd::try_clone)
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(TransportStateError::EventFd)?,
            ),
            None => None,
        };
        self.device_status = state.device_status;
        self.features_select = state.features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.unknown_features_accepted = state.unknown_features_accepted;
        self.queue_select = state.queue_select;
        self.queues = state.queues.iter().map(QueueRegs::from).collect();
        self.interrupt.restore(
            state.interrupt_status,
            state.config_generation,
            state.needs_reset,
        );
        device.set_acked_features(dev.acked_features);
        if let (Some(queues), Some(queue_evts)) = (queues, queue_evts) {
            device.activate(ActivateContext {
                mem: self.mem.clone(),
                interrupt: self.interrupt.clone() as Arc<dyn VirtioInterrupt>,
                queues,
                queue_evts,
            })?;
        }
        Ok(())
    }

    /// Whether the device is serving its queues as far as the transport knows (`DRIVER_OK`
    /// and no reset needed; notifications reach it exactly then).
    pub fn is_live(&self) -> bool {
        self.status_has(DRIVER_OK, 0) && !self.interrupt.needs_reset()
    }

    /// After a restore, on resume: notifies every queue of a live device (a guest that
    /// suppressed notifications with EVENT_IDX would otherwise wait forever for requests it
    /// posted before the snapshot) and raises the interrupt again when status bits are
    /// pending (an edge can be lost between the save of the interrupt controller and the
    /// save of this transport). Returns how many queues were notified.
    pub fn kick(&self) -> std::io::Result<usize> {
        if !self.is_live() {
            return Ok(0);
        }
        for evt in &self.queue_evts {
            evt.write(1)?;
        }
        if self.interrupt.status() != 0 {
            self.interrupt.irq_evt().write(1)?;
        }
        Ok(self.queue_evts.len())
    }
}
