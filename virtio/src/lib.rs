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
pub mod persist;
pub mod rate_limiter;
pub mod rng;
pub mod vsock;

#[cfg(test)]
mod persist_tests;
#[cfg(test)]
pub(crate) mod test_alloc;
#[cfg(test)]
pub(crate) mod test_rings;
#[cfg(test)]
pub(crate) mod test_utils;

pub use device::{
    ActivateContext, ActivateError, InterruptType, IrqTrigger, VirtioDevice, VirtioInterrupt,
};
pub use io_thread::{IoSubscriber, IoThread, IoThreadError, IoThreadHandle};
pub use mmio::persist::{MmioTransportState, QueueRegsState, TransportStateError};
pub use mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
pub use persist::{
    QueueState, QueueStateError, VirtioDeviceState, VirtioPersist, VirtioStateError,
};

/// Guest memory as every device sees it. The bitmap records each page written through
/// vm-memory (used rings, request status bytes, sync-engine reads into the guest) and, marked
/// by hand, the buffers io_uring and the tap fill through raw pointers: the pages the VMM's
/// threads write, which KVM's dirty log does not see. Diff snapshots OR the two.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;

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
