//! The contract between the virtio-mmio transport and a device, and the interrupt path.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

/// Why the device raises its interrupt line (the bits of the MMIO `InterruptStatus` register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptType {
    /// The device used buffers in a queue.
    Vring,
    /// The configuration space (or the device status) changed.
    Config,
}

impl InterruptType {
    /// Bit in the `InterruptStatus` register.
    pub fn status_bit(self) -> u32 {
        match self {
            InterruptType::Vring => 1,
            InterruptType::Config => 2,
        }
    }
}

/// How a device signals the guest. Implemented by [`IrqTrigger`]; tests use a recorder.
pub trait VirtioInterrupt: Send + Sync {
    /// Sets the status bit for `int` and raises the interrupt line.
    fn trigger(&self, int: InterruptType) -> io::Result<()>;
    /// Reports that the device hit an unrecoverable error (e.g. a corrupt queue): the transport
    /// shows `DEVICE_NEEDS_RESET` in its status register and the driver gets a config interrupt.
    fn signal_needs_reset(&self);
}

/// Interrupt state shared by a transport and its device: an irqfd EventFd (the VMM registers
/// it with `KVM_IRQFD`), the `InterruptStatus` word, the config generation and the
/// needs-reset flag.
#[derive(Debug)]
pub struct IrqTrigger {
    irq_evt: EventFd,
    status: AtomicU32,
    config_generation: AtomicU32,
    needs_reset: AtomicBool,
}

impl IrqTrigger {
    pub fn new() -> io::Result<Self> {
        Ok(IrqTrigger {
            irq_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
        })
    }

    /// The EventFd to register as an irqfd for this device's GSI.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }

    /// Current `InterruptStatus` bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// Clears the bits the driver acknowledged.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// Puts back a saved `InterruptStatus`, config generation and needs-reset flag
    /// (snapshot restore; the caller validated them).
    pub(crate) fn restore(&self, status: u32, config_generation: u32, needs_reset: bool) {
        self.status.store(status, Ordering::Release);
        self.config_generation
            .store(config_generation, Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
    }

    /// Back to the power-on state (device reset by the driver).
    pub fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }
}

impl VirtioInterrupt for IrqTrigger {
    fn trigger(&self, int: InterruptType) -> io::Result<()> {
        // The status bit first: a driver that polls and sees the new generation must also
        // see why (a guest vCPU can read both between these two stores).
        self.status.fetch_or(int.status_bit(), Ordering::AcqRel);
        if int == InterruptType::Config {
            // The driver re-reads the config space until the generation is stable.
            self.config_generation.fetch_add(1, Ordering::AcqRel);
        }
        self.irq_evt.write(1)
    }

    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        if let Err(e) = self.trigger(InterruptType::Config) {
            log::error!("virtio: cannot raise the needs-reset interrupt: {e}");
        }
    }
}

/// Everything a device receives when the driver sets `DRIVER_OK`.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// One queue per [`VirtioDevice::queue_max_sizes`] entry, validated by the transport
    /// when the driver marked it ready (a queue the driver left unused is not ready).
    pub queues: Vec<Queue>,
    /// Duplicates of the transport's notification EventFds, same order as `queues`.
    pub queue_evts: Vec<EventFd>,
}

impl std::fmt::Debug for ActivateContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivateContext")
            .field("queues", &self.queues.len())
            .finish()
    }
}

/// Errors from activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {index} was not made ready by the driver")]
    QueueNotReady { index: usize },
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device is already active")]
    AlreadyActive,
    #[error("cannot signal the I/O thread: {0}")]
    Notify(io::Error),
    #[error("backend setup failed: {0}")]
    Backend(String),
}

/// A virtio device as the transport sees it. Device backends are served on the `io` thread:
/// `activate` hands them their queues and must return quickly (it runs on a vCPU thread).
/// Copies the bytes of a device's config space at `offset` into `data`; bytes past the end
/// read as zero. Offset and length come from the guest, so nothing here trusts them.
pub fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= space.len() {
        return;
    }
    let end = start.saturating_add(data.len()).min(space.len());
    data[..end - start].copy_from_slice(&space[start..end]);
}

pub trait VirtioDevice: Send {
    /// virtio device id (1 = net, 2 = block, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver (the transport adds `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64;
    /// Features the driver accepted (valid after `FEATURES_OK`).
    fn acked_features(&self) -> u64;
    /// Called by the transport when the driver sets `FEATURES_OK` with a valid subset.
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device-specific config space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving the queues (on the I/O thread).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving and forgets the queues (driver wrote 0 to the status register).
    fn reset(&mut self);
    /// Whether `activate` succeeded and no reset followed.
    fn is_activated(&self) -> bool;
}

#[cfg(test)]
mod config_space_tests {
    use super::read_config_space;

    #[test]
    fn reads_inside_across_and_past_the_end() {
        let space = [1u8, 2, 3, 4];
        let mut d = [9u8; 2];
        read_config_space(&space, 1, &mut d);
        assert_eq!(d, [2, 3]);
        let mut d = [9u8; 4];
        read_config_space(&space, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_space(&space, 4, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_space(&space, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
