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

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms * 1_000_000, Ordering::SeqCst);
    }
}

impl crate::rate_limiter::Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Waits up to 10 s for `fd` to become readable.
pub fn wait_readable(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    n == 1
}

/// Adds to `vq`, from descriptor `start`, a chain of `(addr, len, device-writable)` buffers
/// linked in order; returns the index after the chain.
pub fn add_linked_chain(
    vq: &virtio_queue::mock::MockSplitQueue<'_, GuestMemoryMmap>,
    start: u16,
    descs: &[(u64, u32, bool)],
) -> u16 {
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, writable))| {
            let last = i == descs.len() - 1;
            let flags = if writable { WRITE } else { 0 } | if last { 0 } else { NEXT };
            let next = if last { 0 } else { start + i as u16 + 1 };
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect();
    vq.add_desc_chains(&raw, start).unwrap();
    start + descs.len() as u16
}
