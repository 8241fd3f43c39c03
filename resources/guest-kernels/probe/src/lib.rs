//! xenia's probe guest: a freestanding x86_64 kernel that boots through PVH
//! or the 64-bit Linux boot protocol, runs the commands named on its command
//! line (`probe.cmds=...`) against the VMM's devices and reports on COM1.
//!
//! Under PVM every ring-0 instruction is emulated (~1 µs each): keep ring-0
//! work small (rep-string ops, one word per page); heavy loops belong in
//! guest ring 3 (the GDT already has user segments and a TSS slot).
//!
//! `virtio/`: virtio-mmio transport found from
//! `virtio_mmio.device=<size>@<addr>:<irq>` on the command line, virtio-blk
//! and virtio-net drivers behind the `blk-*` / `net-*` commands.

#![no_std]

pub mod acpi;
pub mod acpi_cmds;
pub mod arch;
pub mod bootinfo;
pub mod cmdline;
pub mod commands;
pub mod cpuinfo;
pub mod e820;
pub mod mem;
pub mod mptable;
pub mod serial;
pub mod smp;
pub mod snap_cmds;
pub mod sync;
pub mod timer;
pub mod virtio;

use arch::entry::ENTRY_PVH;
use arch::{cpu, idt, port};
use bootinfo::EntryKind;

/// Called by the entry assembly on our own stack, GDT and page tables.
#[no_mangle]
extern "C" fn probe_main(kind: u64, info: u64) -> ! {
    serial::init();
    idt::init();
    let entry = if kind == ENTRY_PVH {
        EntryKind::Pvh
    } else {
        EntryKind::Linux64
    };
    bootinfo::capture(entry, info);
    sprintln!("PROBE-BOOT-OK entry={}", entry.name());
    let boot = bootinfo::get();
    for cmd in cmdline::commands(&boot.cmdline[..boot.cmdline_len]) {
        commands::run(cmd);
    }
    sprintln!("PROBE-DONE");
    reset()
}

/// Resets the machine through the i8042 (xenia exits 0 on it); falls back to
/// a triple fault if the controller is not there.
pub fn reset() -> ! {
    port::outb(0x64, 0xfe);
    timer::delay_us(100_000);
    cpu::triple_fault()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => sprintln!("PROBE-PANIC rust at={}:{}", l.file(), l.line()),
        None => sprintln!("PROBE-PANIC rust"),
    }
    cpu::triple_fault()
}
