//! Address-range routing for port I/O and MMIO exits.
//!
//! A vCPU thread that takes a `KVM_EXIT_IO` or `KVM_EXIT_MMIO` looks the address up here and
//! forwards the access to the device that owns the range. Devices sit behind a `Mutex` because
//! several vCPU threads may touch the same device; the lock is per device, never global.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable from a vCPU through an address range.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    /// Unknown registers read as zero.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    /// Writes to unknown registers are ignored.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range [{base:#x}, +{len:#x}) is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range [{base:#x}, +{len:#x}) overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// Shared handle on a device inserted in a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (Range, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self
            .devices
            .values()
            .map(|(r, _)| (r.base, r.len))
            .collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `device` own `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The closest range starting at or below the new end must end at or before `base`.
        if let Some((_, (r, _))) = self.devices.range(..end).next_back() {
            if r.base + r.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (Range { base, len }, device));
        Ok(())
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (_, (r, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - r.base;
        // The whole access must fall inside the range.
        if offset.checked_add(size as u64)? <= r.len {
            Some((offset, dev))
        } else {
            None
        }
    }

    /// Forwards a read; returns false (and leaves `data` untouched) when nothing owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                // A poisoned lock means another vCPU thread panicked inside this device; the
                // device state is still memory-safe, so keep serving rather than cascade.
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Forwards a write; returns false when nothing owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_to_the_owner_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![7])));
    }

    #[test]
    fn misses_outside_and_straddling_ranges() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10)
            .unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0xfff, &mut b[..1]));
        assert!(!bus.read(0x1010, &mut b[..1]));
        assert!(!bus.read(0x100e, &mut b)); // last 2 bytes fall outside
        assert!(bus.read(0x100c, &mut b));
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(d(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(d(), 0x10ff, 1),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(d(), 0xf00, 0x101),
            Err(BusError::Overlap {
                base: 0xf00,
                len: 0x101
            })
        );
        assert!(bus.insert(d(), 0xf00, 0x100).is_ok());
        assert!(bus.insert(d(), 0x1100, 0x10).is_ok());
        assert_eq!(
            bus.insert(d(), 0, 0),
            Err(BusError::InvalidRange { base: 0, len: 0 })
        );
        assert!(bus.insert(d(), u64::MAX, 2).is_err());
    }
}
