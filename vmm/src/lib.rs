//! The xenia VMM library.

pub mod config;
pub mod metrics;
pub mod rpc;
