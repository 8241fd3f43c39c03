//! Writes the two linker scripts (with and without the PVH note segment) and
//! hands each binary its own.

use std::env;
use std::fs;
use std::path::PathBuf;

const LOAD_ADDR: u64 = 0x10_0000;
/// Real-mode part of the bzImage: boot sector + one setup sector.
const SETUP_SIZE: u64 = 0x400;

#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    /// ELF with the PVH note.
    Pvh,
    /// ELF without it (64-bit Linux boot protocol).
    NoPvh,
    /// ELF whose flat binary (objcopy -O binary) is a bzImage: a 1 KiB
    /// real-mode part with the setup header right below the kernel.
    BzImage,
}

fn script(flavour: Flavour) -> String {
    let with_note = flavour == Flavour::Pvh;
    let phdrs = if with_note {
        "PHDRS {\n  image PT_LOAD FLAGS(7);\n  xen_note PT_NOTE FLAGS(4);\n}\n"
    } else {
        "PHDRS {\n  image PT_LOAD FLAGS(7);\n}\n"
    };
    // The note must stay 4-byte aligned: loaders align the note name by p_align.
    let note = if with_note {
        "  .note.Xen : ALIGN(4) { KEEP(*(.note.Xen)) } :image :xen_note\n"
    } else {
        "  /DISCARD/ : { *(.note.Xen) }\n"
    };
    let setup = if flavour == Flavour::BzImage {
        format!(
            "  .setup {:#x} : {{ KEEP(*(.setup)) }} :image\n",
            LOAD_ADDR - SETUP_SIZE
        )
    } else {
        String::new()
    };
    format!(
        "ENTRY(linux64_entry)\n{phdrs}SECTIONS {{\n{setup}  . = {LOAD_ADDR:#x};\n  __image_start = .;\n\
  .text : {{ KEEP(*(.text.head32)) . = ALIGN(0x200); KEEP(*(.text.entry)) *(.text .text.*) }} :image\n\
  .rodata : ALIGN(16) {{ *(.rodata .rodata.*) }} :image\n\
  .data : ALIGN(4096) {{ *(.data.pagetables) *(.data .data.*) *(.got .got.*) *(.data.rel.ro .data.rel.ro.*) }} :image\n\
{note}\
  __load_end = .;\n\
  .bss : ALIGN(4096) {{ __bss_start = .; *(.bss .bss.*) *(COMMON) . = ALIGN(8); __bss_end = .; }} :image\n\
  .stack (NOLOAD) : ALIGN(4096) {{ *(.stack) }} :image\n\
  . = ALIGN(4096);\n  __image_end = .;\n\
  __probe_syssize = (__load_end - __image_start + 15) / 16;\n\
  __probe_init_size = __image_end - __image_start;\n\
  /DISCARD/ : {{ *(.eh_frame*) *(.note.gnu*) *(.comment) *(.note.GNU-stack) }}\n}}\n\
ASSERT(linux64_entry == __image_start + 0x200, \"linux64_entry must sit at +0x200\")\n"
    )
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (bin, flavour) in [
        ("probe", Flavour::Pvh),
        ("probe-nopvh", Flavour::NoPvh),
        ("probe-bzimage", Flavour::BzImage),
    ] {
        let path = out.join(format!("{bin}.ld"));
        fs::write(&path, script(flavour)).expect("write linker script");
        println!("cargo:rustc-link-arg-bin={bin}=-T{}", path.display());
        println!("cargo:rustc-link-arg-bin={bin}=-Wl,--undefined=linux64_entry");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
