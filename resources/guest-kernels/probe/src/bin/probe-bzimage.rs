//! The probe as a bzImage (after `objcopy -O binary`, see build.sh): a boot
//! sector and one setup sector carrying the setup header (protocol 2.12,
//! XLF_KERNEL_64), then the same kernel as probe-nopvh loaded at 1 MiB with
//! its 64-bit entry at +0x200. Only the 64-bit boot protocol is supported:
//! the real-mode entry just halts.

#![no_std]
#![no_main]

extern crate probe;

// Offsets from Linux's Documentation/arch/x86/boot.rst; __probe_syssize and
// __probe_init_size come from the linker script (build.rs).
core::arch::global_asm!(
    r#"
    .section .setup, "a"
    .org 0x1f1
    .byte 1                   /* setup_sects: one sector after the boot sector */
    .word 0                   /* root_flags */
    .long __probe_syssize     /* syssize, 16-byte units */
    .word 0                   /* ram_size */
    .word 0                   /* vid_mode */
    .word 0                   /* root_dev */
    .word 0xaa55              /* boot_flag */
    .byte 0xeb, realmode_halt - 1f /* jump: real-mode entry */
1:
    .ascii "HdrS"             /* header */
    .word 0x020c              /* version 2.12 */
    .long 0                   /* realmode_swtch */
    .word 0                   /* start_sys_seg */
    .word 0                   /* kernel_version */
    .byte 0                   /* type_of_loader */
    .byte 0x01                /* loadflags: LOADED_HIGH */
    .word 0                   /* setup_move_size */
    .long 0x100000            /* code32_start */
    .long 0                   /* ramdisk_image */
    .long 0                   /* ramdisk_size */
    .long 0                   /* bootsect_kludge */
    .word 0                   /* heap_end_ptr */
    .byte 0                   /* ext_loader_ver */
    .byte 0                   /* ext_loader_type */
    .long 0                   /* cmd_line_ptr */
    .long 0x7fffffff          /* initrd_addr_max */
    .long 0x200000            /* kernel_alignment */
    .byte 0                   /* relocatable_kernel */
    .byte 0                   /* min_alignment */
    .word 0x0001              /* xloadflags: XLF_KERNEL_64 */
    .long 2047                /* cmdline_size */
    .long 0                   /* hardware_subarch */
    .quad 0                   /* hardware_subarch_data */
    .long 0                   /* payload_offset */
    .long 0                   /* payload_length */
    .quad 0                   /* setup_data */
    .quad 0x100000            /* pref_address */
    .long __probe_init_size   /* init_size */
    .long 0                   /* handover_offset */
realmode_halt:
    .byte 0xfa, 0xf4, 0xeb, 0xfd /* cli; hlt; jmp back */
    .org 0x400
    .section .text
"#,
    options(att_syntax)
);
