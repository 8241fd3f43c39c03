//! The probe without a PVH note: VMMs boot it through the 64-bit Linux boot
//! protocol (entry `linux64_entry`, RSI = boot_params).

#![no_std]
#![no_main]

extern crate probe;
