//! Devices attached to the VM: the buses the vCPUs route exits to and the interrupt wiring.
//!
//! - [`acpi`]: the ACPI tables, the sleep registers and the VM generation ID.
//! - [`legacy`]: COM1, the i8042 and the boot-timer port on the port-I/O bus.
//! - [`mmio`]: virtio-mmio windows and IRQs, ioeventfd/irqfd wiring, `virtio_mmio.device=`.
//! - [`block`]: drives as virtio-blk devices, their runtime updates and metrics.
//! - [`balloon`]: the memory balloon and its runtime updates.
//! - [`entropy`]: the virtio-rng device.
//! - [`net`]: network interfaces as virtio-net devices over taps, limiter updates, metrics.
//! - [`vsock`]: the virtio-vsock device and its Unix-socket listener.
//! - [`persist`]: saving and restoring every device's state (snapshots).
//!
//! Everything is attached before the vCPUs start: each vCPU holds a clone of the buses.

pub mod acpi;
pub mod balloon;
pub mod block;
pub mod entropy;
pub mod legacy;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod vsock;

use devices::Bus;

/// The port-I/O and MMIO buses.
#[derive(Debug, Default, Clone)]
pub struct DeviceBuses {
    pub pio: Bus,
    pub mmio: Bus,
}
