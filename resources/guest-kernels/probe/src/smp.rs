//! Waking the application processors with INIT-SIPI-SIPI. Each AP runs a
//! real-mode trampoline copied below 1 MiB, goes to long mode on our page
//! tables (entry.rs: ap_entry32/ap_entry64), records its APIC ID, counts
//! itself online and halts (or, when `net-spoof-race` set a flip address first,
//! keeps flipping one byte until told to stop, then halts).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::arch::entry::KERNEL_CS32;
use crate::arch::lapic::Lapic;
use crate::mptable::MpTable;
use crate::timer::{delay_us, Deadline};

/// Where the trampoline is copied: page 8, SIPI vector 0x08. Boot data in low
/// memory has been copied away by then; the MP table lives at 0x9fc00+.
pub const TRAMPOLINE: u64 = 0x8000;
const MAX_AP_IDS: usize = 256;
/// How long to wait for all APs to check in.
const AP_TIMEOUT_US: u64 = 2_000_000;

global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .code16
    .globl probe_ap_trampoline_start
probe_ap_trampoline_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl (tramp_gdtr - probe_ap_trampoline_start + {base})
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl ${cs32}, $ap_entry32
    .balign 8
tramp_gdtr:
    .word 8 * 9 - 1
    .long probe_gdt
    .globl probe_ap_trampoline_end
probe_ap_trampoline_end:
    .code64
"#,
    base = const TRAMPOLINE,
    cs32 = const KERNEL_CS32,
    options(att_syntax)
);

extern "C" {
    static probe_ap_trampoline_start: u8;
    static probe_ap_trampoline_end: u8;
}

/// Next free slot in `probe_ap_ids` (taken by each AP with `lock xadd`).
#[no_mangle]
pub static probe_ap_slot: AtomicU32 = AtomicU32::new(0);
/// APs that have checked in.
#[no_mangle]
pub static probe_ap_online: AtomicU32 = AtomicU32::new(0);
/// APIC IDs of the APs, in check-in order.
#[no_mangle]
pub static probe_ap_ids: [AtomicU8; MAX_AP_IDS] = [const { AtomicU8::new(0) }; MAX_AP_IDS];

/// When nonzero at wake-up, every AP xors the byte at this address with
/// `probe_ap_flip_mask` in a loop (counting `probe_ap_flips`) until
/// `probe_ap_flip_stop` is nonzero, then counts itself in `probe_ap_flip_done`.
#[no_mangle]
pub static probe_ap_flip_addr: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
pub static probe_ap_flip_mask: AtomicU8 = AtomicU8::new(0);
#[no_mangle]
pub static probe_ap_flips: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
pub static probe_ap_flip_stop: AtomicU32 = AtomicU32::new(0);
#[no_mangle]
pub static probe_ap_flip_done: AtomicU32 = AtomicU32::new(0);

/// Makes the APs woken next flip the byte at `addr` with `mask` (0 = halt as usual).
pub fn set_flipper(addr: u64, mask: u8) {
    probe_ap_flip_mask.store(mask, Ordering::SeqCst);
    probe_ap_flips.store(0, Ordering::SeqCst);
    probe_ap_flip_stop.store(0, Ordering::SeqCst);
    probe_ap_flip_done.store(0, Ordering::SeqCst);
    probe_ap_flip_addr.store(addr, Ordering::SeqCst);
}

/// Stops flipping APs; returns (flips, APs that stopped) after waiting up to 1 s.
pub fn stop_flipper() -> (u64, u32) {
    probe_ap_flip_stop.store(1, Ordering::SeqCst);
    let deadline = Deadline::after_us(1_000_000);
    let online = probe_ap_online.load(Ordering::Acquire);
    while probe_ap_flip_done.load(Ordering::Acquire) < online && !deadline.passed() {
        core::hint::spin_loop();
    }
    probe_ap_flip_addr.store(0, Ordering::SeqCst);
    (
        probe_ap_flips.load(Ordering::Acquire),
        probe_ap_flip_done.load(Ordering::Acquire),
    )
}

// Local APIC registers (xAPIC MMIO).
const LAPIC_ID: u64 = 0x20;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const ICR_INIT: u32 = 0x0000_4500;
const ICR_STARTUP: u32 = 0x0000_4600;
const ICR_PENDING: u32 = 1 << 12;

fn send_ipi(lapic: &Lapic, apic_id: u8, icr_low: u32) {
    lapic.write(LAPIC_ICR_HIGH, (apic_id as u32) << 24);
    lapic.write(LAPIC_ICR_LOW, icr_low);
    let deadline = Deadline::after_us(10_000);
    while lapic.read(LAPIC_ICR_LOW) & ICR_PENDING != 0 && !deadline.passed() {}
}

pub struct SmpResult {
    pub expected: usize,
    pub online: usize,
    pub ids: [u8; MAX_AP_IDS],
    pub id_count: usize,
}

#[derive(Clone, Copy, Debug)]
pub enum SmpError {
    BadLapicAddress(u32),
}

/// Wakes every enabled processor of the MP table other than ourselves and
/// waits (bounded) for them to check in.
pub fn start_aps(mp: &MpTable) -> Result<SmpResult, SmpError> {
    let base = mp.lapic_addr as u64;
    if base < 0xd000_0000 || base & 0xfff != 0 {
        return Err(SmpError::BadLapicAddress(mp.lapic_addr));
    }
    let lapic = Lapic::at(base);
    let my_id = (lapic.read(LAPIC_ID) >> 24) as u8;
    copy_trampoline();
    probe_ap_slot.store(0, Ordering::SeqCst);
    probe_ap_online.store(0, Ordering::SeqCst);
    lapic.enable();

    let cpus = &mp.cpus[..mp.cpu_count];
    let aps = cpus.iter().filter(|c| c.apic_id != my_id);
    let vector = (TRAMPOLINE >> 12) as u32;
    let mut woken = 0;
    for cpu in aps.clone() {
        send_ipi(&lapic, cpu.apic_id, ICR_INIT);
        woken += 1;
    }
    if woken > 0 {
        delay_us(10_000);
        for _ in 0..2 {
            for cpu in aps.clone() {
                send_ipi(&lapic, cpu.apic_id, ICR_STARTUP | vector);
            }
            delay_us(200);
        }
    }
    let deadline = Deadline::after_us(AP_TIMEOUT_US);
    while (probe_ap_online.load(Ordering::Acquire) as usize) < woken && !deadline.passed() {
        core::hint::spin_loop();
    }
    let online_aps = (probe_ap_online.load(Ordering::Acquire) as usize).min(MAX_AP_IDS - 1);
    let mut result = SmpResult {
        expected: cpus.len(),
        online: 1 + online_aps,
        ids: [0; MAX_AP_IDS],
        id_count: 0,
    };
    result.ids[0] = my_id;
    for (slot, id) in result.ids[1..=online_aps]
        .iter_mut()
        .zip(probe_ap_ids.iter())
    {
        *slot = id.load(Ordering::Relaxed);
    }
    result.id_count = 1 + online_aps;
    result.ids[..result.id_count].sort_unstable();
    Ok(result)
}

fn copy_trampoline() {
    // Both symbols delimit the trampoline bytes in .rodata.
    let (start, end) = (
        core::ptr::addr_of!(probe_ap_trampoline_start),
        core::ptr::addr_of!(probe_ap_trampoline_end),
    );
    let len = end as usize - start as usize;
    // SAFETY: TRAMPOLINE..+len (< 4 KiB) is conventional RAM below 1 MiB that
    // nothing we still need occupies (boot data was copied at entry).
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len) };
}
