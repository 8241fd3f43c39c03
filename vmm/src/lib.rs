//! The xenia VMM library.
