//! Exception handling: every CPU exception prints `PROBE-PANIC <vector>
//! rip=...` on COM1 and stops the machine. Every vector from 32 up only
//! returns: an interrupt's one job here is to end a `hlt` (see
//! `lapic_timer`), whose caller sends the EOI.

use core::arch::{asm, global_asm};

use super::cpu;
use super::entry::KERNEL_CS;
use crate::sync::BootCell;

const EXCEPTIONS: usize = 32;
const VECTORS: usize = 256;

global_asm!(
    r#"
    .macro ISR_NOERR n
isr_\n:
    pushq $0
    pushq $\n
    jmp isr_common
    .endm
    .macro ISR_ERR n
isr_\n:
    pushq $\n
    jmp isr_common
    .endm

    .section .text, "ax"
    .code64
    ISR_NOERR 0
    ISR_NOERR 1
    ISR_NOERR 2
    ISR_NOERR 3
    ISR_NOERR 4
    ISR_NOERR 5
    ISR_NOERR 6
    ISR_NOERR 7
    ISR_ERR 8
    ISR_NOERR 9
    ISR_ERR 10
    ISR_ERR 11
    ISR_ERR 12
    ISR_ERR 13
    ISR_ERR 14
    ISR_NOERR 15
    ISR_NOERR 16
    ISR_ERR 17
    ISR_NOERR 18
    ISR_NOERR 19
    ISR_NOERR 20
    ISR_ERR 21
    ISR_NOERR 22
    ISR_NOERR 23
    ISR_NOERR 24
    ISR_NOERR 25
    ISR_NOERR 26
    ISR_NOERR 27
    ISR_NOERR 28
    ISR_ERR 29
    ISR_ERR 30
    ISR_NOERR 31
isr_wake:
    iretq
isr_common:
    mov %rsp, %rdi
    and $-16, %rsp
    call probe_exception
    ud2

    .section .rodata, "a"
    .balign 8
    .globl probe_isr_table
probe_isr_table:
    .quad isr_0, isr_1, isr_2, isr_3, isr_4, isr_5, isr_6, isr_7
    .quad isr_8, isr_9, isr_10, isr_11, isr_12, isr_13, isr_14, isr_15
    .quad isr_16, isr_17, isr_18, isr_19, isr_20, isr_21, isr_22, isr_23
    .quad isr_24, isr_25, isr_26, isr_27, isr_28, isr_29, isr_30, isr_31
    .globl probe_isr_wake
probe_isr_wake:
    .quad isr_wake
"#,
    options(att_syntax)
);

extern "C" {
    static probe_isr_table: [u64; EXCEPTIONS];
    static probe_isr_wake: u64;
}

/// What the stubs leave on the stack, lowest address first.
#[repr(C)]
pub struct ExceptionFrame {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const EMPTY_GATE: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};

static IDT: BootCell<[Gate; VECTORS]> = BootCell::new([EMPTY_GATE; VECTORS]);

fn gate(handler: u64) -> Gate {
    Gate {
        offset_low: handler as u16,
        selector: KERNEL_CS,
        ist: 0,
        type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
        offset_mid: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        reserved: 0,
    }
}

/// Fills the IDT with the exception stubs and the wake stub, and loads it.
pub fn init() {
    // SAFETY: the table is defined in the asm above with EXCEPTIONS entries.
    let handlers = unsafe { &*core::ptr::addr_of!(probe_isr_table) };
    // SAFETY: defined in the asm above: the address of the wake stub.
    let wake = unsafe { core::ptr::addr_of!(probe_isr_wake).read() };
    IDT.with(|idt| {
        for (vector, slot) in idt.iter_mut().enumerate() {
            *slot = gate(handlers.get(vector).copied().unwrap_or(wake));
        }
    });
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer {
        limit: (VECTORS * 16 - 1) as u16,
        base: IDT.as_ptr() as u64,
    };
    // SAFETY: the IDT is a static that lives forever and holds valid gates.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) }
}

/// Called by the stubs with a pointer to the exception frame.
#[no_mangle]
extern "C" fn probe_exception(frame: &ExceptionFrame) -> ! {
    let cr2 = if frame.vector == 14 {
        cpu::read_cr2()
    } else {
        0
    };
    crate::sprintln!(
        "PROBE-PANIC {} rip={:#x} err={:#x} cr2={:#x} rsp={:#x}",
        frame.vector,
        frame.rip,
        frame.error_code,
        cr2,
        frame.rsp
    );
    cpu::triple_fault()
}
