//! virtio-mmio, modern layout only (version 2, virtio 1.2 section 4.2.2):
//! devices found from `virtio_mmio.device=<size>@<addr>:<irq>[:<id>]` on the
//! command line (as Linux does), register access, and the driver side of
//! the initialisation sequence.

use super::queue::VirtQueue;
use super::VirtioError;
use crate::cmdline::parse_u64;
use crate::timer::Deadline;

const MAGIC: u32 = 0x7472_6976; // "virt"

pub mod reg {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const DEVICE_ID: u64 = 0x08;
    pub const DEVICE_FEATURES: u64 = 0x10;
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    pub const DRIVER_FEATURES: u64 = 0x20;
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    pub const QUEUE_SEL: u64 = 0x30;
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    pub const QUEUE_NUM: u64 = 0x38;
    pub const QUEUE_READY: u64 = 0x44;
    pub const QUEUE_NOTIFY: u64 = 0x50;
    pub const INTERRUPT_STATUS: u64 = 0x60;
    pub const INTERRUPT_ACK: u64 = 0x64;
    pub const STATUS: u64 = 0x70;
    pub const QUEUE_DESC: u64 = 0x80;
    pub const QUEUE_AVAIL: u64 = 0x90;
    pub const QUEUE_USED: u64 = 0xa0;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2 section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_BLOCK: u32 = 2;

/// Most devices we keep track of.
pub const MAX_DEVICES: usize = 32;

/// One `virtio_mmio.device=` entry, probed.
#[derive(Clone, Copy, Debug)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
    pub version: u32,
    /// 0 when the window holds no device (or the magic is wrong).
    pub device_id: u32,
}

/// Parses `<size>@<addr>:<irq>[:<id>]`; size may carry K/M/G.
pub fn parse_entry(v: &[u8]) -> Option<(u64, u64, u32)> {
    let at = v.iter().position(|&b| b == b'@')?;
    let (size_text, rest) = (&v[..at], &v[at + 1..]);
    let colon = rest.iter().position(|&b| b == b':')?;
    let addr = parse_u64(&rest[..colon])?;
    let irq_text = &rest[colon + 1..];
    let irq_end = irq_text
        .iter()
        .position(|&b| b == b':')
        .unwrap_or(irq_text.len());
    let irq = u32::try_from(parse_u64(&irq_text[..irq_end])?).ok()?;
    let (digits, shift) = match size_text.last()? {
        b'k' | b'K' => (&size_text[..size_text.len() - 1], 10),
        b'm' | b'M' => (&size_text[..size_text.len() - 1], 20),
        b'g' | b'G' => (&size_text[..size_text.len() - 1], 30),
        _ => (size_text, 0),
    };
    let size = parse_u64(digits)?.checked_mul(1 << shift)?;
    Some((size, addr, irq))
}

/// Every `virtio_mmio.device=` entry of the command line, probed, sorted by
/// address (xenia places devices in attach order from 0xD000_0000 up). With no
/// entry on the command line, the devices the ACPI DSDT describes (`LNRO0005`).
pub fn discover(cmdline: &[u8], out: &mut [MmioDevice; MAX_DEVICES]) -> usize {
    let mut n = 0;
    let words = cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n');
    for v in words.filter_map(|w| w.strip_prefix(b"virtio_mmio.device=")) {
        let Some((size, base, irq)) = parse_entry(v) else {
            continue;
        };
        n += probe_window(size, base, irq, &mut out[n..]);
    }
    if n == 0 {
        if let Ok(acpi) = crate::acpi::load() {
            let mut found = [(0u64, 0u64, 0u32); MAX_DEVICES];
            let k = acpi.virtio_mmio(&mut found);
            for &(base, size, irq) in &found[..k] {
                n += probe_window(size, base, irq, &mut out[n..]);
            }
        }
    }
    out[..n].sort_unstable_by_key(|d| d.base);
    n
}

/// Reads one window's identity into `out[0]`; returns 1, or 0 when the window is unusable
/// or `out` is full.
fn probe_window(size: u64, base: u64, irq: u32, out: &mut [MmioDevice]) -> usize {
    // Registers up to the config space must be inside the window and mapped.
    if out.is_empty() || size < 0x100 || base >= crate::mem::MAPPED_LIMIT - 0x1000 {
        return 0;
    }
    let t = Transport { base };
    let (version, device_id) = if t.read(reg::MAGIC) == MAGIC {
        (t.read(reg::VERSION), t.read(reg::DEVICE_ID))
    } else {
        (0, 0)
    };
    out[0] = MmioDevice {
        base,
        size,
        irq,
        version,
        device_id,
    };
    1
}

/// Register access to one device window.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    pub base: u64,
}

impl Transport {
    pub fn read(&self, off: u64) -> u32 {
        // SAFETY: `base` came from the command line, is below 4 GiB (identity
        // mapped, uncached from 0xD000_0000 up; QEMU's windows sit there too)
        // and `off` is a register offset inside the window.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u32) }
    }

    pub fn write(&self, off: u64, v: u32) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u32, v) }
    }

    pub fn config8(&self, off: u64) -> u8 {
        // SAFETY: as for `read`; config space is byte-addressable.
        unsafe { core::ptr::read_volatile((self.base + reg::CONFIG + off) as *const u8) }
    }

    pub fn config16(&self, off: u64) -> u16 {
        // SAFETY: as for `read`.
        unsafe { core::ptr::read_volatile((self.base + reg::CONFIG + off) as *const u16) }
    }

    pub fn config32(&self, off: u64) -> u32 {
        self.read(reg::CONFIG + off)
    }

    /// A 64-bit config field, read as two halves until the generation is stable.
    pub fn config64(&self, off: u64) -> u64 {
        loop {
            let gen = self.read(0xfc);
            let v = self.config32(off) as u64 | (self.config32(off + 4) as u64) << 32;
            if self.read(0xfc) == gen {
                return v;
            }
        }
    }

    pub fn status(&self) -> u32 {
        self.read(reg::STATUS)
    }

    pub fn needs_reset(&self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }

    /// Writes 0 to the status register and waits for it to read back 0.
    pub fn reset(&self) -> Result<(), VirtioError> {
        self.write(reg::STATUS, 0);
        let deadline = Deadline::after_us(1_000_000);
        while self.status() != 0 {
            if deadline.passed() {
                return Err(VirtioError::ResetTimeout);
            }
        }
        Ok(())
    }

    /// Reset, ACKNOWLEDGE, DRIVER; returns the features the device offers.
    pub fn begin(&self) -> Result<u64, VirtioError> {
        if self.read(reg::MAGIC) != MAGIC {
            return Err(VirtioError::NoDevice);
        }
        if self.read(reg::VERSION) != 2 {
            return Err(VirtioError::LegacyTransport);
        }
        self.reset()?;
        self.write(reg::STATUS, status::ACKNOWLEDGE);
        self.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            self.write(reg::DEVICE_FEATURES_SEL, sel);
            offered |= (self.read(reg::DEVICE_FEATURES) as u64) << (32 * sel);
        }
        Ok(offered)
    }

    /// Writes the driver's features and sets FEATURES_OK, checking the device
    /// kept it. `wanted` is cut to what was offered.
    pub fn negotiate(&self, offered: u64, wanted: u64) -> Result<u64, VirtioError> {
        if offered & VIRTIO_F_VERSION_1 == 0 {
            self.fail();
            return Err(VirtioError::NoVersion1);
        }
        let accepted = (wanted | VIRTIO_F_VERSION_1) & offered;
        for sel in 0..2u32 {
            self.write(reg::DRIVER_FEATURES_SEL, sel);
            self.write(reg::DRIVER_FEATURES, (accepted >> (32 * sel)) as u32);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write(reg::STATUS, s);
        if self.status() & status::FEATURES_OK == 0 {
            self.fail();
            return Err(VirtioError::FeaturesRefused);
        }
        Ok(accepted)
    }

    pub fn queue_max(&self, index: u16) -> u16 {
        self.write(reg::QUEUE_SEL, index as u32);
        self.read(reg::QUEUE_NUM_MAX).min(u16::MAX as u32) as u16
    }

    /// Programs queue `index` with the given size and ring addresses and asks
    /// for QueueReady; returns what QueueReady reads back afterwards.
    pub fn program_queue(&self, index: u16, size: u16, desc: u64, avail: u64, used: u64) -> bool {
        self.write(reg::QUEUE_SEL, index as u32);
        self.write(reg::QUEUE_NUM, size as u32);
        for (off, addr) in [
            (reg::QUEUE_DESC, desc),
            (reg::QUEUE_AVAIL, avail),
            (reg::QUEUE_USED, used),
        ] {
            self.write(off, addr as u32);
            self.write(off + 4, (addr >> 32) as u32);
        }
        self.write(reg::QUEUE_READY, 1);
        self.read(reg::QUEUE_READY) == 1
    }

    /// Sets up a queue the normal way; an unready queue is an error.
    pub fn setup_queue(&self, q: &VirtQueue) -> Result<(), VirtioError> {
        self.write(reg::QUEUE_SEL, q.index as u32);
        if self.read(reg::QUEUE_READY) != 0 {
            return Err(VirtioError::QueueAlreadyReady);
        }
        if self.program_queue(q.index, q.size, q.desc, q.avail, q.used) {
            Ok(())
        } else {
            self.fail();
            Err(VirtioError::QueueRefused)
        }
    }

    pub fn driver_ok(&self) -> Result<(), VirtioError> {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write(reg::STATUS, s | status::DRIVER_OK);
        let now = self.status();
        if now & status::DEVICE_NEEDS_RESET != 0 {
            return Err(VirtioError::NeedsReset);
        }
        if now & status::DRIVER_OK == 0 {
            return Err(VirtioError::DriverOkRefused);
        }
        Ok(())
    }

    pub fn fail(&self) {
        self.write(reg::STATUS, self.status() | status::FAILED);
    }

    pub fn notify(&self, queue: u16) {
        self.write(reg::QUEUE_NOTIFY, queue as u32);
    }

    /// Acknowledges every pending interrupt cause (we poll; this only keeps
    /// the line from staying asserted).
    pub fn ack_interrupts(&self) {
        let pending = self.read(reg::INTERRUPT_STATUS);
        if pending != 0 {
            self.write(reg::INTERRUPT_ACK, pending);
        }
    }
}
