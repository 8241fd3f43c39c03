//! Sleeping without burning the host's CPU: the local APIC timer, in one-shot mode, ends a
//! `hlt`. A guest that ticks every 100 ms then costs its host nothing in between, so a
//! hundred clones of it share two host cores instead of each spinning on one.
//!
//! Without a usable xAPIC (x2APIC mode, or a timer that does not count) sleeping falls back
//! to spinning on the TSC.

use core::arch::asm;

use super::cpu::{pause, rdtsc};
use super::lapic::Lapic;
use super::port::outb;
use crate::sync::BootCell;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
const APIC_X2APIC_MODE: u64 = 1 << 10;
const EOI: u64 = 0xb0;
const LVT_TIMER: u64 = 0x320;
const INITIAL_COUNT: u64 = 0x380;
const CURRENT_COUNT: u64 = 0x390;
const DIVIDE_CONFIG: u64 = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const DIVIDE_BY_1: u32 = 0b1011;
/// Any vector from 32 up only returns (see `idt`); this one is the timer's.
const WAKE_VECTOR: u32 = 0x30;

#[derive(Clone, Copy)]
struct WakeTimer {
    lapic: Lapic,
    /// APIC timer ticks per `tsc_ticks` TSC ticks, measured once.
    apic_ticks: u64,
    tsc_ticks: u64,
}

/// `None` before the first sleep; `Some(None)` when the timer is unusable.
static TIMER: BootCell<Option<Option<WakeTimer>>> = BootCell::new(None);

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC; reading it has no side
    // effects.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) }
    (hi as u64) << 32 | lo as u64
}

fn wake_timer() -> Option<WakeTimer> {
    if let Some(timer) = TIMER.get() {
        return timer;
    }
    let timer = calibrate();
    TIMER.set(Some(timer));
    timer
}

/// Enables the xAPIC, masks the legacy PICs (whose reset vectors would alias the CPU
/// exceptions once interrupts are on) and measures the APIC timer against the TSC over
/// about a million TSC ticks.
fn calibrate() -> Option<WakeTimer> {
    let msr = rdmsr(IA32_APIC_BASE);
    if msr & APIC_GLOBAL_ENABLE == 0 || msr & APIC_X2APIC_MODE != 0 {
        return None;
    }
    let lapic = Lapic::at(msr & 0x000f_ffff_ffff_f000);
    let mut timer = WakeTimer {
        lapic,
        apic_ticks: 0,
        tsc_ticks: 0,
    };
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    lapic.enable();
    timer.lapic.write(DIVIDE_CONFIG, DIVIDE_BY_1);
    timer.lapic.write(LVT_TIMER, LVT_MASKED | WAKE_VECTOR);
    let start = rdtsc();
    timer.lapic.write(INITIAL_COUNT, u32::MAX);
    while rdtsc().wrapping_sub(start) < 1 << 20 {
        pause();
    }
    let left = timer.lapic.read(CURRENT_COUNT);
    let tsc_ticks = rdtsc().wrapping_sub(start);
    timer.lapic.write(INITIAL_COUNT, 0);
    timer.apic_ticks = u64::from(u32::MAX - left);
    timer.tsc_ticks = tsc_ticks;
    (timer.apic_ticks > 0 && tsc_ticks > 0).then_some(timer)
}

/// Returns once the TSC reached `deadline`, halted in between when the APIC timer can wake
/// this CPU. Interrupts are off again on return.
pub fn sleep_until(deadline: u64) {
    let Some(timer) = wake_timer() else {
        while (rdtsc().wrapping_sub(deadline) as i64) < 0 {
            pause();
        }
        return;
    };
    loop {
        let left = deadline.wrapping_sub(rdtsc()) as i64;
        if left <= 0 {
            break;
        }
        let count = (left as u64).saturating_mul(timer.apic_ticks) / timer.tsc_ticks;
        timer.lapic.write(LVT_TIMER, WAKE_VECTOR);
        timer
            .lapic
            .write(INITIAL_COUNT, count.clamp(1, u64::from(u32::MAX)) as u32);
        // SAFETY: every vector from 32 up has a gate that only returns, and the PICs are
        // masked, so the only interrupts are the APIC's and each just ends the `hlt`. `sti`
        // delays interrupts by one instruction, so a timer that already fired still wakes
        // the `hlt` instead of being taken before it.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) }
        timer.lapic.write(EOI, 0);
    }
    timer.lapic.write(INITIAL_COUNT, 0);
}
