//! virtio-mmio devices: window and IRQ allocation, KVM wiring, kernel command-line entries.
//!
//! Each device gets a 4 KiB register window from [`MMIO_HOLE_START`] up and an IOAPIC line
//! from [`FIRST_VIRTIO_IRQ`] up. Its queue-notify register becomes one ioeventfd per queue
//! (datamatch = queue index), so a notification wakes the `io` thread straight from KVM; its
//! interrupt EventFd becomes an irqfd, so a completion raised on the `io` thread reaches the
//! guest without passing through the VMM or a vCPU thread.

use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use virtio::GuestMemoryMmap;
use virtio::{MmioTransport, VirtioDevice, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};

use super::DeviceBuses;
use crate::arch::x86_64::acpi::MmioDeviceInfo;
use crate::arch::x86_64::layout::{IOAPIC_BASE, MMIO_HOLE_START};
use crate::arch::x86_64::mptable::IOAPIC_PINS;
use crate::vstate::vm::{Vm, VmError};

/// First IOAPIC line given to virtio devices (0–4 are the legacy devices' and COM1's).
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Last IOAPIC line given to virtio devices.
pub const LAST_VIRTIO_IRQ: u32 = GED_IRQ - 1;
/// The ACPI Generic Event Device's line: the last pin.
pub const GED_IRQ: u32 = IOAPIC_PINS as u32 - 1;

/// Errors while placing a virtio-mmio device.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error(
        "{what}: no IRQ line left (virtio devices use IRQs {FIRST_VIRTIO_IRQ}..={LAST_VIRTIO_IRQ})"
    )]
    NoIrq { what: String },
    #[error("{what}: no MMIO window left below the IOAPIC at {IOAPIC_BASE:#x}")]
    NoWindow { what: String },
    #[error("{what}: cannot create the virtio-mmio transport: {source}")]
    Transport {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: cannot place the MMIO window at {base:#x}: {source}")]
    Bus {
        what: String,
        base: u64,
        source: devices::BusError,
    },
    #[error("{what}: KVM_IOEVENTFD for queue {queue} at {addr:#x} failed: {source}")]
    IoEvent {
        what: String,
        queue: usize,
        addr: u64,
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Irqfd { what: String, source: VmError },
}

/// Where one device lives in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// This device as the DSDT describes it.
    pub fn acpi_info(&self) -> MmioDeviceInfo {
        MmioDeviceInfo {
            base: self.base,
            size: MMIO_WINDOW_SIZE,
            irq: self.irq,
        }
    }

    /// The `virtio_mmio.device=` argument that tells Linux about this device.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_WINDOW_SIZE / 1024,
            self.base,
            self.irq
        )
    }
}

/// Hands out MMIO windows and IRQ lines in order.
#[derive(Debug, Clone)]
pub struct MmioAllocator {
    next_base: u64,
    next_irq: u32,
}

impl Default for MmioAllocator {
    fn default() -> Self {
        Self {
            next_base: MMIO_HOLE_START,
            next_irq: FIRST_VIRTIO_IRQ,
        }
    }
}

impl MmioAllocator {
    /// The next free window and IRQ; `what` names the device in errors.
    pub fn allocate(&mut self, what: &str) -> Result<MmioSlot, MmioError> {
        if self.next_irq > LAST_VIRTIO_IRQ {
            return Err(MmioError::NoIrq { what: what.into() });
        }
        let end = self.next_base + MMIO_WINDOW_SIZE;
        if end > IOAPIC_BASE {
            return Err(MmioError::NoWindow { what: what.into() });
        }
        let slot = MmioSlot {
            base: self.next_base,
            irq: self.next_irq,
        };
        self.next_base = end;
        self.next_irq += 1;
        Ok(slot)
    }
}

/// A device attached through virtio-mmio, with the entry Linux needs to find it.
#[derive(Debug)]
pub struct MmioDevice {
    pub slot: MmioSlot,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Wraps `device` in a transport, puts it on the MMIO bus and wires its notifications and
/// interrupt through KVM. Call before the vCPUs start (they hold clones of the buses).
pub fn attach_virtio_mmio(
    vm: &Vm,
    buses: &mut DeviceBuses,
    allocator: &mut MmioAllocator,
    memory: &GuestMemoryMmap,
    device: Arc<Mutex<dyn VirtioDevice>>,
    what: &str,
) -> Result<MmioDevice, MmioError> {
    let slot = allocator.allocate(what)?;
    let transport =
        MmioTransport::new(memory.clone(), device).map_err(|source| MmioError::Transport {
            what: what.into(),
            source,
        })?;
    let notify_addr = slot.base + QUEUE_NOTIFY_OFFSET;
    for (queue, evt) in transport.queue_evts().iter().enumerate() {
        // A 4-byte datamatch: the driver writes the queue index as a 32-bit value.
        let datamatch = u32::try_from(queue).unwrap_or(u32::MAX);
        vm.fd()
            .register_ioevent(evt, &IoEventAddress::Mmio(notify_addr), datamatch)
            .map_err(|source| MmioError::IoEvent {
                what: what.into(),
                queue,
                addr: notify_addr,
                source,
            })?;
    }
    vm.register_irqfd(transport.irq_evt(), slot.irq)
        .map_err(|source| MmioError::Irqfd {
            what: what.into(),
            source,
        })?;
    let transport = Arc::new(Mutex::new(transport));
    buses
        .mmio
        .insert(transport.clone(), slot.base, MMIO_WINDOW_SIZE)
        .map_err(|source| MmioError::Bus {
            what: what.into(),
            base: slot.base,
            source,
        })?;
    Ok(MmioDevice { slot, transport })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_irqs_are_handed_out_in_order_until_the_lines_run_out() {
        let mut a = MmioAllocator::default();
        let first = a.allocate("drives[a]").unwrap();
        assert_eq!(
            first,
            MmioSlot {
                base: 0xD000_0000,
                irq: 5
            }
        );
        let second = a.allocate("drives[b]").unwrap();
        assert_eq!(second.base, 0xD000_1000);
        assert_eq!(second.irq, 6);
        let usable = (LAST_VIRTIO_IRQ - FIRST_VIRTIO_IRQ + 1) as usize;
        for i in 2..usable {
            a.allocate(&format!("d{i}")).unwrap();
        }
        let e = a.allocate("drives[last]").unwrap_err().to_string();
        assert!(e.contains("drives[last]") && e.contains("IRQ"), "{e}");
    }

    #[test]
    fn command_line_entry_has_size_base_and_irq() {
        let slot = MmioSlot {
            base: 0xD000_2000,
            irq: 7,
        };
        assert_eq!(slot.cmdline_entry(), "virtio_mmio.device=4K@0xd0002000:7");
    }
}
