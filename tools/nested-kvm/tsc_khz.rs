//! Prints the host's TSC frequency in kHz, measured by timing `rdtsc` against
//! CLOCK_MONOTONIC. QEMU's TCG hands the host TSC through to its guest, and the nested
//! tier's L1 kernel needs that rate as `tsc_early_khz=`: without it KVM in L1 may have no
//! TSC frequency and spin forever.
//!
//! Built by tools/nested-kvm/build with plain `rustc` (no dependencies).

use std::time::{Duration, Instant};

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; every x86_64 CPU has it and it
    // touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// One measurement over `window`: TSC ticks per millisecond of monotonic time.
fn measure(window: Duration) -> u64 {
    let start_time = Instant::now();
    let start_tsc = rdtsc();
    while start_time.elapsed() < window {
        std::hint::spin_loop();
    }
    let ticks = rdtsc().wrapping_sub(start_tsc);
    let elapsed_us = start_time.elapsed().as_micros().max(1);
    u64::try_from(u128::from(ticks) * 1000 / elapsed_us).unwrap_or(u64::MAX)
}

fn main() {
    // The median of a few short windows is robust against a preemption in one of them.
    let mut samples: Vec<u64> = (0..5).map(|_| measure(Duration::from_millis(40))).collect();
    samples.sort_unstable();
    println!("{}", samples[samples.len() / 2]);
}
