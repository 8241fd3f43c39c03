//! virtio-net driver (virtio 1.2 section 5.1): queue 0 receives, queue 1
//! transmits. Every buffer is one descriptor of `BUF_LEN` bytes: a 12-byte
//! `virtio_net_hdr_v1` (all zero: no offloads negotiated) then the frame.
//! rx descriptor i always points at rx buffer i, tx descriptor i at tx
//! buffer i, so recycling a buffer is pushing its index again.

use super::mmio::{MmioDevice, Transport, DEVICE_ID_NET};
use super::queue::{VirtQueue, DESC_F_WRITE};
use super::{dma, find, VirtioError};
use crate::timer::Deadline;

pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_STATUS: u64 = 1 << 16;

pub const HDR_LEN: u64 = 12;
/// Header + the largest frame with MTU 1500 and a VLAN tag (1530), rounded up.
pub const BUF_LEN: u64 = 2048;
const QUEUE_SIZE: u16 = 256;
/// Buffers per queue (fewer than the queue size: memory is per command).
const BUFS: u16 = 64;

pub struct Net {
    pub dev: MmioDevice,
    pub t: Transport,
    pub offered: u64,
    pub features: u64,
    pub mac: [u8; 6],
    pub rx: VirtQueue,
    pub tx: VirtQueue,
    rx_bufs: u64,
    tx_bufs: u64,
    pub rx_count: u16,
    pub tx_count: u16,
    /// tx buffers not in flight, as a stack of indices.
    tx_free: [u16; BUFS as usize],
    tx_free_len: usize,
}

impl Net {
    pub fn open(index: usize) -> Result<Net, VirtioError> {
        Self::open_with(index, true)
    }

    /// `post_rx`: fill the receive queue (hostile tests post their own).
    pub fn open_with(index: usize, post_rx: bool) -> Result<Net, VirtioError> {
        let dev = find(DEVICE_ID_NET, index).ok_or(VirtioError::NoDevice)?;
        let t = Transport { base: dev.base };
        let offered = t.begin()?;
        let features = t.negotiate(offered, F_MAC | F_STATUS | F_MTU)?;
        let rx_max = t.queue_max(0);
        let tx_max = t.queue_max(1);
        if rx_max == 0 || tx_max == 0 {
            t.fail();
            return Err(VirtioError::QueueMaxZero);
        }
        let rx = VirtQueue::new(0, rx_max.min(QUEUE_SIZE)).ok_or(VirtioError::NoMemory)?;
        let tx = VirtQueue::new(1, tx_max.min(QUEUE_SIZE)).ok_or(VirtioError::NoMemory)?;
        let rx_count = rx.size.min(BUFS);
        let tx_count = tx.size.min(BUFS);
        let rx_bufs = dma::alloc(rx_count as u64 * BUF_LEN, 4096).ok_or(VirtioError::NoMemory)?;
        let tx_bufs = dma::alloc(tx_count as u64 * BUF_LEN, 4096).ok_or(VirtioError::NoMemory)?;
        t.setup_queue(&rx)?;
        t.setup_queue(&tx)?;
        let mut mac = [0u8; 6];
        if features & F_MAC != 0 {
            for (i, m) in mac.iter_mut().enumerate() {
                *m = t.config8(i as u64);
            }
        } else {
            // Locally administered, fixed: the probe has no randomness source it trusts.
            mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
        }
        let mut n = Net {
            dev,
            t,
            offered,
            features,
            mac,
            rx,
            tx,
            rx_bufs,
            tx_bufs,
            rx_count,
            tx_count,
            tx_free: [0; BUFS as usize],
            tx_free_len: 0,
        };
        for i in 0..tx_count {
            n.tx.set_desc(i, n.tx_buf(i), BUF_LEN as u32, 0, 0);
            n.tx_free[n.tx_free_len] = i;
            n.tx_free_len += 1;
        }
        if post_rx {
            for i in 0..rx_count {
                n.rx.set_desc(i, n.rx_buf(i), BUF_LEN as u32, DESC_F_WRITE, 0);
                n.rx.push(i);
            }
            n.rx.publish();
        }
        t.driver_ok()?;
        if post_rx {
            t.notify(0);
        }
        Ok(n)
    }

    pub fn rx_buf(&self, i: u16) -> u64 {
        self.rx_bufs + i as u64 * BUF_LEN
    }

    pub fn tx_buf(&self, i: u16) -> u64 {
        self.tx_bufs + i as u64 * BUF_LEN
    }

    pub fn link_up(&self) -> Option<bool> {
        (self.features & F_STATUS != 0).then(|| self.t.config16(6) & 1 != 0)
    }

    pub fn mtu(&self) -> Option<u16> {
        (self.features & F_MTU != 0).then(|| self.t.config16(10))
    }

    /// Takes back every completed tx buffer.
    pub fn reclaim_tx(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            if (id as u16) < self.tx_count && self.tx_free_len < BUFS as usize {
                self.tx_free[self.tx_free_len] = id as u16;
                self.tx_free_len += 1;
            }
        }
    }

    /// A free tx buffer index (frame area at `tx_buf(i) + HDR_LEN`), waiting
    /// for completions up to `timeout_us`.
    pub fn tx_slot(&mut self, timeout_us: u64) -> Result<u16, VirtioError> {
        let deadline = Deadline::after_us(timeout_us);
        loop {
            self.reclaim_tx();
            if self.tx_free_len > 0 {
                self.tx_free_len -= 1;
                return Ok(self.tx_free[self.tx_free_len]);
            }
            if self.t.needs_reset() {
                return Err(VirtioError::NeedsReset);
            }
            if deadline.passed() {
                return Err(VirtioError::Timeout);
            }
        }
    }

    /// Queues tx buffer `i` holding a `frame_len`-byte frame (not yet published).
    pub fn queue_tx(&mut self, i: u16, frame_len: u64) {
        let buf = self.tx_buf(i);
        dma::write::<u64>(buf, 0);
        dma::write::<u32>(buf + 8, 0);
        self.tx
            .set_desc_addr_len(i, buf, (HDR_LEN + frame_len) as u32);
        self.tx.push(i);
    }

    pub fn kick_tx(&self) {
        self.tx.publish();
        if self.tx.device_wants_notify() {
            self.t.notify(1);
        }
    }

    /// Points every tx descriptor at the same `len`-byte buffer at `addr`
    /// (header included), for `net-spoof-race`; `push_free_tx` then sends it.
    pub fn alias_tx(&mut self, addr: u64, len: u32) {
        for i in 0..self.tx_count {
            self.tx.set_desc_addr_len(i, addr, len);
        }
    }

    /// Reclaims completions and queues up to `max` free tx descriptors as
    /// they are (not published); returns how many.
    pub fn push_free_tx(&mut self, max: u64) -> u64 {
        self.reclaim_tx();
        let mut n = 0;
        while n < max && self.tx_free_len > 0 {
            self.tx_free_len -= 1;
            let i = self.tx_free[self.tx_free_len];
            self.tx.push(i);
            n += 1;
        }
        n
    }

    /// Whether every tx buffer came back.
    pub fn tx_idle(&mut self) -> bool {
        self.reclaim_tx();
        self.tx_free_len == self.tx_count as usize
    }

    /// Sends one frame written by `fill` (given the frame address, returns its length).
    pub fn send(&mut self, fill: impl FnOnce(u64) -> u64) -> Result<(), VirtioError> {
        let i = self.tx_slot(1_000_000)?;
        let len = fill(self.tx_buf(i) + HDR_LEN);
        self.queue_tx(i, len);
        self.kick_tx();
        Ok(())
    }

    /// The next received frame: (buffer index, frame address, frame length).
    /// Give the buffer back with `recycle`.
    pub fn poll_rx(&mut self) -> Option<(u16, u64, u64)> {
        let (id, len) = self.rx.pop_used()?;
        let i = id as u16;
        if i >= self.rx_count {
            return None;
        }
        let frame_len = (len as u64).saturating_sub(HDR_LEN).min(BUF_LEN - HDR_LEN);
        Some((i, self.rx_buf(i) + HDR_LEN, frame_len))
    }

    pub fn recycle(&mut self, i: u16) {
        self.rx.push(i);
        self.rx.publish();
        if self.rx.device_wants_notify() {
            self.t.notify(0);
        }
    }

    pub fn close(&self) {
        let _ = self.t.reset();
    }
}
