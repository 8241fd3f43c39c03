//! The block device as a subscriber of the `io` thread's event loop.
//!
//! Permanent interests (added in `init`): the control EventFd (activation / reset), the rate
//! limiter's timerfd and, for the async engine, the io_uring completion eventfd. The queue
//! EventFd is added when the device is activated and removed after a reset, always from this
//! thread, driven by the control EventFd.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Block;
use super::metrics::BlockMetrics;

const CTRL: u32 = 0;
const QUEUE: u32 = 1;
const LIMITER: u32 = 2;
const URING: u32 = 3;

impl Block {
    /// Makes the loop's interest list match the device state.
    fn sync_registration(&mut self, ops: &mut EventOps) {
        for fd in self.registered.drain(..) {
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                log::warn!("virtio-blk {}: cannot unwatch fd {fd}: {e:?}", self.id);
            }
        }
        // Only now that the loop no longer watches them may old EventFds close.
        self.retired.clear();
        let Some(fd) = self.active.as_ref().map(|a| a.queue_evt.as_raw_fd()) else {
            return;
        };
        match ops.add(Events::with_data_raw(fd, QUEUE, EventSet::IN)) {
            Ok(()) => self.registered.push(fd),
            Err(e) => self.queue_broken(&format!("cannot watch the queue EventFd: {e:?}")),
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd, data| {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                log::error!("virtio-blk: cannot watch fd {fd}: {e:?}");
            }
        };
        add(self.ctrl_evt.as_raw_fd(), CTRL);
        add(self.rate_limiter.as_raw_fd(), LIMITER);
        if let Some(engine) = &self.engine {
            add(engine.completion_fd(), URING);
        }
        self.sync_registration(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CTRL => {
                // The count is irrelevant: the handler reconciles with the current state.
                let _ = self.ctrl_evt.read();
                self.sync_registration(ops);
                self.process_queue();
            }
            QUEUE => {
                if let Some(active) = &self.active {
                    let _ = active.queue_evt.read();
                }
                BlockMetrics::inc(&self.metrics.queue_event_count);
                self.process_queue();
            }
            LIMITER => {
                self.rate_limiter.event_handler();
                self.process_queue();
            }
            URING => {
                self.on_async_completions();
            }
            other => log::warn!("virtio-blk {}: unexpected event data {other}", self.id),
        }
    }
}
