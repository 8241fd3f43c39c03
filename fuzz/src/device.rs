//! A virtio device driven the way the `io` thread drives it: activated with queues over
//! guest memory, served from an event-manager loop, kicked, then reset.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio::{ActivateContext, InterruptType, VirtioDevice, VirtioInterrupt};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::guest::Mem;

/// Loop turns after which a device that still has events is spinning: every device here
/// must go quiet once it has served what the guest queued.
const MAX_TURNS: usize = 64;

/// Counts interrupts instead of raising them.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    pub vring: AtomicU32,
    pub config: AtomicU32,
    pub needs_reset: AtomicU32,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, int: InterruptType) -> std::io::Result<()> {
        match int {
            InterruptType::Vring => self.vring.fetch_add(1, Ordering::Relaxed),
            InterruptType::Config => self.config.fetch_add(1, Ordering::Relaxed),
        };
        Ok(())
    }

    fn signal_needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::Relaxed);
    }
}

/// One device and the loop that serves it, kept for the whole fuzzing process (opening a
/// device is the expensive part: a tap, a disk file).
pub struct DeviceLoop<D: VirtioDevice + MutEventSubscriber + 'static> {
    dev: Arc<Mutex<D>>,
    manager: EventManager<Arc<Mutex<D>>>,
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> std::fmt::Debug for DeviceLoop<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLoop").finish_non_exhaustive()
    }
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> DeviceLoop<D> {
    pub fn new(dev: D) -> Self {
        let dev = Arc::new(Mutex::new(dev));
        let mut manager = match EventManager::new() {
            Ok(m) => m,
            Err(e) => panic!("cannot create an event manager: {e:?}"),
        };
        manager.add_subscriber(dev.clone());
        DeviceLoop { dev, manager }
    }

    /// The device as the transport shares it.
    pub fn shared(&self) -> Arc<Mutex<D>> {
        self.dev.clone()
    }

    pub fn device(&self) -> MutexGuard<'_, D> {
        match self.dev.lock() {
            Ok(d) => d,
            // A previous input panicked while holding it: that input was the finding.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Serves events until none is pending; panics if the device keeps the loop busy.
    pub fn run_until_quiet(&mut self) {
        for _ in 0..MAX_TURNS {
            match self.manager.run_with_timeout(0) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => panic!("event loop failed: {e:?}"),
            }
        }
        panic!("the device still has events after {MAX_TURNS} loop turns: it spins");
    }

    /// One guest session: acks `features`, activates with `queues`, lets the device serve
    /// them, kicks every queue once more (a notification after the first pass), then resets
    /// the device as a driver would before the next session.
    pub fn session(&mut self, mem: &Mem, features: u64, queues: Vec<Queue>) {
        let irq = Arc::new(CountingInterrupt::default());
        let mut kicks = Vec::with_capacity(queues.len());
        let mut evts = Vec::with_capacity(queues.len());
        for _ in 0..queues.len() {
            let evt = match EventFd::new(libc::EFD_NONBLOCK) {
                Ok(e) => e,
                Err(e) => panic!("cannot create an EventFd: {e}"),
            };
            match evt.try_clone() {
                Ok(kick) => kicks.push(kick),
                Err(e) => panic!("cannot clone an EventFd: {e}"),
            }
            evts.push(evt);
        }
        let activated = {
            let mut dev = self.device();
            let acked = features & dev.avail_features();
            dev.set_acked_features(acked);
            dev.activate(ActivateContext {
                mem: mem.clone(),
                interrupt: irq,
                queues,
                queue_evts: evts,
            })
        };
        if let Err(e) = activated {
            panic!("activation with ready queues failed: {e}");
        }
        self.run_until_quiet();
        for kick in &kicks {
            let _ = kick.write(1);
        }
        self.run_until_quiet();
        self.device().reset();
        self.run_until_quiet();
        assert!(!self.device().is_activated(), "still active after a reset");
    }
}
