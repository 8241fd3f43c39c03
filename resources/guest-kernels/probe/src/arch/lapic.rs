//! The local APIC's xAPIC registers, through its MMIO page.

/// Spurious-interrupt vector register.
pub const SVR: u64 = 0xf0;

/// The xAPIC of this CPU at `base`.
#[derive(Clone, Copy)]
pub struct Lapic {
    base: u64,
}

impl Lapic {
    /// `base` must be the LAPIC MMIO page, which our identity map covers (uncached) from
    /// the 32-bit MMIO hole up; callers check where they got it from.
    pub fn at(base: u64) -> Lapic {
        Lapic { base }
    }

    pub fn read(&self, reg: u64) -> u32 {
        // SAFETY: `base` is the LAPIC MMIO page (see `at`), `reg` one of its 16-byte-aligned
        // registers.
        unsafe { core::ptr::read_volatile((self.base + reg) as *const u32) }
    }

    pub fn write(&self, reg: u64, value: u32) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.base + reg) as *mut u32, value) }
    }

    /// Software-enables the APIC with spurious vector 0xff.
    pub fn enable(&self) {
        self.write(SVR, self.read(SVR) | 0x1ff);
    }
}
