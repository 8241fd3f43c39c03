//! virtio-vsock driver (virtio 1.2 section 5.10): queue 0 receives, 1 transmits, 2 carries
//! events. Every buffer is one descriptor: the 44-byte header then up to `PAYLOAD` bytes.
//! rx descriptor i always points at rx buffer i (recycling is pushing i again), tx likewise;
//! the connection logic lives in `vsock_cmds.rs`.

use super::mmio::{MmioDevice, Transport};
use super::queue::{VirtQueue, DESC_F_WRITE};
use super::{dma, find, VirtioError};
use crate::timer::Deadline;

pub const DEVICE_ID_VSOCK: u32 = 19;
pub const HDR: u64 = 44;
/// Payload room of every buffer.
pub const PAYLOAD: u64 = 32 << 10;
const STRIDE: u64 = 36 << 10;
const BUFS: u16 = 64;
const EV_BUFS: u16 = 8;
pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUT_RCV: u32 = 1;
pub const SHUT_SEND: u32 = 2;

/// A packet header (little-endian on the wire; x86 is little-endian).
#[derive(Clone, Copy, Default, Debug)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    pub fn write(&self, at: u64) {
        dma::write(at, self.src_cid);
        dma::write(at + 8, self.dst_cid);
        dma::write(at + 16, self.src_port);
        dma::write(at + 20, self.dst_port);
        dma::write(at + 24, self.len);
        dma::write(at + 28, self.type_);
        dma::write(at + 30, self.op);
        dma::write(at + 32, self.flags);
        dma::write(at + 36, self.buf_alloc);
        dma::write(at + 40, self.fwd_cnt);
    }

    pub fn read(at: u64) -> Hdr {
        Hdr {
            src_cid: dma::read(at),
            dst_cid: dma::read(at + 8),
            src_port: dma::read(at + 16),
            dst_port: dma::read(at + 20),
            len: dma::read(at + 24),
            type_: dma::read(at + 28),
            op: dma::read(at + 30),
            flags: dma::read(at + 32),
            buf_alloc: dma::read(at + 36),
            fwd_cnt: dma::read(at + 40),
        }
    }
}

/// A received packet: its rx buffer (recycle it when done), header and payload address.
pub struct Rx {
    pub id: u16,
    pub hdr: Hdr,
    pub payload: u64,
    /// Bytes the device wrote (header included).
    pub used_len: u32,
}

pub struct Dev {
    pub dev: MmioDevice,
    pub t: Transport,
    pub cid: u64,
    pub offered: u64,
    rx: VirtQueue,
    tx: VirtQueue,
    ev: VirtQueue,
    rx_base: u64,
    tx_base: u64,
    ev_base: u64,
    tx_free: [u16; BUFS as usize],
    tx_free_len: usize,
}

impl Dev {
    pub fn open(index: usize) -> Result<Dev, VirtioError> {
        let dev = find(DEVICE_ID_VSOCK, index).ok_or(VirtioError::NoDevice)?;
        let t = Transport { base: dev.base };
        let offered = t.begin()?;
        t.negotiate(offered, 0)?;
        let mut qs = [None, None, None];
        for (i, q) in qs.iter_mut().enumerate() {
            let max = t.queue_max(i as u16);
            if max == 0 {
                t.fail();
                return Err(VirtioError::QueueMaxZero);
            }
            let size = max.min(if i == 2 { EV_BUFS } else { BUFS });
            let vq = VirtQueue::new(i as u16, size).ok_or(VirtioError::NoMemory)?;
            t.setup_queue(&vq)?;
            *q = Some(vq);
        }
        let [Some(rx), Some(tx), Some(ev)] = qs else {
            return Err(VirtioError::NoMemory);
        };
        let rx_base = dma::alloc(STRIDE * u64::from(rx.size), 4096).ok_or(VirtioError::NoMemory)?;
        let tx_base = dma::alloc(STRIDE * u64::from(tx.size), 4096).ok_or(VirtioError::NoMemory)?;
        let ev_base = dma::alloc_zeroed(8 * u64::from(ev.size), 64).ok_or(VirtioError::NoMemory)?;
        let cid = t.config64(0);
        let mut d = Dev {
            dev,
            t,
            cid,
            offered,
            rx,
            tx,
            ev,
            rx_base,
            tx_base,
            ev_base,
            tx_free: [0; BUFS as usize],
            tx_free_len: 0,
        };
        for i in 0..d.tx.size {
            d.tx_free[d.tx_free_len] = i;
            d.tx_free_len += 1;
        }
        for i in 0..d.rx.size {
            d.rx.set_desc(
                i,
                rx_base + STRIDE * u64::from(i),
                (HDR + PAYLOAD) as u32,
                DESC_F_WRITE,
                0,
            );
            d.rx.push(i);
        }
        for i in 0..d.ev.size {
            d.ev.set_desc(i, ev_base + 8 * u64::from(i), 8, DESC_F_WRITE, 0);
            d.ev.push(i);
        }
        d.t.driver_ok()?;
        d.rx.publish();
        d.ev.publish();
        d.t.notify(0);
        d.t.notify(2);
        Ok(d)
    }

    fn reclaim_tx(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            if (id as usize) < BUFS as usize && self.tx_free_len < BUFS as usize {
                self.tx_free[self.tx_free_len] = id as u16;
                self.tx_free_len += 1;
            }
        }
    }

    /// A free tx buffer: (descriptor index, address). Waits for one (3 s at most).
    fn tx_slot(&mut self) -> Result<(u16, u64), VirtioError> {
        let deadline = Deadline::after_us(3_000_000);
        loop {
            self.reclaim_tx();
            if self.tx_free_len > 0 {
                self.tx_free_len -= 1;
                let i = self.tx_free[self.tx_free_len];
                return Ok((i, self.tx_base + STRIDE * u64::from(i)));
            }
            if self.t.needs_reset() {
                return Err(VirtioError::NeedsReset);
            }
            if deadline.passed() {
                return Err(VirtioError::Timeout);
            }
        }
    }

    fn post_tx(&mut self, i: u16, addr: u64, len: u32) {
        self.tx.set_desc(i, addr, len, 0, 0);
        self.tx.push(i);
        self.tx.publish();
        if self.tx.device_wants_notify() {
            self.t.notify(1);
        }
    }

    /// Sends one packet; `payload` is copied behind the header (at most `PAYLOAD` bytes).
    pub fn send(&mut self, h: &Hdr, payload: &[u8]) -> Result<(), VirtioError> {
        let (i, addr) = self.tx_slot()?;
        let n = payload.len().min(PAYLOAD as usize);
        let mut h = *h;
        h.len = n as u32;
        h.write(addr);
        // SAFETY: the tx buffer `i` is ours (not posted) and holds HDR + PAYLOAD bytes.
        unsafe { dma::bytes_mut(addr + HDR, n) }.copy_from_slice(&payload[..n]);
        self.post_tx(i, addr, (HDR as usize + n) as u32);
        Ok(())
    }

    /// Writes `block` (at most `PAYLOAD` bytes) into the payload area of every tx buffer, so
    /// that [`Self::send_prefilled`] sends it without a copy: under PVM a 32 KiB copy by the
    /// probe costs milliseconds. Control packets (no payload) leave it in place.
    pub fn prefill_tx(&mut self, block: &[u8]) {
        let n = block.len().min(PAYLOAD as usize);
        for i in 0..self.tx.size {
            let at = self.tx_base + STRIDE * u64::from(i) + HDR;
            // SAFETY: every tx buffer holds HDR + PAYLOAD bytes; none is in flight (callers
            // prefill right after a connection starts, with the tx ring idle or only
            // carrying payload-less control packets, whose payload area is not read).
            unsafe { dma::bytes_mut(at, n) }.copy_from_slice(&block[..n]);
        }
    }

    /// Sends `len` bytes of the prefilled block with its first 8 bytes replaced by `stamp`.
    pub fn send_prefilled(&mut self, h: &Hdr, len: usize, stamp: u64) -> Result<(), VirtioError> {
        let (i, addr) = self.tx_slot()?;
        let n = len.min(PAYLOAD as usize);
        let mut h = *h;
        h.len = n as u32;
        h.write(addr);
        if n >= 8 {
            dma::write(addr + HDR, stamp);
        }
        self.post_tx(i, addr, (HDR as usize + n) as u32);
        Ok(())
    }

    /// Sends raw bytes as one descriptor (hostile commands: short or lying packets).
    pub fn send_raw(&mut self, h: &Hdr, desc_len: u32) -> Result<(), VirtioError> {
        let (i, addr) = self.tx_slot()?;
        h.write(addr);
        self.post_tx(i, addr, desc_len.min((HDR + PAYLOAD) as u32));
        Ok(())
    }

    /// The next received packet, if any.
    pub fn recv(&mut self) -> Option<Rx> {
        let (id, len) = self.rx.pop_used()?;
        let id = (id as u16).min(self.rx.size - 1);
        let at = self.rx_base + STRIDE * u64::from(id);
        let mut hdr = Hdr::read(at);
        if u64::from(hdr.len) > PAYLOAD || len < HDR as u32 {
            hdr.len = 0;
        }
        Some(Rx {
            id,
            hdr,
            payload: at + HDR,
            used_len: len,
        })
    }

    /// Gives rx buffer `id` back to the device.
    pub fn recycle(&mut self, id: u16) {
        self.rx.push(id);
        self.rx.publish();
        if self.rx.device_wants_notify() {
            self.t.notify(0);
        }
    }

    /// The next event id (0 = TRANSPORT_RESET), its buffer re-posted.
    pub fn event(&mut self) -> Option<u32> {
        let (id, _) = self.ev.pop_used()?;
        let id = (id as u16).min(self.ev.size - 1);
        let v = dma::read::<u32>(self.ev_base + 8 * u64::from(id));
        self.ev.push(id);
        self.ev.publish();
        if self.ev.device_wants_notify() {
            self.t.notify(2);
        }
        Some(v)
    }

    /// A header from this guest to the host.
    pub fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }
}
