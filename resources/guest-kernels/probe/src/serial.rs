//! COM1 (16550 at 0x3f8), polled: wait for THRE before each byte.

use core::fmt;

use crate::arch::port::{inb, outb};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 0x20;
/// Polls before giving up on one byte, so a missing UART cannot wedge us.
const THRE_POLLS: u32 = 100_000;

/// 8N1, interrupts off, 115200 baud (VMMs ignore the rate; real UARTs don't).
pub fn init() {
    outb(COM1 + 1, 0x00); // IER: no interrupts
    outb(COM1 + 3, 0x80); // LCR: DLAB
    outb(COM1, 0x01); // divisor 1 = 115200
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // LCR: 8N1
}

fn put_byte(b: u8) {
    let mut polls = 0;
    while inb(LSR) & LSR_THRE == 0 && polls < THRE_POLLS {
        polls += 1;
    }
    outb(COM1, b);
}

/// Writes text to COM1, turning `\n` into `\r\n`.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            put_byte(b'\r');
        }
        put_byte(b);
    }
}

/// `fmt::Write` sink for the `sprint!` macros.
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints to COM1 (plain `{}`/`{:#x}` formats only: padded formats pull in
/// SSE code from the prebuilt libcore, which PVM cannot emulate).
#[macro_export]
macro_rules! sprint {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::serial::Com1, format_args!($($arg)*));
    }};
}

/// `sprint!` plus a newline.
#[macro_export]
macro_rules! sprintln {
    ($($arg:tt)*) => {{
        $crate::sprint!($($arg)*);
        $crate::serial::write_bytes(b"\n");
    }};
}
