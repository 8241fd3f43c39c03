//! The xenia VMM library.

pub mod arch;
pub mod config;
pub mod metrics;
pub mod vstate;
