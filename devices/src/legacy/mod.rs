//! Legacy PC devices on the port-I/O bus.

mod acpi_power;
mod boot_timer;
mod i8042;
pub mod persist;
mod serial;

pub use acpi_power::{
    AcpiPower, AcpiPowerMetrics, ACPI_SLEEP_PORT_BASE, ACPI_SLEEP_PORT_LEN, SLEEP_TYPE_S5,
};
pub use boot_timer::{BootTimer, BOOT_TIMER_PORT, BOOT_TIMER_READY};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{SerialConsole, SerialOut, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
