#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;
use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

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

/// A mutation of a good state and the error it must produce.
type Case<S> = (Box<dyn Fn(&mut S)>, LegacyStateError);

const RBR: u64 = 0;
const IER: u64 = 1;
const LCR: u64 = 3;
const SCR: u64 = 7;

fn console() -> (SerialConsole, SharedSink, EventFdTrigger) {
    let sink = SharedSink::default();
    let irq = EventFdTrigger::new_nonblocking().unwrap();
    let dev = SerialConsole::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
    (dev, sink, irq)
}

fn read(dev: &mut dyn BusDevice, offset: u64) -> u8 {
    let mut b = [0u8];
    dev.read(offset, &mut b);
    b[0]
}

/// A console with registers changed, RX interrupt enabled, bytes in the FIFO and a backlog.
fn busy_console() -> (SerialConsole, SharedSink, EventFdTrigger) {
    let (mut dev, sink, irq) = console();
    dev.write(LCR, &[0x1b]);
    dev.write(SCR, &[0x5a]);
    dev.write(IER, &[0x01]);
    let input: Vec<u8> = (0..100u8).collect();
    assert_eq!(dev.enqueue_input(&input), 100);
    (dev, sink, irq)
}

#[test]
fn serial_round_trip_keeps_fifo_backlog_and_registers() {
    let (src, _, _) = busy_console();
    let state = src.save_state();
    assert_eq!(state.uart.in_buffer.len(), UART_FIFO_SIZE);
    assert_eq!(state.backlog.len(), 100 - UART_FIFO_SIZE);

    let (mut dst, sink, irq) = console();
    let _ = irq.read();
    dst.restore_state(&state).unwrap();
    assert_eq!(dst.save_state(), state);
    // The pending, enabled RX interrupt is raised again for the guest.
    assert!(irq.read().unwrap() >= 1);
    assert_eq!(read(&mut dst, SCR), 0x5a);
    assert_eq!(read(&mut dst, LCR), 0x1b);
    let got: Vec<u8> = (0..100).map(|_| read(&mut dst, RBR)).collect();
    assert_eq!(got, (0..100u8).collect::<Vec<_>>());
    // Output still reaches this console's own sink.
    dst.write(0, b"z");
    assert_eq!(sink.0.lock().unwrap().as_slice(), b"z");
}

#[test]
fn serial_state_survives_serde() {
    let (src, _, _) = busy_console();
    let state = src.save_state();
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(
        serde_json::from_str::<SerialConsoleState>(&json).unwrap(),
        state
    );
}

#[test]
fn every_invalid_serial_field_is_refused_and_named() {
    let (src, _, _) = busy_console();
    let good = src.save_state();
    let cases: Vec<Case<SerialConsoleState>> = vec![
        (
            Box::new(|s| s.uart.in_buffer = vec![0; 65]),
            LegacyStateError::SerialFifo { len: 65 },
        ),
        (
            Box::new(|s| s.uart.interrupt_enable = 0x31),
            LegacyStateError::SerialIer(0x31),
        ),
        (
            Box::new(|s| s.uart.interrupt_identification = 0x08),
            LegacyStateError::SerialIir(0x08),
        ),
        (
            Box::new(|s| s.uart.interrupt_identification = 0x00),
            LegacyStateError::SerialIir(0x00),
        ),
        (
            Box::new(|s| s.uart.interrupt_identification = 0x05),
            LegacyStateError::SerialIir(0x05),
        ),
        (
            Box::new(|s| s.uart.in_buffer.clear()),
            LegacyStateError::SerialDataReady {
                data_ready: true,
                len: 0,
            },
        ),
        (
            Box::new(|s| s.backlog = vec![0; MAX_BACKLOG + 1]),
            LegacyStateError::SerialBacklog {
                len: MAX_BACKLOG + 1,
            },
        ),
    ];
    for (mutate, want) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        let (mut dst, _, _) = console();
        let before = dst.save_state();
        assert_eq!(dst.restore_state(&bad).unwrap_err(), want);
        assert!(want.to_string().contains("serial."), "{want}");
        // Nothing was applied.
        assert_eq!(dst.save_state(), before);
    }
}

fn i8042() -> (I8042, EventFdTrigger) {
    let reset = EventFdTrigger::new_nonblocking().unwrap();
    let kbd = EventFdTrigger::new_nonblocking().unwrap();
    (I8042::new(reset, kbd.try_clone().unwrap()), kbd)
}

#[test]
fn i8042_round_trip_keeps_output_and_pending_command() {
    let (mut src, _) = i8042();
    src.trigger_ctrl_alt_del().unwrap();
    src.write(4, &[CMD_WRITE_CTR]);
    let state = src.save_state();
    assert_eq!(state.pending_cmd, Some(CMD_WRITE_CTR));
    assert_eq!(state.status & SB_OUT_DATA_AVAIL, 0);

    let (mut dst, kbd) = i8042();
    dst.restore_state(&state).unwrap();
    assert_eq!(dst.save_state(), state);
    assert!(kbd.read().unwrap() >= 1, "waiting output re-raises IRQ 1");
    assert_eq!(read(&mut dst, 4) & SB_OUT_DATA_AVAIL, SB_OUT_DATA_AVAIL);
    assert_eq!(read(&mut dst, 0), 0x14);
    // The pending command takes the next data byte.
    dst.write(0, &[0x45]);
    assert_eq!(dst.save_state().control, 0x45);
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<I8042State>(&json).unwrap(), state);
}

#[test]
fn every_invalid_i8042_field_is_refused_and_named() {
    let (src, _) = i8042();
    let good = src.save_state();
    let cases: Vec<Case<I8042State>> = vec![
        (
            Box::new(|s| s.status |= 0x80),
            LegacyStateError::I8042Status(good.status | 0x80),
        ),
        (
            Box::new(|s| s.status |= SB_OUT_DATA_AVAIL),
            LegacyStateError::I8042Status(good.status | SB_OUT_DATA_AVAIL),
        ),
        (
            Box::new(|s| s.pending_cmd = Some(0xFE)),
            LegacyStateError::I8042PendingCmd(0xFE),
        ),
        (
            Box::new(|s| s.output = vec![0; OUTPUT_LIMIT + 1]),
            LegacyStateError::I8042Output {
                len: OUTPUT_LIMIT + 1,
            },
        ),
    ];
    for (mutate, want) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        let (mut dst, _) = i8042();
        assert_eq!(dst.restore_state(&bad).unwrap_err(), want);
        assert!(want.to_string().contains("i8042."), "{want}");
        assert_eq!(dst.save_state(), good);
    }
}
