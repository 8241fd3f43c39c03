//! Helpers shared by unit tests: guest memory, an interrupt recorder.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vm_memory::GuestAddress;

use crate::device::{InterruptType, VirtioInterrupt};
use crate::GuestMemoryMmap;

/// 16 MiB of guest memory at 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// Counts interrupts instead of raising them.
#[derive(Debug, Default)]
pub struct RecordingInterrupt {
    pub vring: AtomicU32,
    pub config: AtomicU32,
    pub needs_reset: AtomicBool,
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, int: InterruptType) -> std::io::Result<()> {
        match int {
            InterruptType::Vring => self.vring.fetch_add(1, Ordering::SeqCst),
            InterruptType::Config => self.config.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    }

    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}
