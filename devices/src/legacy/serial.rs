//! COM1: vm-superio's 16550A behind the port-I/O bus.
//!
//! Output goes to any `Write` sink (stdout for the console). Input arrives from the VMM loop
//! through [`SerialConsole::enqueue_input`]; bytes that do not fit in the UART's FIFO wait in a
//! bounded backlog and move in as the guest drains the FIFO.

use std::collections::VecDeque;
use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::bus::BusDevice;
use crate::log_limiter::{LogLimiter, GUEST_LOG_PERIOD};
use crate::trigger::EventFdTrigger;

/// First port of COM1.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// COM1 spans eight registers.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's legacy interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Input kept beyond the FIFO; older input beyond this is dropped (a console, not a pipe).
pub(super) const MAX_BACKLOG: usize = 64 * 1024;

/// The sink the guest's console output goes to.
pub type SerialOut = Box<dyn Write + Send>;

/// A 16550A UART with an input backlog.
pub struct SerialConsole {
    pub(super) uart: Serial<EventFdTrigger, NoEvents, SerialOut>,
    pub(super) backlog: VecDeque<u8>,
    /// A failing sink fails on every byte the guest writes: say so once a period.
    write_err_log: LogLimiter,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole")
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

impl SerialConsole {
    /// A UART raising `interrupt` and writing the guest's output to `out`.
    pub fn new(interrupt: EventFdTrigger, out: SerialOut) -> Self {
        Self {
            uart: Serial::new(interrupt, out),
            backlog: VecDeque::new(),
            write_err_log: LogLimiter::new(GUEST_LOG_PERIOD),
        }
    }

    /// Queues host input for the guest; returns how many bytes were accepted (the rest is
    /// dropped because the backlog is full).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = MAX_BACKLOG.saturating_sub(self.backlog.len());
        let accepted = input.len().min(room);
        self.backlog.extend(&input[..accepted]);
        self.refill_fifo();
        accepted
    }

    /// Bytes waiting beyond the UART's FIFO.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    fn refill_fifo(&mut self) {
        let room = self.uart.fifo_capacity();
        if room == 0 || self.backlog.is_empty() {
            return;
        }
        let chunk: Vec<u8> = self.backlog.iter().take(room).copied().collect::<Vec<_>>();
        match self.uart.enqueue_raw_bytes(&chunk) {
            Ok(n) => {
                self.backlog.drain(..n);
            }
            Err(e) => log::warn!("serial: failed to queue console input: {e}"),
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(reg), 1) if offset < COM1_PORT_LEN => {
                data[0] = self.uart.read(reg);
                self.refill_fifo();
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(reg), [value]) = (u8::try_from(offset), data) {
            if offset < COM1_PORT_LEN {
                if let Err(e) = self.uart.write(reg, *value) {
                    if let Some(n) = self.write_err_log.check() {
                        log::warn!("serial: {e} ({n} similar errors suppressed before)");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct SharedSink(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 0x01;

    fn console() -> (SerialConsole, SharedSink, EventFdTrigger) {
        let sink = SharedSink::default();
        let irq = EventFdTrigger::new_nonblocking().unwrap();
        let dev = SerialConsole::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        (dev, sink, irq)
    }

    #[test]
    fn guest_output_reaches_the_sink() {
        let (mut dev, sink, _irq) = console();
        for b in b"hi\n" {
            dev.write(THR, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn input_raises_the_interrupt_when_enabled_and_is_read_back() {
        let (mut dev, _sink, irq) = console();
        dev.write(IER, &[0x01]); // received-data interrupt
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        dev.read(LSR, &mut b);
        assert_eq!(b[0] & LSR_DATA_READY, LSR_DATA_READY);
        dev.read(RBR, &mut b);
        assert_eq!(b[0], b'o');
        dev.read(RBR, &mut b);
        assert_eq!(b[0], b'k');
        dev.read(LSR, &mut b);
        assert_eq!(b[0] & LSR_DATA_READY, 0);
    }

    #[test]
    fn input_beyond_the_fifo_waits_in_the_backlog() {
        let (mut dev, _sink, _irq) = console();
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(dev.enqueue_input(&input), 200);
        assert!(dev.backlog_len() > 0);
        let mut got = Vec::new();
        let mut b = [0u8];
        for _ in 0..200 {
            dev.read(RBR, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
        assert_eq!(dev.backlog_len(), 0);
    }

    #[test]
    fn odd_sized_and_out_of_range_accesses_are_harmless() {
        let (mut dev, sink, _irq) = console();
        let mut wide = [0xffu8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
        dev.write(0, &[1, 2]);
        dev.write(99, &[1]);
        assert!(sink.0.lock().unwrap().is_empty());
    }

    struct BrokenSink;

    impl Write for BrokenSink {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_is_reported_once_per_period_not_per_byte() {
        let irq = EventFdTrigger::new_nonblocking().unwrap();
        let mut dev = SerialConsole::new(irq, Box::new(BrokenSink));
        for b in 0..100u8 {
            dev.write(0, &[b]);
        }
        assert_eq!(dev.write_err_log.suppressed(), 99);
    }
}
