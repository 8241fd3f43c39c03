//! The ACPI platform's devices: the sleep registers (power-off), the VM generation ID and the
//! Generic Event Device line that announces a new generation ID, plus the tables themselves.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use devices::legacy::{AcpiPower, AcpiPowerMetrics, ACPI_SLEEP_PORT_BASE, ACPI_SLEEP_PORT_LEN};
use devices::{BusError, EventFdTrigger};
use serde_json::json;
use virtio::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::mmio::GED_IRQ;
use super::DeviceBuses;
use crate::arch::x86_64::acpi::{self, AcpiError, MmioDeviceInfo, Platform, VMGENID_ADDR};
use crate::metrics::Metrics;
use crate::vstate::vm::{Vm, VmError};

/// Errors while attaching the ACPI devices.
#[derive(Debug, thiserror::Error)]
pub enum AcpiDeviceError {
    #[error("cannot create an eventfd for {what}: {source}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot place the ACPI sleep registers on the I/O bus: {0}")]
    Bus(BusError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Tables(#[from] AcpiError),
    #[error("cannot get random bytes for the VM generation ID: {0}")]
    Random(std::io::Error),
    #[error("cannot write the VM generation ID to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
    #[error("cannot raise the VM generation ID notification: {0}")]
    Notify(std::io::Error),
}

/// The VM generation ID: 16 random bytes at a fixed guest address, and the interrupt that
/// tells the guest to read them again.
#[derive(Debug)]
pub struct VmGenId {
    id: [u8; 16],
    notify: EventFdTrigger,
}

impl VmGenId {
    /// Writes a fresh id into guest memory; `notify` is the GED line's irqfd.
    fn new(mem: &GuestMemoryMmap, notify: EventFdTrigger) -> Result<Self, AcpiDeviceError> {
        let mut g = Self {
            id: [0; 16],
            notify,
        };
        g.write_new_id(mem)?;
        Ok(g)
    }

    /// The id the guest sees now.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Gives the guest a new id and raises the change notification. Call it before any vCPU
    /// of a restored VM runs, so the guest reseeds before it can hand out a random number
    /// that its clones would hand out too.
    pub fn regenerate(&mut self, mem: &GuestMemoryMmap) -> Result<(), AcpiDeviceError> {
        self.write_new_id(mem)?;
        self.notify.write(1).map_err(AcpiDeviceError::Notify)
    }

    fn write_new_id(&mut self, mem: &GuestMemoryMmap) -> Result<(), AcpiDeviceError> {
        self.id = random_id()?;
        mem.write_slice(&self.id, GuestAddress(VMGENID_ADDR))
            .map_err(AcpiDeviceError::Write)
    }
}

/// 16 bytes from the kernel's CSPRNG; never all zero (a zero id reads as "no id").
fn random_id() -> Result<[u8; 16], AcpiDeviceError> {
    let mut id = [0u8; 16];
    while id == [0; 16] {
        let mut filled = 0;
        while filled < id.len() {
            let rest = &mut id[filled..];
            // SAFETY: the pointer and length describe `rest`, a live, writable buffer that
            // getrandom fills with at most `rest.len()` bytes.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(AcpiDeviceError::Random(e));
            }
            filled += n as usize;
        }
    }
    Ok(id)
}

/// Handles the VMM keeps on the ACPI platform.
#[derive(Debug)]
pub struct AcpiDevices {
    pub power: Arc<Mutex<AcpiPower>>,
    pub vmgenid: VmGenId,
    pub rsdp: u64,
}

fn eventfd(what: &'static str) -> Result<EventFdTrigger, AcpiDeviceError> {
    EventFdTrigger::new_nonblocking().map_err(|source| AcpiDeviceError::EventFd { what, source })
}

/// Puts the sleep registers on the I/O bus (`poweroff` fires when the guest enters S5),
/// wires the GED line, writes a fresh generation ID and the tables describing `vcpu_count`
/// vCPUs and the `virtio` windows.
pub fn attach_acpi(
    vm: &Vm,
    buses: &mut DeviceBuses,
    mem: &GuestMemoryMmap,
    poweroff: EventFdTrigger,
    vcpu_count: u8,
    virtio: Vec<MmioDeviceInfo>,
) -> Result<AcpiDevices, AcpiDeviceError> {
    let power = Arc::new(Mutex::new(AcpiPower::new(poweroff)));
    buses
        .pio
        .insert(power.clone(), ACPI_SLEEP_PORT_BASE, ACPI_SLEEP_PORT_LEN)
        .map_err(AcpiDeviceError::Bus)?;
    let ged = eventfd("the GED interrupt")?;
    vm.register_irqfd(&ged, GED_IRQ)?;
    let vmgenid = VmGenId::new(mem, ged)?;
    let rsdp = acpi::write_tables(
        mem,
        &Platform {
            vcpu_count,
            virtio,
            ged_irq: GED_IRQ,
            vmgenid_addr: VMGENID_ADDR,
        },
    )?;
    Ok(AcpiDevices {
        power,
        vmgenid,
        rsdp,
    })
}

/// For a restored VM: the same devices as [`attach_acpi`] (sleep registers, GED line) without
/// writing the tables, which are in the restored memory already. The caller then calls
/// [`VmGenId::regenerate`] once the interrupt controllers are restored, the vCPUs' LAPICs
/// included (restoring the IOAPIC or a LAPIC would drop an interrupt raised earlier, and
/// with no vCPU yet the edge has nowhere to land) and before any vCPU runs, so that the guest
/// (Linux >= 5.18 with `CONFIG_VMGENID`) reseeds its RNG before it hands out a random number
/// its clones would hand out too.
pub fn attach_acpi_restored(
    vm: &Vm,
    buses: &mut DeviceBuses,
    mem: &GuestMemoryMmap,
    poweroff: EventFdTrigger,
) -> Result<AcpiDevices, AcpiDeviceError> {
    let power = Arc::new(Mutex::new(AcpiPower::new(poweroff)));
    buses
        .pio
        .insert(power.clone(), ACPI_SLEEP_PORT_BASE, ACPI_SLEEP_PORT_LEN)
        .map_err(AcpiDeviceError::Bus)?;
    let ged = eventfd("the GED interrupt")?;
    vm.register_irqfd(&ged, GED_IRQ)?;
    let vmgenid = VmGenId::new(mem, ged)?;
    Ok(AcpiDevices {
        power,
        vmgenid,
        rsdp: acpi::RSDP_ADDR,
    })
}

/// Adds the `acpi` object to the metrics line.
pub fn register_acpi_metrics(devices: &AcpiDevices, metrics: &Metrics) {
    let m: Arc<AcpiPowerMetrics> = devices
        .power
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .metrics();
    metrics.register_device(
        "acpi",
        Box::new(move || {
            json!({
                "poweroff_requests": m.poweroff_requests.load(Ordering::Relaxed),
                "ignored_writes": m.ignored_writes.load(Ordering::Relaxed),
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_never_zero() {
        let a = random_id().unwrap();
        let b = random_id().unwrap();
        assert_ne!(a, [0; 16]);
        assert_ne!(a, b);
    }

    #[test]
    fn regenerate_writes_a_new_id_and_notifies() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let notify = EventFdTrigger::new_nonblocking().unwrap();
        let mut g = VmGenId::new(&mem, notify.try_clone().unwrap()).unwrap();
        let first = g.id();
        let mut in_guest = [0u8; 16];
        mem.read_slice(&mut in_guest, GuestAddress(VMGENID_ADDR))
            .unwrap();
        assert_eq!(in_guest, first);
        assert!(notify.read().is_err(), "no notification at boot");
        g.regenerate(&mem).unwrap();
        mem.read_slice(&mut in_guest, GuestAddress(VMGENID_ADDR))
            .unwrap();
        assert_ne!(in_guest, first);
        assert_eq!(in_guest, g.id());
        assert_eq!(notify.read().unwrap(), 1);
    }
}
