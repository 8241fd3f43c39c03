//! The probe with a PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY): VMMs that see
//! the note boot it through PVH.

#![no_std]
#![no_main]

extern crate probe;

// Elf note: namesz, descsz, type 18, "Xen", then the 32-bit entry as a quad
// (QEMU reads a full word). 4-byte alignment throughout: loaders align the
// name by the segment's p_align.
core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_entry
    .section .text
"#,
    options(att_syntax)
);
