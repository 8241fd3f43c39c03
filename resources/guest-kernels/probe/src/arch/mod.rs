//! x86_64 plumbing: entry, descriptor tables, port and register access.

pub mod cpu;
pub mod entry;
pub mod idt;
pub mod lapic;
pub mod lapic_timer;
pub mod port;
