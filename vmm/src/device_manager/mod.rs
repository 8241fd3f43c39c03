//! Devices attached to the VM: the buses the vCPUs route exits to and the interrupt wiring.
//!
//! Legacy devices live in [`legacy`]. Virtio-mmio devices will be added here too: each gets an
//! MMIO window on [`DeviceBuses::mmio`] and an IRQ (see `arch::layout::MMIO_HOLE_START` and
//! the brief's layout), its interrupt eventfd registered with [`crate::vstate::vm::Vm::register_irqfd`]
//! and its queue-notify eventfds with KVM_IOEVENTFD, before the vCPUs start (each vCPU holds a
//! clone of the buses).

pub mod legacy;

use devices::Bus;

/// The port-I/O and MMIO buses.
#[derive(Debug, Default, Clone)]
pub struct DeviceBuses {
    pub pio: Bus,
    pub mmio: Bus,
}
