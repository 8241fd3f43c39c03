//! Interrupt and event signalling through eventfds.
//!
//! The VMM registers each interrupt eventfd as a KVM irqfd, so a device raises its IRQ by a
//! plain `write(2)` without knowing about KVM.

use std::io;
use std::ops::Deref;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// An [`EventFd`] usable as a vm-superio [`vm_superio::Trigger`].
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// A fresh non-blocking eventfd.
    pub fn new_nonblocking() -> io::Result<Self> {
        EventFd::new(EFD_NONBLOCK).map(Self)
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}
