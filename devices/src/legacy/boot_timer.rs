//! The boot-timer port: a guest writes [`BOOT_TIMER_READY`] to [`BOOT_TIMER_PORT`] when it
//! reaches the point being measured, and the VMM logs the time since it started.

use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// The I/O port the guest writes to.
pub const BOOT_TIMER_PORT: u64 = 0x3f0;
/// The byte that marks "booted".
pub const BOOT_TIMER_READY: u8 = 123;

/// Records the time from `start` (the VMM's start) to the guest's first marker write.
#[derive(Debug)]
pub struct BootTimer {
    start: Instant,
    boot_time: Option<Duration>,
}

impl BootTimer {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            boot_time: None,
        }
    }

    /// The time to the first marker, once the guest has written it.
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_READY) || self.boot_time.is_some() {
            return;
        }
        let elapsed = self.start.elapsed();
        self.boot_time = Some(elapsed);
        // The user asked for this measurement with --boot-timer: log it above the default level.
        log::warn!(
            "Guest-boot-time = {:>6} us {} ms",
            elapsed.as_micros(),
            elapsed.as_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_the_first_ready_byte() {
        let mut t = BootTimer::new(Instant::now());
        t.write(0, &[1]);
        assert_eq!(t.boot_time(), None);
        t.write(1, &[BOOT_TIMER_READY]);
        assert_eq!(t.boot_time(), None);
        t.write(0, &[BOOT_TIMER_READY]);
        let first = t.boot_time().unwrap();
        t.write(0, &[BOOT_TIMER_READY]);
        assert_eq!(t.boot_time(), Some(first));
        let mut b = [0xff];
        t.read(0, &mut b);
        assert_eq!(b, [0]);
    }
}
