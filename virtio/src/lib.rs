//! virtio devices and the virtio-mmio transport.
//!
//! The transport ([`mmio::MmioTransport`]) runs on vCPU threads (MMIO exits); device backends
//! run on the `io` thread ([`io_thread::IoThread`]). Nothing here touches KVM: the VMM turns the
//! transport's per-queue [`EventFd`](vmm_sys_util::eventfd::EventFd)s into ioeventfds and its
//! interrupt EventFd into an irqfd.

pub mod active;
pub mod balloon;
pub mod block;
pub mod device;
pub mod indirect;
pub mod io_thread;
pub mod mmio;
pub mod net;
pub mod rate_limiter;
pub mod rng;

#[cfg(test)]
pub(crate) mod test_utils;

pub use device::{
    ActivateContext, ActivateError, InterruptType, IrqTrigger, VirtioDevice, VirtioInterrupt,
};
pub use io_thread::{IoSubscriber, IoThread, IoThreadError, IoThreadHandle};
pub use mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};

/// The guest memory type every device works with.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Feature bits shared by every device (virtio 1.2, section 6).
pub mod features {
    /// The device conforms to virtio 1.0 or later (mandatory with the modern MMIO layout).
    pub const VIRTIO_F_VERSION_1: u32 = 32;
    /// Used/avail event index notification suppression.
    pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
    /// Indirect descriptor tables. Never offered: see [`crate::indirect`].
    pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;

    /// Whether bit `bit` is set in `features`.
    pub fn has(features: u64, bit: u32) -> bool {
        bit < 64 && features & (1u64 << bit) != 0
    }
}
