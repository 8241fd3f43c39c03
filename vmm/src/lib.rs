//! The xenia VMM library.

pub mod config;
