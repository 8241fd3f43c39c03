//! Snapshot state of a virtio-net device.
//!
//! The tap is reopened by the VMM from the (possibly overridden) configuration; the MAC the
//! anti-spoofing filter enforces comes from that configuration too and must match what the
//! guest saw. Partial rx/tx work never survives a save: a received frame held back by the rx
//! rate limiter is published at `quiesce` (it already sits in guest memory), and a throttled
//! tx chain was returned to the avail ring when it was throttled.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;

use super::device::Net;
use super::metrics::NetMetrics;
use crate::device::InterruptType;
use crate::persist::{VirtioDeviceState, VirtioPersist, VirtioStateError};

/// What a virtio-net device saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    pub virtio: VirtioDeviceState,
    /// The MAC the guest read from the config space (and tx is filtered on).
    pub guest_mac: Option<[u8; 6]>,
    pub mtu: Option<u16>,
}

/// Why a saved net state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetStateError {
    #[error("net.virtio.{0}")]
    Virtio(#[from] VirtioStateError),
    #[error("net.guest_mac: {saved:02x?} saved, but the interface is configured with {now:02x?}")]
    Mac {
        saved: Option<[u8; 6]>,
        now: Option<[u8; 6]>,
    },
    #[error("net.mtu: {saved:?} saved, but the interface is configured with {now:?}")]
    Mtu {
        saved: Option<u16>,
        now: Option<u16>,
    },
}

impl Net {
    /// Publishes the frame the rx limiter held back (see the module comment).
    fn publish_held_rx_frame(&mut self) {
        if self.rx.pending_chains == 0 {
            return;
        }
        let pending = self.rx.pending_chains.min(self.rx_chains.len());
        let bytes = self.rx.pending_bytes;
        self.rx.pending_chains = 0;
        self.rx.pending_bytes = 0;
        let Some(active) = self.active.as_mut() else {
            self.rx_chains.clear();
            return;
        };
        let mem = active.mem.clone();
        let mut failed = None;
        for c in &self.rx_chains[..pending] {
            if let Err(e) = active.rx_queue.add_used(&*mem, c.head, c.used) {
                failed = Some(format!("cannot add used entry {}: {e}", c.head));
                break;
            }
        }
        self.rx_chains.clear();
        if let Some(why) = failed {
            self.queue_broken(&format!("rx at snapshot: {why}"));
            return;
        }
        NetMetrics::inc(&self.metrics.rx_packets);
        NetMetrics::add(&self.metrics.rx_bytes, bytes);
        if let Some(active) = self.active.as_mut() {
            if active.rx_queue.needs_notification(&*mem).unwrap_or(true)
                && active.interrupt.trigger(InterruptType::Vring).is_err()
            {
                NetMetrics::inc(&self.metrics.interrupt_errors);
            }
        }
    }
}

impl VirtioPersist for Net {
    type State = NetState;
    type Error = NetStateError;

    fn quiesce(&mut self) {
        self.publish_held_rx_frame();
    }

    fn save_state(&self) -> NetState {
        let queues: Vec<_> = self
            .active
            .iter()
            .flat_map(|a| [&a.rx_queue, &a.tx_queue])
            .collect();
        NetState {
            virtio: VirtioDeviceState::capture(self, &queues),
            guest_mac: self.guest_mac,
            mtu: self.mtu,
        }
    }

    fn validate_state(&self, state: &NetState) -> Result<(), NetStateError> {
        state.virtio.validate(self)?;
        if state.guest_mac != self.guest_mac {
            return Err(NetStateError::Mac {
                saved: state.guest_mac,
                now: self.guest_mac,
            });
        }
        if state.mtu != self.mtu {
            return Err(NetStateError::Mtu {
                saved: state.mtu,
                now: self.mtu,
            });
        }
        Ok(())
    }

    fn restore_state(&mut self, state: &NetState) -> Result<(), NetStateError> {
        // The transport applies the acked features and re-activates, which renegotiates
        // the tap offloads for them on the (possibly different) tap.
        self.validate_state(state)
    }

    fn virtio_state(state: &NetState) -> &VirtioDeviceState {
        &state.virtio
    }
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
