//! x86_64: guest layout, boot protocols, CPU state, CPUID, the MP table and ACPI.

pub mod acpi;
pub mod boot_params;
pub mod cpu_template;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

pub use layout::{arch_memory_regions, E820Entry, E820Kind};
