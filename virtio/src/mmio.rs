//! virtio-mmio transport, modern (version 2) register layout (virtio 1.2, section 4.2.2).
//!
//! Runs on the vCPU threads through [`devices::BusDevice`]. Every guest value is checked
//! before it reaches a device: queue sizes, ring alignment and ring placement in guest memory
//! are validated when the driver marks a queue ready, and the device status only moves
//! along the order the spec prescribes.
//!
//! Notifications: the VMM registers [`MmioTransport::queue_evts`]`[i]` as an ioeventfd on
//! `base + QUEUE_NOTIFY_OFFSET` with datamatch `i`, so a notification never leaves the kernel.
//! A notify write that does reach the transport (no ioeventfd) is forwarded to the same
//! EventFd. Interrupts: the VMM registers [`MmioTransport::irq_evt`] as an irqfd.

use std::sync::{Arc, Mutex};

use devices::BusDevice;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{ActivateContext, IrqTrigger, VirtioDevice, VirtioInterrupt};
use crate::features::{self, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::GuestMemoryMmap;
use devices::log_limiter::{LogLimiter, GUEST_LOG_PERIOD};

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (ioeventfd address = window base + this).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;
const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}
use status::*;

/// Raw queue registers as the driver wrote them; turned into a [`Queue`] only once validated.
#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    ready: bool,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: max_size,
            desc: 0,
            avail: 0,
            used: 0,
            ready: false,
        }
    }
}

/// Why a queue configuration was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum QueueConfigError {
    #[error("queue size {size} is zero, not a power of two or above the maximum {max}")]
    Size { size: u16, max: u16 },
    #[error("{ring} address {addr:#x} is not aligned to {align} bytes")]
    Alignment {
        ring: &'static str,
        addr: u64,
        align: u64,
    },
    #[error("rings of queue (desc {desc:#x}, avail {avail:#x}, used {used:#x}, size {size}) are not inside guest memory")]
    OutsideMemory {
        desc: u64,
        avail: u64,
        used: u64,
        size: u16,
    },
}

/// Builds a [`Queue`] from driver-written registers, checking every value.
fn build_queue(
    regs: &QueueRegs,
    mem: &GuestMemoryMmap,
    event_idx: bool,
) -> Result<Queue, QueueConfigError> {
    let size_err = QueueConfigError::Size {
        size: regs.size,
        max: regs.max_size,
    };
    let mut q = Queue::new(regs.max_size).map_err(|_| size_err.clone())?;
    q.try_set_size(regs.size).map_err(|_| size_err)?;
    let align = |ring, addr, align| QueueConfigError::Alignment { ring, addr, align };
    q.try_set_desc_table_address(GuestAddress(regs.desc))
        .map_err(|_| align("descriptor table", regs.desc, 16))?;
    q.try_set_avail_ring_address(GuestAddress(regs.avail))
        .map_err(|_| align("available ring", regs.avail, 2))?;
    q.try_set_used_ring_address(GuestAddress(regs.used))
        .map_err(|_| align("used ring", regs.used, 4))?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return Err(QueueConfigError::OutsideMemory {
            desc: regs.desc,
            avail: regs.avail,
            used: regs.used,
            size: regs.size,
        });
    }
    Ok(q)
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<IrqTrigger>,
    queues: Vec<QueueRegs>,
    queue_evts: Vec<EventFd>,
    device_status: u32,
    features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    unknown_features_accepted: bool,
    queue_select: u32,
    /// Everything below is logged on a guest's say-so: one line per period at most.
    guest_log: LogLimiter,
}

/// Logs a problem the guest caused, through the transport's limiter.
macro_rules! guest_warn {
    ($limiter:expr, $($arg:tt)*) => {
        if let Some(suppressed) = $limiter.check() {
            log::warn!(
                "virtio-mmio: {} ({suppressed} similar guest errors suppressed before)",
                format_args!($($arg)*)
            );
        }
    };
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_status", &self.device_status)
            .field("queues", &self.queues)
            .finish()
    }
}

impl MmioTransport {
    /// Wraps `device`; creates one notification EventFd per queue and the interrupt EventFd.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> std::io::Result<Self> {
        let max_sizes: Vec<u16> = lock(&device).queue_max_sizes().to_vec();
        let queue_evts = max_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(IrqTrigger::new()?),
            queues: max_sizes.into_iter().map(QueueRegs::new).collect(),
            queue_evts,
            device_status: 0,
            features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            unknown_features_accepted: false,
            queue_select: 0,
            guest_log: LogLimiter::new(GUEST_LOG_PERIOD),
        })
    }

    /// Notification EventFds, index = queue index = ioeventfd datamatch value.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The EventFd to register as this device's irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        self.interrupt.irq_evt()
    }

    /// The shared interrupt state (status word, config generation).
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    /// The wrapped device.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// Current status register value as the driver reads it.
    pub fn device_status(&self) -> u32 {
        let mut s = self.device_status;
        if self.interrupt.needs_reset() {
            s |= DEVICE_NEEDS_RESET;
        }
        s
    }

    fn offered_features(&self) -> u64 {
        lock(&self.device).avail_features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn status_has(&self, set: u32, clear: u32) -> bool {
        self.device_status & set == set && self.device_status & clear == 0
    }

    /// Queue registers are writable between `FEATURES_OK` and `DRIVER_OK`, on a queue that
    /// is not ready yet.
    fn queue_writable(&mut self) -> Option<&mut QueueRegs> {
        if !self.status_has(FEATURES_OK, DRIVER_OK | FAILED) {
            guest_warn!(
                self.guest_log,
                "queue register write in status {:#x}",
                self.device_status
            );
            return None;
        }
        // Borrow the queue and the limiter as separate fields: the queue is handed back.
        match self.queues.get_mut(self.queue_select as usize) {
            Some(q) if !q.ready => Some(q),
            Some(_) => {
                guest_warn!(self.guest_log, "queue register write on a ready queue");
                None
            }
            None => None,
        }
    }

    fn reset(&mut self) {
        {
            let mut dev = lock(&self.device);
            dev.reset();
        }
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        for evt in &self.queue_evts {
            // Drop a stale notification; EAGAIN just means there was none.
            let _ = evt.read();
        }
        self.interrupt.reset();
        self.device_status = 0;
        self.features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.unknown_features_accepted = false;
        self.queue_select = 0;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        if value & FAILED != 0 {
            self.device_status |= FAILED;
            return;
        }
        // The driver only ever adds the next bit of the initialisation sequence.
        let ok = match (old, value) {
            (0, ACKNOWLEDGE) => true,
            (ACKNOWLEDGE, v) if v == ACKNOWLEDGE | DRIVER => true,
            (o, v) if o == ACKNOWLEDGE | DRIVER && v == o | FEATURES_OK => self.accept_features(),
            (o, v) if o == ACKNOWLEDGE | DRIVER | FEATURES_OK && v == o | DRIVER_OK => {
                self.device_status = value;
                self.activate();
                return;
            }
            _ => false,
        };
        if ok {
            self.device_status = value;
        } else {
            guest_warn!(
                self.guest_log,
                "refused status transition {old:#x} -> {value:#x}"
            );
        }
    }

    fn accept_features(&mut self) -> bool {
        let offered = self.offered_features();
        if self.driver_features & !offered != 0 || self.unknown_features_accepted {
            guest_warn!(
                self.guest_log,
                "driver accepted unoffered features {:#x}",
                self.driver_features & !offered
            );
            return false;
        }
        if !features::has(self.driver_features, VIRTIO_F_VERSION_1) {
            guest_warn!(self.guest_log, "driver did not accept VIRTIO_F_VERSION_1");
            return false;
        }
        lock(&self.device).set_acked_features(self.driver_features);
        true
    }

    fn activate(&mut self) {
        let event_idx = features::has(self.driver_features, VIRTIO_RING_F_EVENT_IDX);
        let mut queues = Vec::with_capacity(self.queues.len());
        for regs in &self.queues {
            let q = if regs.ready {
                match build_queue(regs, &self.mem, event_idx) {
                    Ok(q) => q,
                    Err(e) => {
                        guest_warn!(self.guest_log, "queue invalid at activation: {e}");
                        self.interrupt.signal_needs_reset();
                        return;
                    }
                }
            } else {
                // Placeholder for a queue the driver did not set up; never ready.
                match Queue::new(regs.max_size) {
                    Ok(q) => q,
                    Err(_) => {
                        self.interrupt.signal_needs_reset();
                        return;
                    }
                }
            };
            queues.push(q);
        }
        let queue_evts = match self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(v) => v,
            Err(e) => {
                guest_warn!(self.guest_log, "cannot duplicate queue EventFds: {e}");
                self.interrupt.signal_needs_reset();
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone() as Arc<dyn VirtioInterrupt>,
            queues,
            queue_evts,
        };
        if let Err(e) = lock(&self.device).activate(ctx) {
            guest_warn!(self.guest_log, "device activation failed: {e}");
            self.interrupt.signal_needs_reset();
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC_VALUE,
            0x04 => MMIO_VERSION,
            0x08 => lock(&self.device).device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.offered_features();
                match self.features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            0x60 => self.interrupt.status(),
            0x70 => self.device_status(),
            0xfc => self.interrupt.config_generation(),
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.features_select = v,
            0x20 => {
                if !self.status_has(DRIVER, FEATURES_OK | FAILED) {
                    guest_warn!(
                        self.guest_log,
                        "feature write in status {:#x}",
                        self.device_status
                    );
                    return;
                }
                match self.driver_features_select {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    // Pages above 1 carry no features we offer: accepting any fails FEATURES_OK.
                    _ if v != 0 => self.unknown_features_accepted = true,
                    _ => {}
                }
            }
            0x24 => self.driver_features_select = v,
            0x30 => self.queue_select = v,
            0x38 => {
                if let Some(q) = self.queue_writable() {
                    q.size = u16::try_from(v).unwrap_or(0);
                }
            }
            0x44 => self.write_queue_ready(v),
            0x50 => self.notify(v),
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                if let Some(q) = self.queue_writable() {
                    let field = match offset {
                        0x80 | 0x84 => &mut q.desc,
                        0x90 | 0x94 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    if offset & 0x4 == 0 {
                        set_low(field, v);
                    } else {
                        set_high(field, v);
                    }
                }
            }
            _ => log::debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        let event_idx = features::has(self.driver_features, VIRTIO_RING_F_EVENT_IDX);
        let mem = self.mem.clone();
        let Some(q) = self.queue_writable_for_ready(v) else {
            return;
        };
        if v == 0 {
            q.ready = false;
            return;
        }
        match build_queue(q, &mem, event_idx) {
            Ok(_) => q.ready = true,
            Err(e) => guest_warn!(self.guest_log, "refused queue ready: {e}"),
        }
    }

    /// Like [`Self::queue_writable`], but a ready queue may be disabled (v = 0).
    fn queue_writable_for_ready(&mut self, v: u32) -> Option<&mut QueueRegs> {
        if !self.status_has(FEATURES_OK, DRIVER_OK | FAILED) {
            return None;
        }
        let q = self.queues.get_mut(self.queue_select as usize)?;
        if q.ready && v != 0 {
            return None;
        }
        Some(q)
    }

    fn notify(&mut self, index: u32) {
        if !self.status_has(DRIVER_OK, 0) {
            return;
        }
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::error!("virtio-mmio: cannot forward notification of queue {index}: {e}");
                }
            }
            None => guest_warn!(self.guest_log, "notification for unknown queue {index}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            let off = offset - CONFIG_SPACE_OFFSET;
            lock(&self.device).read_config(off, data);
            return;
        }
        // Registers below the config space are 32-bit wide and 32-bit aligned.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_warn!(
                self.guest_log,
                "bad register read at {offset:#x}, size {}",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_register(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if !self.status_has(DRIVER, FAILED) {
                guest_warn!(self.guest_log, "config write before DRIVER");
                return;
            }
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(
                self.guest_log,
                "bad register write at {offset:#x}, size {}",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

/// Locks a device; a poisoned lock (a panic elsewhere) still holds a memory-safe device.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[path = "mmio_persist.rs"]
pub mod persist;

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
