//! The xenia VMM library.

pub mod arch;
pub mod boot_phases;
pub mod builder;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod device_manager;
pub mod logger;
pub mod metrics;
pub mod persist;
pub mod resources;
pub mod rpc;
pub mod seccomp;
pub mod sink;
pub mod usage;
pub mod vstate;
