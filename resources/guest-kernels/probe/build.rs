//! Writes the two linker scripts (with and without the PVH note segment) and
//! hands each binary its own.

use std::env;
use std::fs;
use std::path::PathBuf;

const LOAD_ADDR: u64 = 0x10_0000;

fn script(with_note: bool) -> String {
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
    format!(
        "ENTRY(linux64_entry)\n{phdrs}SECTIONS {{\n  . = {LOAD_ADDR:#x};\n  __image_start = .;\n\
  .text : {{ KEEP(*(.text.entry)) *(.text .text.*) }} :image\n\
  .rodata : ALIGN(16) {{ *(.rodata .rodata.*) }} :image\n\
  .data : ALIGN(4096) {{ *(.data.pagetables) *(.data .data.*) *(.got .got.*) *(.data.rel.ro .data.rel.ro.*) }} :image\n\
{note}\
  .bss : ALIGN(4096) {{ __bss_start = .; *(.bss .bss.*) *(COMMON) . = ALIGN(8); __bss_end = .; }} :image\n\
  .stack (NOLOAD) : ALIGN(4096) {{ *(.stack) }} :image\n\
  . = ALIGN(4096);\n  __image_end = .;\n\
  /DISCARD/ : {{ *(.eh_frame*) *(.note.gnu*) *(.comment) *(.note.GNU-stack) }}\n}}\n"
    )
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (bin, with_note) in [("probe", true), ("probe-nopvh", false)] {
        let path = out.join(format!("{bin}.ld"));
        fs::write(&path, script(with_note)).expect("write linker script");
        println!("cargo:rustc-link-arg-bin={bin}=-T{}", path.display());
        println!("cargo:rustc-link-arg-bin={bin}=-Wl,--undefined=linux64_entry");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
