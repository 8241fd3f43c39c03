//! The part every device repeats once the driver sets `DRIVER_OK`: the queues it was given,
//! how to tell the guest about used buffers, and which queue EventFds the `io` loop watches.
//!
//! Block and net predate this module; devices written after it (rng, balloon) use it instead
//! of carrying their own copies.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{ActivateContext, ActivateError, InterruptType, VirtioInterrupt};
use crate::GuestMemoryMmap;

/// The queues of an activated device, with their notification EventFds.
pub struct ActiveQueues {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
    pub evts: Vec<EventFd>,
}

impl std::fmt::Debug for ActiveQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveQueues")
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl ActiveQueues {
    /// Takes the queues of `ctx`. The first `required` must be ready; the others (queues of
    /// features the driver did not accept) may be left unused.
    pub fn take(ctx: ActivateContext, required: usize) -> Result<Self, ActivateError> {
        let ActivateContext {
            mem,
            interrupt,
            queues,
            queue_evts,
        } = ctx;
        if queues.len() < required || queue_evts.len() != queues.len() {
            return Err(ActivateError::QueueCount {
                expected: required,
                got: queues.len().min(queue_evts.len()),
            });
        }
        if let Some(index) = queues.iter().take(required).position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady { index });
        }
        Ok(ActiveQueues {
            mem,
            interrupt,
            queues,
            evts: queue_evts,
        })
    }

    /// [`Self::take`] for a device whose activation is `current`: refused while one is
    /// active; a refused queue set is counted in `activate_fails`.
    pub fn activate(
        current: &Option<Self>,
        ctx: ActivateContext,
        required: usize,
        activate_fails: &AtomicU64,
    ) -> Result<Self, ActivateError> {
        if current.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        Self::take(ctx, required).inspect_err(|_| {
            activate_fails.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// The next available chain of queue `index` (`None`: nothing available), with whether
    /// its head uses an indirect table (refused by these devices, the caller counts it).
    /// `Err`: the available ring is unusable, the queue is broken.
    pub fn next_chain<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
        index: usize,
    ) -> Result<Option<(DescriptorChain<&'m GuestMemoryMmap>, bool)>, String> {
        let q = &mut self.queues[index];
        let (table, size) = (GuestAddress(q.desc_table()), q.size());
        let chain = match q.iter(mem) {
            Ok(mut it) => it.next(),
            Err(e) => return Err(format!("queue {index}: available ring unusable: {e}")),
        };
        Ok(chain.map(|c| {
            let indirect = crate::indirect::chain_uses_indirect(mem, table, size, c.head_index());
            (c, indirect)
        }))
    }

    /// Whether queue `index` exists and the driver made it ready.
    pub fn is_ready(&self, index: usize) -> bool {
        self.queues.get(index).is_some_and(|q| q.ready())
    }

    /// Raises the vring interrupt if queue `index` asks for one (event index or flags).
    /// An unreadable used-event field is a broken queue: the error says why.
    pub fn signal_used(&mut self, index: usize) -> Result<(), String> {
        let Some(q) = self.queues.get_mut(index) else {
            return Ok(());
        };
        match q.needs_notification(&self.mem) {
            Ok(true) => {
                if let Err(e) = self.interrupt.trigger(InterruptType::Vring) {
                    log::error!("virtio: cannot raise the vring interrupt: {e}");
                }
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(format!("used event of queue {index} unreadable: {e}")),
        }
    }
}

/// Watches each `(fd, data)` for input on the `io` loop (a device's control EventFd, timers,
/// listeners). A failure is logged: the device misses those events, the loop goes on.
pub fn watch_fds(ops: &mut EventOps, fds: &[(RawFd, u32)], what: &str) {
    for &(fd, data) in fds {
        if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
            log::error!("{what}: cannot watch fd {fd}: {e:?}");
        }
    }
}

/// The queue EventFds the `io` loop watches for one device. Only the loop's thread changes
/// it; activation and reset (on a vCPU thread) only hand EventFds over to [`Self::retire`]
/// and wake the loop.
#[derive(Debug, Default)]
pub struct QueueWatch {
    registered: Vec<RawFd>,
    /// EventFds of a previous activation, kept open until the loop stops watching them (a
    /// closed fd number could be reused by another file while still in the epoll set).
    retired: Vec<EventFd>,
}

impl QueueWatch {
    /// Keeps the EventFds of an activation that ended until the next [`Self::sync`].
    pub fn retire(&mut self, evts: Vec<EventFd>) {
        self.retired.extend(evts);
    }

    /// Ends the activation in `active` (a device reset): its EventFds wait here for the loop.
    pub fn deactivate(&mut self, active: &mut Option<ActiveQueues>) {
        if let Some(a) = active.take() {
            self.retire(a.evts);
        }
    }

    /// Makes the loop's interests match `active`: queue `i` is watched with event data
    /// `first_data + i` when it is ready. Returns the first failure to watch a queue.
    pub fn sync(
        &mut self,
        ops: &mut EventOps,
        active: Option<&ActiveQueues>,
        first_data: u32,
        what: &str,
    ) -> Result<(), String> {
        for fd in self.registered.drain(..) {
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                log::warn!("{what}: cannot unwatch fd {fd}: {e:?}");
            }
        }
        self.retired.clear();
        let Some(active) = active else {
            return Ok(());
        };
        let mut result = Ok(());
        for (i, evt) in active.evts.iter().enumerate() {
            if !active.is_ready(i) {
                continue;
            }
            let data = first_data.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
            let fd = evt.as_raw_fd();
            match ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                Ok(()) => self.registered.push(fd),
                Err(e) => {
                    if result.is_ok() {
                        result = Err(format!("cannot watch the EventFd of queue {i}: {e:?}"));
                    }
                }
            }
        }
        result
    }
}

/// Declares a device's counters: an atomic struct updated on the `io` thread and a plain
/// snapshot for the metrics flusher, with the same field names.
#[macro_export]
macro_rules! device_counters {
    ($counters:ident, $snapshot:ident, { $($name:ident: $doc:literal),* $(,)? }) => {
        #[doc = concat!("Counters of one device (see [`", stringify!($snapshot), "`]).")]
        #[derive(Debug, Default)]
        pub struct $counters {
            $(#[doc = $doc] pub $name: std::sync::atomic::AtomicU64,)*
        }

        #[doc = concat!("A point-in-time copy of [`", stringify!($counters), "`].")]
        #[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
        pub struct $snapshot {
            $(#[doc = $doc] pub $name: u64,)*
        }

        impl $counters {
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $($name: self.$name.load(std::sync::atomic::Ordering::Relaxed),)*
                }
            }

            pub fn inc(counter: &std::sync::atomic::AtomicU64) {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }

            pub fn add(counter: &std::sync::atomic::AtomicU64, v: u64) {
                counter.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
}
