//! `memtick:MIB`: guest memory with a known, evolving content and a tick counter, so that a
//! snapshot test can check after a restore that memory came back intact and time goes on.
//!
//! The region (MIB MiB of free RAM above the image) gets one word per 4 KiB page:
//! `initial(i) = (i + 1) * A` for page `i`. Every 100 ms tick `n` (1, 2, ...) overwrites the
//! word of page `n % pages` with `value(n) = n * B ^ C`, then re-reads every page, checks
//! each word against what it must hold after tick `n` and prints
//! `PROBE memtick n=<n> sum=0x<16 hex> bad=<mismatches> addr=<region> pages=<pages>`,
//! where `sum` is the wrapping sum of all words. A host can recompute `sum` from `n`
//! alone. One read per page keeps the ring-0 cost (emulated under PVM) near 20 µs a page.

use crate::arch::{cpu, lapic_timer};
use crate::bootinfo;
use crate::cmdline::parse_u64;
use crate::commands::Hex16;
use crate::e820::find_free;
use crate::mem::MAPPED_LIMIT;
use crate::{sprintln, timer};

extern "C" {
    static __image_end: u8;
}

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const TICK_US: u64 = 100_000;
/// At most 64 MiB: each tick reads every page in emulated ring 0.
const MAX_MIB: u64 = 64;
const A: u64 = 0x9e37_79b9_7f4a_7c15;
const B: u64 = 0xc2b2_ae3d_27d4_eb4f;
const C: u64 = 0x5eed_5eed_0000_0000;

fn initial(page: u64) -> u64 {
    (page + 1).wrapping_mul(A)
}

fn value(n: u64) -> u64 {
    n.wrapping_mul(B) ^ C
}

/// What page `i` (< `pages`) holds after tick `n`: the value of the last tick
/// `m <= n` with `m % pages == i`, or its initial word when there was none.
fn expected(i: u64, pages: u64, n: u64) -> u64 {
    let back = (n % pages + pages - i) % pages;
    match n.checked_sub(back) {
        Some(m) if m >= 1 => value(m),
        _ => initial(i),
    }
}

pub fn memtick(arg: Option<&[u8]>) {
    let Some(mib) = arg
        .and_then(parse_u64)
        .filter(|m| (1..=MAX_MIB).contains(m))
    else {
        sprintln!("PROBE memtick FAIL bad-argument");
        return;
    };
    let boot = bootinfo::get();
    if let Some(reason) = boot.e820_missing {
        sprintln!("PROBE memtick FAIL {}", reason);
        return;
    }
    let Some(freq) = timer::tsc_freq() else {
        sprintln!("PROBE memtick FAIL no-tsc-calibration");
        return;
    };
    let len = mib * MIB;
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let initrd = boot.initrd.map(|(a, s)| (a, a.saturating_add(s)));
    let Some(start) = find_free(
        &boot.e820[..boot.e820_len],
        len,
        image_end,
        MAPPED_LIMIT,
        initrd.as_slice(),
    ) else {
        sprintln!("PROBE memtick FAIL no-free-ram mib={}", mib);
        return;
    };
    let pages = len / PAGE;
    let word = |i: u64| (start + i * PAGE) as *mut u64;
    for i in 0..pages {
        // SAFETY: [start, start + len) is free RAM below MAPPED_LIMIT (find_free).
        unsafe { core::ptr::write_volatile(word(i), initial(i)) };
    }
    sprintln!("PROBE memtick ready addr={:#x} pages={}", start, pages);
    let period = freq.khz * TICK_US / 1000;
    let mut next = cpu::rdtsc().wrapping_add(period);
    let mut n = 0u64;
    loop {
        lapic_timer::sleep_until(next);
        next = next.wrapping_add(period);
        n += 1;
        // SAFETY: n % pages < pages: inside the region.
        unsafe { core::ptr::write_volatile(word(n % pages), value(n)) };
        let mut sum = 0u64;
        let mut bad = 0u64;
        for i in 0..pages {
            // SAFETY: as above.
            let got = unsafe { core::ptr::read_volatile(word(i)) };
            sum = sum.wrapping_add(got);
            if got != expected(i, pages, n) {
                bad += 1;
            }
        }
        sprintln!(
            "PROBE memtick n={} sum=0x{} bad={} addr={:#x} pages={}",
            n,
            Hex16(sum),
            bad,
            start,
            pages
        );
    }
}
