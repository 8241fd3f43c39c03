//! Small wrappers around privileged or special instructions.

use core::arch::asm;

/// Result of one CPUID query.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID for `leaf`/`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged here (CR4.TSD is clear) and side-effect free.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Halts forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stops this CPU until an NMI/INIT; nothing to preserve.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Stops the machine the hard way: an empty IDT turns the next exception
/// into a triple fault, which every VMM reports as a shutdown.
pub fn triple_fault() -> ! {
    let zero_idt = [0u16; 5];
    // SAFETY: deliberately destroys the CPU state; never returns.
    unsafe {
        asm!("lidt [{}]", "ud2", in(reg) zero_idt.as_ptr(), options(noreturn, nostack));
    }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}
