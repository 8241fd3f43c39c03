//! The hardware-reduced ACPI sleep registers: how a guest powers the machine off.
//!
//! A hardware-reduced platform has no PM1 blocks; the FADT points the guest at a one-byte
//! sleep control register and a one-byte sleep status register instead. Linux enters S5 by
//! writing `SLP_TYP << 2 | SLP_EN` to the control register, with `SLP_TYP` taken from the
//! DSDT's `\_S5` package. That write ends the VM the way the i8042 reset does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::log_limiter::LogLimiter;
use crate::trigger::EventFdTrigger;

/// First port of the device: the sleep control register; the status register follows.
pub const ACPI_SLEEP_PORT_BASE: u64 = 0x600;
/// Control and status, one byte each.
pub const ACPI_SLEEP_PORT_LEN: u64 = 2;
/// The `SLP_TYP` value the DSDT's `\_S5` package announces for soft-off.
pub const SLEEP_TYPE_S5: u8 = 5;

const CONTROL_OFFSET: u64 = 0;
const STATUS_OFFSET: u64 = 1;
/// Sleep control register: SLP_TYP in bits 2..=4, SLP_EN in bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
const SLP_EN: u8 = 1 << 5;

/// What the guest did to the registers, for the metrics.
#[derive(Debug, Default)]
pub struct AcpiPowerMetrics {
    /// Soft-off requests (S5 with SLP_EN).
    pub poweroff_requests: AtomicU64,
    /// Writes that asked for nothing we model: other sleep states, other registers, wider
    /// accesses. Ignored.
    pub ignored_writes: AtomicU64,
}

/// The sleep control and status registers.
#[derive(Debug)]
pub struct AcpiPower {
    poweroff: EventFdTrigger,
    metrics: Arc<AcpiPowerMetrics>,
    guest_log: LogLimiter,
}

impl AcpiPower {
    /// `poweroff` is signalled when the guest enters S5.
    pub fn new(poweroff: EventFdTrigger) -> Self {
        Self {
            poweroff,
            metrics: Arc::new(AcpiPowerMetrics::default()),
            guest_log: LogLimiter::new(std::time::Duration::from_secs(5)),
        }
    }

    pub fn metrics(&self) -> Arc<AcpiPowerMetrics> {
        self.metrics.clone()
    }

    fn ignore(&mut self, offset: u64, data: &[u8]) {
        self.metrics.ignored_writes.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.guest_log.check() {
            log::debug!(
                "acpi: ignored write {data:02x?} at offset {offset} \
                 ({suppressed} similar writes suppressed before)"
            );
        }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: never "woken" (WAK_STS clear); the machine is gone before a guest could
        // wait for a wake-up from S5.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            self.ignore(offset, data);
            return;
        };
        match offset {
            CONTROL_OFFSET
                if value & SLP_EN != 0
                    && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLEEP_TYPE_S5 =>
            {
                self.metrics
                    .poweroff_requests
                    .fetch_add(1, Ordering::Relaxed);
                log::info!("acpi: the guest entered S5 (soft off)");
                if let Err(e) = self.poweroff.trigger() {
                    log::error!("acpi: cannot signal the power-off: {e}");
                }
            }
            // Writing 1 to WAK_STS clears it; it is never set, so there is nothing to do.
            STATUS_OFFSET => {}
            _ => self.ignore(offset, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (AcpiPower, EventFdTrigger) {
        let evt = EventFdTrigger::new_nonblocking().unwrap();
        (AcpiPower::new(evt.try_clone().unwrap()), evt)
    }

    fn fired(evt: &EventFdTrigger) -> bool {
        evt.read().is_ok()
    }

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let (mut dev, evt) = device();
        dev.write(CONTROL_OFFSET, &[(SLEEP_TYPE_S5 << SLP_TYP_SHIFT) | SLP_EN]);
        assert!(fired(&evt));
        assert_eq!(dev.metrics().poweroff_requests.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn garbage_is_ignored_and_counted() {
        let (mut dev, evt) = device();
        let writes: [(u64, &[u8]); 5] = [
            (CONTROL_OFFSET, &[SLEEP_TYPE_S5 << SLP_TYP_SHIFT]), // no SLP_EN
            (CONTROL_OFFSET, &[(3 << SLP_TYP_SHIFT) | SLP_EN]),  // S3
            (CONTROL_OFFSET, &[0x34, 0]),                        // two bytes
            (CONTROL_OFFSET, &[]),
            (7, &[0x34]),
        ];
        for (offset, data) in writes {
            dev.write(offset, data);
        }
        assert!(!fired(&evt));
        let m = dev.metrics();
        assert_eq!(m.ignored_writes.load(Ordering::Relaxed), 5);
        assert_eq!(m.poweroff_requests.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn status_reads_zero_and_accepts_clears() {
        let (mut dev, evt) = device();
        let mut d = [0xffu8; 1];
        dev.read(STATUS_OFFSET, &mut d);
        assert_eq!(d, [0]);
        dev.write(STATUS_OFFSET, &[0x80]);
        assert!(!fired(&evt));
        assert_eq!(dev.metrics().ignored_writes.load(Ordering::Relaxed), 0);
    }
}
