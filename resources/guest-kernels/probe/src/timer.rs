//! Time: the TSC, calibrated once from a hypervisor CPUID leaf, CPUID 0x15,
//! or PIT channel 2.

use crate::arch::cpu::{cpuid, pause, rdtsc};
use crate::arch::port::{inb, outb};
use crate::sync::BootCell;

#[derive(Clone, Copy, Debug)]
pub struct TscFreq {
    pub khz: u64,
    pub source: &'static str,
}

static FREQ: BootCell<Option<TscFreq>> = BootCell::new(None);

/// TSC frequency, calibrating on first use. `None` if every method failed.
pub fn tsc_freq() -> Option<TscFreq> {
    if let Some(f) = FREQ.get() {
        return Some(f);
    }
    let f = from_hypervisor_leaf().or_else(from_leaf_15).or_else(from_pit)?;
    FREQ.set(Some(f));
    Some(f)
}

/// KVM/VMware "timing information" leaf 0x40000010: EAX = TSC kHz.
fn from_hypervisor_leaf() -> Option<TscFreq> {
    if cpuid(1, 0).ecx & (1 << 31) == 0 || cpuid(0x4000_0000, 0).eax < 0x4000_0010 {
        return None;
    }
    let khz = cpuid(0x4000_0010, 0).eax as u64;
    (khz != 0).then_some(TscFreq { khz, source: "cpuid-0x40000010" })
}

/// Leaf 0x15: TSC/crystal ratio and crystal frequency.
fn from_leaf_15() -> Option<TscFreq> {
    if cpuid(0, 0).eax < 0x15 {
        return None;
    }
    let r = cpuid(0x15, 0);
    if r.eax == 0 || r.ebx == 0 || r.ecx == 0 {
        return None;
    }
    let khz = r.ecx as u64 * r.ebx as u64 / r.eax as u64 / 1000;
    (khz != 0).then_some(TscFreq { khz, source: "cpuid-0x15" })
}

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 10;
/// Upper bound on PIT polls (each is a VM exit), so a missing PIT cannot hang us.
const PIT_MAX_POLLS: u32 = 10_000_000;

/// Counts TSC ticks while PIT channel 2 counts down 10 ms (one-shot, mode 0).
fn from_pit() -> Option<TscFreq> {
    let count = PIT_HZ * CALIBRATION_MS / 1000;
    let port61 = inb(0x61);
    outb(0x61, (port61 & !0x02) | 0x01); // gate channel 2 on, speaker off
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    let start = rdtsc();
    let mut polls = 0;
    while inb(0x61) & 0x20 == 0 {
        polls += 1;
        if polls >= PIT_MAX_POLLS {
            outb(0x61, port61);
            return None;
        }
    }
    let ticks = rdtsc().wrapping_sub(start);
    outb(0x61, port61);
    let khz = ticks / CALIBRATION_MS;
    (khz != 0).then_some(TscFreq { khz, source: "pit" })
}

/// Busy-waits `us` microseconds. Without a calibrated TSC it assumes 1 GHz,
/// which only errs on the long side for real CPUs clocked above that.
pub fn delay_us(us: u64) {
    let khz = tsc_freq().map(|f| f.khz).unwrap_or(1_000_000);
    let ticks = us.saturating_mul(khz) / 1000;
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < ticks {
        pause();
    }
}

/// A deadline `us` microseconds from now, for bounded polling.
pub struct Deadline {
    start: u64,
    ticks: u64,
}

impl Deadline {
    pub fn after_us(us: u64) -> Self {
        let khz = tsc_freq().map(|f| f.khz).unwrap_or(1_000_000);
        Deadline { start: rdtsc(), ticks: us.saturating_mul(khz) / 1000 }
    }

    pub fn passed(&self) -> bool {
        rdtsc().wrapping_sub(self.start) >= self.ticks
    }
}
