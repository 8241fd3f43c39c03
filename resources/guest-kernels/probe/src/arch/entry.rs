//! The two ways in (PVH and the 64-bit Linux boot protocol), the GDT, the
//! identity page tables and the exception stubs. Both entries end up in
//! `probe_main(kind, info)` in long mode on our own stack and GDT.
//!
//! PVH: 32-bit protected mode, paging off, EBX = hvm_start_info, no stack.
//! Linux 64-bit: long mode, RSI = boot_params ("zero page"), the VMM's page
//! tables and a small stack; we replace all of that at once.

use core::arch::global_asm;

/// `kind` value passed to `probe_main` for the 64-bit Linux boot protocol.
pub const ENTRY_LINUX64: u64 = 1;
/// `kind` value passed to `probe_main` for PVH.
pub const ENTRY_PVH: u64 = 2;

/// GDT selectors. The user selectors follow the SYSRET layout
/// (STAR[63:48] = USER_CS32: user data = +8, user code64 = +16).
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const KERNEL_CS32: u16 = 0x18;
pub const USER_CS32: u16 = 0x20;
pub const USER_DS: u16 = 0x28;
pub const USER_CS: u16 = 0x30;
pub const TSS_SEL: u16 = 0x38;

/// Bytes of boot stack (the BSP's only stack).
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

// The identity map covers the first 4 GiB with 2 MiB pages; everything from
// the 32-bit MMIO hole (0xD000_0000) up is mapped uncached. The tables are
// initialised data in the image, so entering costs no loop in ring 0 (which
// PVM would emulate one instruction at a time).
global_asm!(
    r#"
    /* 32-bit protected mode, paging off -> long mode on our page tables;
       the caller then far-jumps to a 64-bit code segment. */
    .macro ENTER_LONG_MODE
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $probe_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    .endm

    .section .text.entry, "ax"
    .code64
    .globl linux64_entry
linux64_entry:
    cli
    cld
    mov %rsi, %r12
    mov $boot_stack_top, %rsp
    lgdt probe_gdt_ptr(%rip)
    mov $probe_pml4, %rax
    mov %rax, %cr3
    pushq ${kcs}
    lea 1f(%rip), %rax
    pushq %rax
    lretq
1:
    mov $1, %edi
    mov %r12, %rsi
    jmp common64

    /* The 32-bit entries sit first, below image offset 0x200 (the linker
       script checks), so that linux64_entry lands at +0x200 as the bzImage
       64-bit protocol expects. */
    .section .text.head32, "ax"
    .code32
    .globl pvh_entry
pvh_entry:
    cli
    cld
    mov %ebx, %esi
    lgdt probe_gdt_ptr
    mov ${kds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    ENTER_LONG_MODE
    ljmp ${kcs}, $pvh_entry64

    .section .text.entry, "ax"
    .code64
pvh_entry64:
    mov $boot_stack_top, %rsp
    mov %esi, %esi
    mov $2, %edi
    jmp common64

common64:
    mov ${kds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    /* SSE on (CR0.EM=0, CR0.MP=1, CR4.OSFXSR|OSXMMEXCPT); the code itself is built without it. */
    mov %cr0, %rax
    and $~0x4, %rax
    or $0x2, %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or $0x600, %rax
    mov %rax, %cr4
    /* Zero .bss (the stack lives outside it): a few KiB, rep stosq. */
    mov %rdi, %r13
    mov %rsi, %r14
    mov $__bss_start, %rdi
    mov $__bss_end, %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    xor %eax, %eax
    rep stosq
    mov %r13, %rdi
    mov %r14, %rsi
    and $-16, %rsp
    call probe_main
    ud2

    /* Application processors arrive here from the real-mode trampoline
       (see smp.rs) in 32-bit protected mode. They only check in: take a
       slot, record their APIC ID, count themselves online, halt. */
    .section .text.head32, "ax"
    .code32
    .globl ap_entry32
ap_entry32:
    mov ${kds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    ENTER_LONG_MODE
    ljmp ${kcs}, $ap_entry64

    .section .text.entry, "ax"
    .code64
ap_entry64:
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov $1, %eax
    lock xadd %eax, probe_ap_slot(%rip)
    cmp $255, %eax
    ja 2f
    mov %bl, probe_ap_ids(%rax)
2:
    lock incl probe_ap_online(%rip)
    /* With a flip address set (net-spoof-race), keep xor-ing that byte until told to stop:
       the second vCPU racing the device. No stack needed. */
    mov probe_ap_flip_addr(%rip), %rdi
    test %rdi, %rdi
    jz 3f
    movzbl probe_ap_flip_mask(%rip), %edx
4:
    xorb %dl, (%rdi)
    incq probe_ap_flips(%rip)
    cmpl $0, probe_ap_flip_stop(%rip)
    je 4b
    lock incl probe_ap_flip_done(%rip)
3:
    cli
    hlt
    jmp 3b
"#,
    kcs = const KERNEL_CS,
    kds = const KERNEL_DS,
    options(att_syntax)
);

global_asm!(
    r#"
    .section .data, "aw"
    .balign 16
    .globl probe_gdt
probe_gdt:
    .quad 0
    .quad 0x00af9b000000ffff /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff /* 0x10 kernel data */
    .quad 0x00cf9b000000ffff /* 0x18 kernel code, 32-bit (AP trampoline) */
    .quad 0x00cffb000000ffff /* 0x20 user code, 32-bit (SYSRET layout) */
    .quad 0x00cff3000000ffff /* 0x28 user data */
    .quad 0x00affb000000ffff /* 0x30 user code, 64-bit */
    .quad 0, 0               /* 0x38 TSS, filled in when ring 3 is first used */
probe_gdt_end:
    .balign 8
    .globl probe_gdt_ptr
probe_gdt_ptr:
    .word probe_gdt_end - probe_gdt - 1
    .quad probe_gdt

    .section .data.pagetables, "aw"
    .balign 4096
    .globl probe_pml4
probe_pml4:
    .quad probe_pdpt + 0x7
    .fill 511, 8, 0
probe_pdpt:
    .quad probe_pd + 0x7
    .quad probe_pd + 0x1000 + 0x7
    .quad probe_pd + 0x2000 + 0x7
    .quad probe_pd + 0x3000 + 0x7
    .fill 508, 8, 0
probe_pd:
    .set pde_index, 0
    .rept 2048
    .if pde_index >= 1664
    .quad (pde_index << 21) | 0x9f   /* P RW U PWT PCD PS: MMIO hole and above */
    .else
    .quad (pde_index << 21) | 0x87   /* P RW U PS */
    .endif
    .set pde_index, pde_index + 1
    .endr

    .section .stack, "aw", @nobits
    .balign 16
boot_stack:
    .fill {stack}, 1, 0
    .globl boot_stack_top
boot_stack_top:
"#,
    stack = const BOOT_STACK_SIZE,
    options(att_syntax)
);
