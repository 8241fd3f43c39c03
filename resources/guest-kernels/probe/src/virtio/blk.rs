//! virtio-blk driver (virtio 1.2 section 5.2). Each request slot `k` owns
//! descriptors 3k (header), 3k+1 (data), 3k+2 (status), a 16-byte header and
//! a status byte, all preallocated: posting a request writes the header and
//! pushes the head, nothing else.

use super::mmio::{self, MmioDevice, Transport, DEVICE_ID_BLOCK};
use super::queue::{VirtQueue, DESC_F_NEXT, DESC_F_WRITE};
use super::{dma, find, VirtioError};
use crate::timer::Deadline;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

pub const S_OK: u8 = 0;
/// Status byte value before the device writes it.
pub const STATUS_UNSET: u8 = 0xff;

pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;

pub const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Default wait for one request (rate limiters may hold requests back).
pub const REQUEST_TIMEOUT_US: u64 = 60_000_000;

pub struct Blk {
    pub dev: MmioDevice,
    pub t: Transport,
    pub q: VirtQueue,
    pub offered: u64,
    pub features: u64,
    pub capacity: u64,
    pub slots: u16,
    hdrs: u64,
    stats: u64,
}

/// Data buffer of a request: (address, length, device writes it).
pub type Data = Option<(u64, u32, bool)>;

impl Blk {
    /// Initialises the `index`-th virtio-blk device.
    pub fn open(index: usize) -> Result<Blk, VirtioError> {
        let dev = find(DEVICE_ID_BLOCK, index).ok_or(VirtioError::NoDevice)?;
        let t = Transport { base: dev.base };
        let offered = t.begin()?;
        let features = t.negotiate(offered, F_RO | F_FLUSH)?;
        let (q, slots, hdrs, stats) = Self::make_queue(&t, None)?;
        t.driver_ok()?;
        Ok(Blk {
            dev,
            t,
            q,
            offered,
            features,
            capacity: t.config64(0),
            slots,
            hdrs,
            stats,
        })
    }

    /// Begins and negotiates, for callers that set up the queue themselves.
    pub fn negotiate_only(t: &Transport) -> Result<(u64, u64), VirtioError> {
        let offered = t.begin()?;
        Ok((offered, t.negotiate(offered, F_RO | F_FLUSH)?))
    }

    /// Allocates the queue (of `size`, or the device's maximum up to 256)
    /// and the slot memory, and sets the queue up.
    pub fn make_queue(
        t: &Transport,
        size: Option<u16>,
    ) -> Result<(VirtQueue, u16, u64, u64), VirtioError> {
        let max = t.queue_max(0);
        if max == 0 {
            return Err(VirtioError::QueueMaxZero);
        }
        let size = size.unwrap_or(max.min(QUEUE_SIZE));
        let q = VirtQueue::new(0, size).ok_or(VirtioError::NoMemory)?;
        let slots = size / 3;
        let hdrs = dma::alloc(16 * slots as u64, 16).ok_or(VirtioError::NoMemory)?;
        let stats = dma::alloc(slots as u64, 8).ok_or(VirtioError::NoMemory)?;
        t.setup_queue(&q)?;
        Ok((q, slots, hdrs, stats))
    }

    /// Builds a `Blk` around an already-programmed queue (DRIVER_OK set by caller).
    pub fn from_parts(
        dev: MmioDevice,
        (offered, features): (u64, u64),
        (q, slots, hdrs, stats): (VirtQueue, u16, u64, u64),
    ) -> Blk {
        let t = Transport { base: dev.base };
        Blk {
            dev,
            t,
            q,
            offered,
            features,
            capacity: t.config64(0),
            slots,
            hdrs,
            stats,
        }
    }

    /// Reset and full re-initialisation (after DEVICE_NEEDS_RESET).
    pub fn reinit(&mut self) -> Result<(), VirtioError> {
        let offered = self.t.begin()?;
        self.features = self.t.negotiate(offered, F_RO | F_FLUSH)?;
        let (q, slots, hdrs, stats) = Self::make_queue(&self.t, None)?;
        self.t.driver_ok()?;
        self.q = q;
        self.slots = slots;
        self.hdrs = hdrs;
        self.stats = stats;
        Ok(())
    }

    pub fn read_only(&self) -> bool {
        self.features & F_RO != 0
    }

    pub fn header_addr(&self, slot: u16) -> u64 {
        self.hdrs + 16 * slot as u64
    }

    pub fn status_addr(&self, slot: u16) -> u64 {
        self.stats + slot as u64
    }

    pub fn status_byte(&self, slot: u16) -> u8 {
        dma::read(self.status_addr(slot))
    }

    /// Writes slot `slot`'s three descriptors and header; does not push.
    pub fn prepare(&self, slot: u16, kind: u32, sector: u64, data: Data) {
        let (h, d, s) = (3 * slot, 3 * slot + 1, 3 * slot + 2);
        let hdr = self.header_addr(slot);
        dma::write::<u32>(hdr, kind);
        dma::write::<u32>(hdr + 4, 0);
        dma::write::<u64>(hdr + 8, sector);
        dma::write::<u8>(self.status_addr(slot), STATUS_UNSET);
        match data {
            Some((addr, len, device_writes)) => {
                self.q.set_desc(h, hdr, 16, DESC_F_NEXT, d);
                let flags = DESC_F_NEXT | if device_writes { DESC_F_WRITE } else { 0 };
                self.q.set_desc(d, addr, len, flags, s);
            }
            None => self.q.set_desc(h, hdr, 16, DESC_F_NEXT, s),
        }
        self.q
            .set_desc(s, self.status_addr(slot), 1, DESC_F_WRITE, 0);
    }

    /// The per-request fast path: new sector for a prepared slot, then push.
    pub fn repost(&mut self, slot: u16, sector: u64) {
        dma::write::<u64>(self.header_addr(slot) + 8, sector);
        self.q.push(3 * slot);
    }

    /// Publishes pushed heads and notifies unless the device opted out.
    pub fn kick(&self) {
        self.q.publish();
        if self.q.device_wants_notify() {
            self.t.notify(0);
        }
    }

    /// Waits for the next used element, or DEVICE_NEEDS_RESET, or the timeout.
    pub fn wait_used(&mut self, timeout_us: u64) -> Result<(u32, u32), VirtioError> {
        let deadline = Deadline::after_us(timeout_us);
        let mut polls = 0u32;
        loop {
            if let Some(e) = self.q.pop_used() {
                return Ok(e);
            }
            polls = polls.wrapping_add(1);
            // A status read is an MMIO exit: not on every poll.
            if polls.is_multiple_of(256) {
                if self.t.needs_reset() {
                    return Err(VirtioError::NeedsReset);
                }
                if deadline.passed() {
                    return Err(VirtioError::Timeout);
                }
            }
        }
    }

    /// Runs one request in slot 0 and returns its status byte.
    pub fn request(&mut self, kind: u32, sector: u64, data: Data) -> Result<u8, VirtioError> {
        self.prepare(0, kind, sector, data);
        self.q.push(0);
        self.kick();
        let (id, _len) = self.wait_used(REQUEST_TIMEOUT_US)?;
        if id != 0 {
            return Err(VirtioError::WrongUsedId);
        }
        Ok(self.status_byte(0))
    }

    /// Resets the device so it stops touching probe memory.
    pub fn close(&self) {
        let _ = self.t.reset();
    }
}

/// The device's serial as GET_ID returns it (up to 20 bytes, NUL-padded).
pub fn get_id(b: &mut Blk, out: &mut [u8; 20]) -> Result<u8, VirtioError> {
    let buf = dma::alloc(20, 8).ok_or(VirtioError::NoMemory)?;
    dma::write::<[u8; 20]>(buf, [0; 20]);
    let st = b.request(T_GET_ID, 0, Some((buf, 20, true)))?;
    *out = dma::read(buf);
    Ok(st)
}

/// Whether the device still answers: reads sector 0 and checks the status.
pub fn good_request(b: &mut Blk) -> Result<u8, VirtioError> {
    let buf = dma::alloc(SECTOR, 512).ok_or(VirtioError::NoMemory)?;
    b.request(T_IN, 0, Some((buf, SECTOR as u32, true)))
}

pub use mmio::status;
