//! Saved state of the legacy devices (COM1 and the i8042) for snapshots.
//!
//! The states are plain data. A state file is untrusted input: `restore` checks every field
//! against what the device model can reach on its own before it touches the device, so a
//! restored device is always one the guest could have produced.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

use super::i8042::{
    CMD_WRITE_AUX, CMD_WRITE_CTR, CMD_WRITE_OUTP, I8042, OUTPUT_LIMIT, SB_KBD_ENABLED,
    SB_LAST_WAS_COMMAND, SB_OUT_DATA_AVAIL, SB_SYSTEM_FLAG,
};
use super::serial::{SerialConsole, SerialOut, MAX_BACKLOG};

/// Bytes the 16550A's receive FIFO holds (vm-superio refuses more).
pub const UART_FIFO_SIZE: usize = 64;
/// Interrupt-enable bits a 16550A has (RDA, THRE, RLS, MS).
const IER_VALID_BITS: u8 = 0x0f;
/// IIR: "no interrupt pending", THR empty, received data available; FIFO-enabled bits.
const IIR_VALID_BITS: u8 = 0x01 | 0x02 | 0x04 | 0xc0;
const LSR_DATA_READY: u8 = 0x01;

/// Why a saved legacy-device state was refused; each names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LegacyStateError {
    #[error("serial.uart.in_buffer: {len} bytes, the FIFO holds {UART_FIFO_SIZE}")]
    SerialFifo { len: usize },
    #[error("serial.uart.interrupt_enable: {0:#x} has bits a 16550A does not have")]
    SerialIer(u8),
    #[error("serial.uart.interrupt_identification: {0:#x} is not a 16550A IIR value")]
    SerialIir(u8),
    #[error(
        "serial.uart.line_status: data-ready bit {data_ready} disagrees with {len} bytes in the FIFO"
    )]
    SerialDataReady { data_ready: bool, len: usize },
    #[error("serial.backlog: {len} bytes, at most {MAX_BACKLOG} are kept")]
    SerialBacklog { len: usize },
    #[error("cannot raise the restored serial interrupt: {0}")]
    SerialInterrupt(String),
    #[error("i8042.status: {0:#x} has bits the controller never sets")]
    I8042Status(u8),
    #[error("i8042.pending_cmd: {0:#x} is not a command that takes a data byte")]
    I8042PendingCmd(u8),
    #[error("i8042.output: {len} bytes, the buffer holds {OUTPUT_LIMIT}")]
    I8042Output { len: usize },
}

/// The 16550A registers and receive FIFO (vm-superio's `SerialState`, which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for UartState {
    fn from(s: SerialState) -> Self {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&UartState> for SerialState {
    fn from(s: &UartState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl UartState {
    /// Checks what vm-superio's own register logic can produce.
    pub fn validate(&self) -> Result<(), LegacyStateError> {
        let len = self.in_buffer.len();
        if len > UART_FIFO_SIZE {
            return Err(LegacyStateError::SerialFifo { len });
        }
        if self.interrupt_enable & !IER_VALID_BITS != 0 {
            return Err(LegacyStateError::SerialIer(self.interrupt_enable));
        }
        let iir = self.interrupt_identification;
        // Either "none pending" alone or a set of pending causes, plus the FIFO bits.
        let causes = iir & 0x07;
        if iir & !IIR_VALID_BITS != 0 || causes == 0 || (causes & 0x01 != 0 && causes != 0x01) {
            return Err(LegacyStateError::SerialIir(iir));
        }
        let data_ready = self.line_status & LSR_DATA_READY != 0;
        if data_ready != (len > 0) {
            return Err(LegacyStateError::SerialDataReady { data_ready, len });
        }
        Ok(())
    }
}

/// COM1: the UART and the console input waiting beyond its FIFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConsoleState {
    pub uart: UartState,
    /// Host input not yet moved into the FIFO.
    pub backlog: Vec<u8>,
}

impl SerialConsoleState {
    pub fn validate(&self) -> Result<(), LegacyStateError> {
        self.uart.validate()?;
        if self.backlog.len() > MAX_BACKLOG {
            return Err(LegacyStateError::SerialBacklog {
                len: self.backlog.len(),
            });
        }
        Ok(())
    }
}

impl SerialConsole {
    /// The UART registers, its FIFO and the input backlog.
    pub fn save_state(&self) -> SerialConsoleState {
        SerialConsoleState {
            uart: self.uart.state().into(),
            backlog: self.backlog.iter().copied().collect(),
        }
    }

    /// Replaces the UART state in place, keeping this console's interrupt and output sink.
    /// A pending, enabled interrupt is raised again (vm-superio's `from_state` does this).
    pub fn restore_state(&mut self, state: &SerialConsoleState) -> Result<(), LegacyStateError> {
        state.validate()?;
        let trigger = self
            .uart
            .interrupt_evt()
            .try_clone()
            .map_err(|e| LegacyStateError::SerialInterrupt(e.to_string()))?;
        // The sink moves to the new UART; the old one keeps a placeholder until dropped.
        let out: SerialOut = std::mem::replace(self.uart.writer_mut(), Box::new(std::io::sink()));
        // Validation above rules out the FIFO error, so only raising the interrupt can fail.
        let uart = Serial::from_state(&SerialState::from(&state.uart), trigger, NoEvents, out)
            .map_err(|e| LegacyStateError::SerialInterrupt(format!("{e:?}")))?;
        self.uart = uart;
        self.backlog = state.backlog.iter().copied().collect::<VecDeque<u8>>();
        Ok(())
    }
}

/// The i8042 registers and its output buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    /// Status bits kept by the model (data-available is derived from `output`).
    pub status: u8,
    pub control: u8,
    pub output_port: u8,
    /// A two-byte command waiting for its data byte.
    pub pending_cmd: Option<u8>,
    /// Bytes waiting for the guest on the data port.
    pub output: Vec<u8>,
    pub reset_requested: bool,
}

impl I8042State {
    pub fn validate(&self) -> Result<(), LegacyStateError> {
        let kept = SB_SYSTEM_FLAG | SB_KBD_ENABLED | SB_LAST_WAS_COMMAND;
        if self.status & !kept != 0 {
            return Err(LegacyStateError::I8042Status(self.status));
        }
        if let Some(cmd) = self.pending_cmd {
            if ![CMD_WRITE_CTR, CMD_WRITE_OUTP, CMD_WRITE_AUX].contains(&cmd) {
                return Err(LegacyStateError::I8042PendingCmd(cmd));
            }
        }
        if self.output.len() > OUTPUT_LIMIT {
            return Err(LegacyStateError::I8042Output {
                len: self.output.len(),
            });
        }
        Ok(())
    }
}

impl I8042 {
    pub fn save_state(&self) -> I8042State {
        I8042State {
            status: self.status & !SB_OUT_DATA_AVAIL,
            control: self.control,
            output_port: self.output_port,
            pending_cmd: self.pending_cmd,
            output: self.output.iter().copied().collect(),
            reset_requested: self.reset_requested,
        }
    }

    /// Replaces the registers in place, keeping the reset and interrupt eventfds. Bytes
    /// waiting in the output buffer raise the keyboard interrupt again (when enabled), so a
    /// guest restored between the interrupt and its read still collects them.
    pub fn restore_state(&mut self, state: &I8042State) -> Result<(), LegacyStateError> {
        state.validate()?;
        self.status = state.status;
        self.control = state.control;
        self.output_port = state.output_port;
        self.pending_cmd = state.pending_cmd;
        self.output = state.output.iter().copied().collect();
        self.reset_requested = state.reset_requested;
        if let Err(e) = self.raise_kbd_interrupt() {
            log::warn!("i8042: cannot raise the restored keyboard interrupt: {e}");
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
