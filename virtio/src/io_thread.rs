//! The `io` thread: one event-manager loop that serves every virtio device backend.
//!
//! The VMM builds an [`IoThread`], adds every device (as an [`IoSubscriber`]) at boot, then
//! calls [`IoThread::start`]. Devices listen on their own control EventFd, so activation on
//! a vCPU thread only writes that fd; the queue fds join the loop from inside the loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use vmm_sys_util::eventfd::EventFd;

/// Stack of the `io` thread. Measured: the deepest path (a qcow2 request through imago, a
/// net frame, activation) touches under 32 KiB in a debug build, 16 KiB in release; glibc
/// also carves the thread's TLS and descriptor out of this. 256 KiB leaves room for a debug
/// build and a panic's unwinding; untouched pages cost no memory, but a small mapping keeps
/// several threads' stacks under one page table page instead of one each.
pub const IO_THREAD_STACK_SIZE: usize = 256 << 10;

/// What the loop holds: a device shared with its transport.
pub type IoSubscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors from the I/O thread.
#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    #[error("cannot create the event manager: {0:?}")]
    EventManager(event_manager::Error),
    #[error("cannot create the stop EventFd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot spawn the io thread: {0}")]
    Spawn(std::io::Error),
    #[error("io thread start-up hook failed: {0}")]
    StartHook(String),
    #[error("event loop failed: {0:?}")]
    Loop(event_manager::Error),
    #[error("the io thread panicked")]
    Panicked,
}

/// Stops the loop when its EventFd fires.
struct StopListener {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopListener {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("io thread: cannot watch the stop EventFd: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::Release);
    }
}

/// The I/O event loop before it runs.
pub struct IoThread {
    manager: EventManager<IoSubscriber>,
    stop_evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread").finish()
    }
}

impl IoThread {
    pub fn new() -> Result<Self, IoThreadError> {
        let mut manager = EventManager::new().map_err(IoThreadError::EventManager)?;
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(IoThreadError::EventFd)?;
        let stop = Arc::new(AtomicBool::new(false));
        let listener = StopListener {
            evt: stop_evt.try_clone().map_err(IoThreadError::EventFd)?,
            stop: stop.clone(),
        };
        manager.add_subscriber(Arc::new(Mutex::new(listener)) as IoSubscriber);
        Ok(IoThread {
            manager,
            stop_evt,
            stop,
        })
    }

    /// Adds a device before the loop starts.
    pub fn add_subscriber(&mut self, subscriber: IoSubscriber) -> SubscriberId {
        self.manager.add_subscriber(subscriber)
    }

    /// Spawns the thread named `io`. `on_start` runs first on that thread, before any guest
    /// input is touched: install the thread's seccomp filter there.
    pub fn start<F>(self, on_start: F) -> Result<IoThreadHandle, IoThreadError>
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        let IoThread {
            mut manager,
            stop_evt,
            stop,
        } = self;
        let join = std::thread::Builder::new()
            .name("io".into())
            .stack_size(IO_THREAD_STACK_SIZE)
            .spawn(move || -> Result<(), IoThreadError> {
                on_start().map_err(IoThreadError::StartHook)?;
                while !stop.load(Ordering::Acquire) {
                    match manager.run() {
                        Ok(_) => {}
                        Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => continue,
                        Err(e) => return Err(IoThreadError::Loop(e)),
                    }
                }
                Ok(())
            })
            .map_err(IoThreadError::Spawn)?;
        Ok(IoThreadHandle {
            stop_evt,
            join: Some(join),
        })
    }
}

/// A running `io` thread.
pub struct IoThreadHandle {
    stop_evt: EventFd,
    join: Option<JoinHandle<Result<(), IoThreadError>>>,
}

impl std::fmt::Debug for IoThreadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThreadHandle").finish()
    }
}

impl IoThreadHandle {
    /// Stops the loop and waits for the thread; returns how the loop ended.
    pub fn stop(mut self) -> Result<(), IoThreadError> {
        self.stop_evt.write(1).map_err(IoThreadError::EventFd)?;
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<(), IoThreadError> {
        match self.join.take() {
            Some(j) => j.join().map_err(|_| IoThreadError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for IoThreadHandle {
    fn drop(&mut self) {
        if self.join.is_some() {
            let _ = self.stop_evt.write(1);
            if let Err(e) = self.join_inner() {
                log::error!("io thread ended with: {e}");
            }
        }
    }
}
