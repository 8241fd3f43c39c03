//! COM1, the i8042 and the boot-timer port on the port-I/O bus.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::legacy::{
    BootTimer, SerialConsole, SerialOut, BOOT_TIMER_PORT, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN,
    I8042, I8042_PORT_BASE, I8042_PORT_LEN,
};
use devices::{BusError, EventFdTrigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::DeviceBuses;
use crate::vstate::vm::{Vm, VmError};

/// The keyboard's legacy interrupt line.
const KBD_IRQ: u32 = 1;

/// Errors while attaching legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("cannot create an eventfd for {what}: {source}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot place {what} on the I/O bus: {source}")]
    Bus {
        what: &'static str,
        source: BusError,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// Handles the VMM keeps on the legacy devices.
#[derive(Debug)]
pub struct LegacyDevices {
    pub serial: Arc<Mutex<SerialConsole>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// Signalled when the guest resets through the i8042.
    pub reset_evt: EventFd,
}

impl LegacyDevices {
    /// A trigger on the reset event, for the ACPI power button: a guest powering off ends
    /// the VM the way an i8042 reset does.
    pub fn poweroff_trigger(&self) -> std::io::Result<EventFdTrigger> {
        Ok(EventFdTrigger::new(self.reset_evt.try_clone()?))
    }
}

fn eventfd(what: &'static str) -> Result<EventFdTrigger, LegacyError> {
    EventFdTrigger::new_nonblocking().map_err(|source| LegacyError::EventFd { what, source })
}

/// Creates the legacy devices, wires their interrupts as irqfds and puts them on `buses.pio`.
/// `boot_timer` (the VMM's start time) adds the boot-timer port.
pub fn attach_legacy_devices(
    vm: &Vm,
    buses: &mut DeviceBuses,
    serial_out: SerialOut,
    boot_timer: Option<Instant>,
) -> Result<LegacyDevices, LegacyError> {
    let com1_irq = eventfd("the COM1 interrupt")?;
    vm.register_irqfd(&com1_irq, COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(com1_irq, serial_out)));

    let kbd_irq = eventfd("the keyboard interrupt")?;
    vm.register_irqfd(&kbd_irq, KBD_IRQ)?;
    let reset_err = |source| LegacyError::EventFd {
        what: "the reset event",
        source,
    };
    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(reset_err)?;
    let reset = EventFdTrigger::new(reset_evt.try_clone().map_err(reset_err)?);
    let i8042 = Arc::new(Mutex::new(I8042::new(reset, kbd_irq)));

    let bus_err = |what| move |source| LegacyError::Bus { what, source };
    buses
        .pio
        .insert(serial.clone(), COM1_PORT_BASE, COM1_PORT_LEN)
        .map_err(bus_err("COM1"))?;
    buses
        .pio
        .insert(i8042.clone(), I8042_PORT_BASE, I8042_PORT_LEN)
        .map_err(bus_err("the i8042"))?;
    if let Some(start) = boot_timer {
        buses
            .pio
            .insert(
                Arc::new(Mutex::new(BootTimer::new(start))),
                BOOT_TIMER_PORT,
                1,
            )
            .map_err(bus_err("the boot timer"))?;
    }
    Ok(LegacyDevices {
        serial,
        i8042,
        reset_evt,
    })
}
