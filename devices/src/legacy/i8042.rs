//! A minimal i8042 keyboard controller: enough for Linux's driver to probe it, for the guest
//! to reset the machine (command 0xFE), and for the VMM to inject Ctrl-Alt-Del.
//!
//! vm-superio's i8042 only models the reset command; the keyboard output buffer and its
//! interrupt (needed to deliver Ctrl-Alt-Del) are modelled here.

use std::collections::VecDeque;
use std::io;

use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// First port of the controller (data); the command/status port is `base + 4`.
pub const I8042_PORT_BASE: u64 = 0x60;
/// Covers 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
pub(super) const CMD_WRITE_CTR: u8 = 0x60;
const CMD_READ_OUTP: u8 = 0xD0;
pub(super) const CMD_WRITE_OUTP: u8 = 0xD1;
pub(super) const CMD_WRITE_AUX: u8 = 0xD4;
const CMD_RESET_CPU: u8 = 0xFE;

/// Status register bits.
pub(super) const SB_OUT_DATA_AVAIL: u8 = 0x01;
pub(super) const SB_SYSTEM_FLAG: u8 = 0x04;
pub(super) const SB_LAST_WAS_COMMAND: u8 = 0x08;
pub(super) const SB_KBD_ENABLED: u8 = 0x10;

/// Control register bits.
const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_TRANSLATE: u8 = 0x40;

/// Reply to keyboard commands.
const KBD_ACK: u8 = 0xFA;

/// Scan-code set 2 sequence for pressing then releasing Ctrl, Alt and Del.
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xE0, 0x71, // make: Ctrl, Alt, Del
    0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14, // break: Del, Alt, Ctrl
];

pub(super) const OUTPUT_LIMIT: usize = 64;

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFdTrigger,
    kbd_interrupt: EventFdTrigger,
    pub(super) status: u8,
    pub(super) control: u8,
    pub(super) output_port: u8,
    /// The data byte that follows a two-byte command goes to this command.
    pub(super) pending_cmd: Option<u8>,
    pub(super) output: VecDeque<u8>,
    pub(super) reset_requested: bool,
}

impl I8042 {
    /// `reset_evt` is signalled on the guest's reset command; `kbd_interrupt` raises IRQ 1.
    pub fn new(reset_evt: EventFdTrigger, kbd_interrupt: EventFdTrigger) -> Self {
        Self {
            reset_evt,
            kbd_interrupt,
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            control: CB_POST_OK | CB_KBD_INT | CB_TRANSLATE,
            output_port: 0x01,
            pending_cmd: None,
            output: VecDeque::new(),
            reset_requested: false,
        }
    }

    /// Queues the Ctrl-Alt-Del key sequence and interrupts the guest so it reads it.
    pub fn trigger_ctrl_alt_del(&mut self) -> io::Result<()> {
        if self.output.len() + CTRL_ALT_DEL.len() > OUTPUT_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "i8042 output buffer is full: the guest is not reading its keyboard",
            ));
        }
        self.output.extend(CTRL_ALT_DEL);
        self.raise_kbd_interrupt()
    }

    pub(super) fn raise_kbd_interrupt(&self) -> io::Result<()> {
        if self.control & CB_KBD_INT != 0 && !self.output.is_empty() {
            self.kbd_interrupt.trigger()?;
        }
        Ok(())
    }

    fn push_reply(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_LIMIT {
            self.output.push_back(byte);
        }
    }

    fn status(&self) -> u8 {
        let avail = if self.output.is_empty() {
            0
        } else {
            SB_OUT_DATA_AVAIL
        };
        self.status | avail
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push_reply(self.control),
            CMD_READ_OUTP => self.push_reply(self.output_port),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_AUX => self.pending_cmd = Some(cmd),
            CMD_RESET_CPU => {
                // Linux repeats the command until the machine resets; say it once.
                if !self.reset_requested {
                    log::info!("i8042: guest requested a reset");
                    self.reset_requested = true;
                }
                if let Err(e) = self.reset_evt.trigger() {
                    log::error!("i8042: cannot signal the reset event: {e}");
                }
            }
            // Enable/disable ports, self-tests and the rest: accept silently.
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(CMD_WRITE_OUTP) => self.output_port = value,
            Some(_) => {} // to the (absent) aux device
            None => {
                // A keyboard command: acknowledge it so the guest driver makes progress.
                self.push_reply(KBD_ACK);
                if let Err(e) = self.raise_kbd_interrupt() {
                    log::warn!("i8042: cannot raise the keyboard interrupt: {e}");
                }
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => {
                let byte = self.output.pop_front().unwrap_or(0);
                if let Err(e) = self.raise_kbd_interrupt() {
                    log::warn!("i8042: cannot raise the keyboard interrupt: {e}");
                }
                byte
            }
            COMMAND_OFFSET => self.status(),
            _ => 0,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            DATA_OFFSET => self.data(*value),
            COMMAND_OFFSET => self.command(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, EventFdTrigger, EventFdTrigger) {
        let reset = EventFdTrigger::new_nonblocking().unwrap();
        let kbd = EventFdTrigger::new_nonblocking().unwrap();
        let dev = I8042::new(reset.try_clone().unwrap(), kbd.try_clone().unwrap());
        (dev, reset, kbd)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals_the_reset_event() {
        let (mut dev, reset, _) = device();
        assert!(reset.read().is_err()); // nothing pending (EAGAIN)
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn control_register_round_trips() {
        let (mut dev, _, _) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x47]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_DATA_AVAIL, 1);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x47);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn ctrl_alt_del_is_queued_with_an_interrupt() {
        let (mut dev, reset, kbd) = device();
        dev.trigger_ctrl_alt_del().unwrap();
        assert!(kbd.read().unwrap() >= 1);
        let got: Vec<u8> = (0..CTRL_ALT_DEL.len())
            .map(|_| read(&mut dev, DATA_OFFSET))
            .collect();
        assert_eq!(got, CTRL_ALT_DEL);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_DATA_AVAIL, 0);
        assert!(reset.read().is_err());
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_buffer() {
        let (mut dev, _, _) = device();
        let mut ok = 0;
        for _ in 0..100 {
            if dev.trigger_ctrl_alt_del().is_ok() {
                ok += 1;
            }
        }
        assert!(ok < 100);
        for _ in 0..1000 {
            dev.write(DATA_OFFSET, &[0xFF]);
        }
        assert!(dev.output.len() <= OUTPUT_LIMIT);
    }

    #[test]
    fn keyboard_commands_are_acknowledged() {
        let (mut dev, _, _) = device();
        dev.write(DATA_OFFSET, &[0xF4]);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_ACK);
    }
}
