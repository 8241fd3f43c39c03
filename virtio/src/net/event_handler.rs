//! The net device as a subscriber of the `io` thread's event loop.
//!
//! Permanent interests (added in `init`): the control EventFd (activation, reset, limiter
//! updates) and both rate limiters' timerfds. The queue EventFds join after activation and
//! leave after a reset. The tap fd is watched only while rx can make progress: the guest has
//! buffers, the rx limiter is not waiting for its timer and the tap still works, so a
//! readable tap can never make the level-triggered loop spin.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Net;

const CTRL: u32 = 0;
const RX_QUEUE: u32 = 1;
const TX_QUEUE: u32 = 2;
const TAP: u32 = 3;
const RX_LIMITER: u32 = 4;
const TX_LIMITER: u32 = 5;

impl Net {
    /// Makes the queue EventFd interests match the activation state.
    fn sync_queue_registration(&mut self, ops: &mut EventOps) {
        for fd in self.lp.registered.drain(..) {
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                log::warn!("virtio-net {}: cannot unwatch fd {fd}: {e:?}", self.id);
            }
        }
        // Only now that the loop no longer watches them may old EventFds close.
        self.retired.clear();
        let Some(fds) = self.active.as_ref().map(|a| {
            [
                (a.rx_evt.as_raw_fd(), RX_QUEUE),
                (a.tx_evt.as_raw_fd(), TX_QUEUE),
            ]
        }) else {
            return;
        };
        for (fd, data) in fds {
            match ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                Ok(()) => self.lp.registered.push(fd),
                Err(e) => self.queue_broken(&format!("cannot watch a queue EventFd: {e:?}")),
            }
        }
    }

    /// Whether reading the tap could make progress now.
    pub(super) fn wants_tap(&self) -> bool {
        self.active.is_some()
            && !self.broken
            && !self.rx.tap_dead
            && !self.rx.stalled
            && self.rx.pending_chains == 0
            && !self.rx_limiter.is_blocked()
    }

    fn sync_tap_interest(&mut self, ops: &mut EventOps) {
        let want = self.wants_tap();
        if want == self.lp.tap_watched {
            return;
        }
        let r = if want {
            ops.add(Events::with_data(&self.tap, TAP, EventSet::IN))
        } else {
            ops.remove(Events::empty(&self.tap))
        };
        match r {
            Ok(()) => self.lp.tap_watched = want,
            Err(e) => {
                log::error!("virtio-net {}: cannot change tap interest: {e:?}", self.id);
                if want {
                    // Without the tap in the loop rx cannot work; do not retry every event.
                    self.rx.tap_dead = true;
                }
            }
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            (self.ctrl_evt.as_raw_fd(), CTRL),
            (self.rx_limiter.as_raw_fd(), RX_LIMITER),
            (self.tx_limiter.as_raw_fd(), TX_LIMITER),
        ];
        for (fd, data) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                log::error!("virtio-net {}: cannot watch fd {fd}: {e:?}", self.id);
            }
        }
        self.sync_queue_registration(ops);
        self.sync_tap_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CTRL => {
                // The count is irrelevant: the handler reconciles with the current state.
                let _ = self.ctrl_evt.read();
                self.sync_queue_registration(ops);
                self.process_tx();
                self.process_rx();
            }
            RX_QUEUE => {
                if let Some(a) = &self.active {
                    let _ = a.rx_evt.read();
                }
                // New buffers: try again even if rx had stalled.
                self.rx.stalled = false;
                self.process_rx();
            }
            TX_QUEUE => {
                if let Some(a) = &self.active {
                    let _ = a.tx_evt.read();
                }
                self.process_tx();
                if self.mmds_pending() {
                    self.process_rx();
                }
            }
            TAP => self.process_rx(),
            RX_LIMITER => {
                self.rx_limiter.event_handler();
                self.process_rx();
            }
            TX_LIMITER => {
                self.tx_limiter.event_handler();
                self.process_tx();
            }
            other => log::warn!("virtio-net {}: unexpected event data {other}", self.id),
        }
        self.sync_tap_interest(ops);
    }
}
