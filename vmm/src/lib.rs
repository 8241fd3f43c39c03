//! The xenia VMM library.

pub mod arch;
