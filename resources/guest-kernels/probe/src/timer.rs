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
    let f = from_hypervisor_leaf()
        .or_else(from_leaf_15)
        .or_else(from_pit)?;
    FREQ.set(Some(f));
    Some(f)
}

/// KVM/VMware "timing information" leaf 0x40000010: EAX = TSC kHz.
fn from_hypervisor_leaf() -> Option<TscFreq> {
    if cpuid(1, 0).ecx & (1 << 31) == 0 || cpuid(0x4000_0000, 0).eax < 0x4000_0010 {
        return None;
    }
    let khz = cpuid(0x4000_0010, 0).eax as u64;
    (khz != 0).then_some(TscFreq {
        khz,
        source: "cpuid-0x40000010",
    })
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
    (khz != 0).then_some(TscFreq {
        khz,
        source: "cpuid-0x15",
    })
}

const PIT_HZ: u64 = 1_193_182;
/// PIT ticks between the two samples of one round (~20 ms).
const CALIBRATION_PIT_TICKS: u64 = 23_864;
const CALIBRATION_ROUNDS: usize = 3;
/// Reads per sample; the one with the tightest rdtsc bracket wins.
const SAMPLE_TRIES: usize = 4;
/// Bounds on the wait (polls are VM exits), so a VMM without a PIT or without
/// port 0x61 (KVM's in-kernel PIT serves it only when created with
/// KVM_PIT_SPEAKER_DUMMY) costs a few seconds, not a hang.
const PIT_MAX_POLLS: u32 = 1_000_000;
const PIT_MAX_TSC_TICKS: u64 = 1 << 33;

/// PIT channel 2 as a free-running 16-bit down-counter (mode 0 from 0xffff),
/// sampled at two points: each sample reads the latched count between two
/// rdtsc, so a vCPU descheduled *inside* the window changes nothing, and one
/// descheduled at a sample shows up as a wide bracket and is discarded.
fn from_pit() -> Option<TscFreq> {
    let port61 = inb(0x61);
    let mut results = [0u64; CALIBRATION_ROUNDS];
    let mut n = 0;
    for _ in 0..CALIBRATION_ROUNDS {
        if let Some(khz) = pit_round() {
            results[n] = khz;
            n += 1;
        }
    }
    outb(0x61, port61);
    let results = &mut results[..n];
    results.sort_unstable();
    let khz = *results.get(n / 2)?; // the median
    (khz != 0).then_some(TscFreq { khz, source: "pit" })
}

fn pit_round() -> Option<u64> {
    outb(0x61, (inb(0x61) & !0x02) | 0x01); // gate channel 2 on, speaker off
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, 0xff);
    outb(0x42, 0xff);
    let (tsc0, count0) = pit_sample();
    let mut polls = 0;
    let (tsc1, count1) = loop {
        let (tsc, count) = pit_sample();
        // The count only falls (from 0xffff, 55 ms): a rise means it wrapped
        // or the PIT is not there.
        if count > count0 || polls >= PIT_MAX_POLLS || tsc.wrapping_sub(tsc0) > PIT_MAX_TSC_TICKS {
            return None;
        }
        if count0 - count >= CALIBRATION_PIT_TICKS {
            break (tsc, count);
        }
        polls += 1;
    };
    let pit_ticks = count0 - count1;
    Some(tsc1.wrapping_sub(tsc0) * PIT_HZ / pit_ticks / 1000)
}

/// (TSC at the middle of the read, channel 2 count), from the tightest of a
/// few reads.
fn pit_sample() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..SAMPLE_TRIES {
        let before = rdtsc();
        outb(0x43, 0x80); // latch channel 2
        let lo = inb(0x42) as u64;
        let hi = inb(0x42) as u64;
        let after = rdtsc();
        let width = after.wrapping_sub(before);
        if width < best.0 {
            best = (width, before + width / 2, hi << 8 | lo);
        }
    }
    (best.1, best.2)
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
        Deadline {
            start: rdtsc(),
            ticks: us.saturating_mul(khz) / 1000,
        }
    }

    pub fn passed(&self) -> bool {
        rdtsc().wrapping_sub(self.start) >= self.ticks
    }
}
