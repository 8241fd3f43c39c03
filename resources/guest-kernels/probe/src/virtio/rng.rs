//! virtio-rng driver (virtio 1.2 section 5.4) and the `rng-*` commands.
//! One queue; each request is one device-writable buffer (descriptor 0).

use super::mmio::{MmioDevice, Transport};
use super::queue::{VirtQueue, DESC_F_NEXT, DESC_F_WRITE};
use super::{dma, fields, find, VirtioError};
use crate::cmdline::{as_text, parse_u64};
use crate::sprintln;
use crate::timer::Deadline;

pub const DEVICE_ID_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 16;
/// Largest buffer the commands post (the device fills at most 64 KiB of it).
const MAX_BUF: u64 = 256 << 10;
/// How long one request may wait (a rate limiter may hold it back).
const REQUEST_TIMEOUT_US: u64 = 60_000_000;
/// How long a malformed request may take to be answered.
const ANSWER_US: u64 = 3_000_000;

struct Rng {
    t: Transport,
    q: VirtQueue,
}

impl Rng {
    fn open(dev: &MmioDevice) -> Result<Rng, VirtioError> {
        let t = Transport { base: dev.base };
        let offered = t.begin()?;
        t.negotiate(offered, 0)?;
        let max = t.queue_max(0);
        if max == 0 {
            return Err(VirtioError::QueueMaxZero);
        }
        let q = VirtQueue::new(0, max.min(QUEUE_SIZE)).ok_or(VirtioError::NoMemory)?;
        t.setup_queue(&q)?;
        t.driver_ok()?;
        Ok(Rng { t, q })
    }

    /// Posts the chain at `head` and waits for it; returns the used length.
    fn run(&mut self, head: u16, timeout_us: u64) -> Result<u32, VirtioError> {
        self.q.push(head);
        self.q.publish();
        if self.q.device_wants_notify() {
            self.t.notify(0);
        }
        let deadline = Deadline::after_us(timeout_us);
        let mut polls = 0u32;
        loop {
            if let Some((id, len)) = self.q.pop_used() {
                if id != head as u32 {
                    return Err(VirtioError::WrongUsedId);
                }
                return Ok(len);
            }
            polls = polls.wrapping_add(1);
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

    /// One request for `len` bytes into `buf`; returns what the device wrote.
    fn read(&mut self, buf: u64, len: u32) -> Result<u32, VirtioError> {
        self.q.set_desc(0, buf, len, DESC_F_WRITE, 0);
        self.run(0, REQUEST_TIMEOUT_US)
    }
}

pub fn run(name: &str, index: usize, arg: Option<&[u8]>) {
    let Some(dev) = find(DEVICE_ID_RNG, index) else {
        sprintln!("PROBE {} FAIL no-such-device dev={}", name, index);
        return;
    };
    let mut r = match Rng::open(&dev) {
        Ok(r) => r,
        Err(e) => {
            sprintln!("PROBE {} FAIL {} dev={}", name, e.reason(), index);
            return;
        }
    };
    let result = match name {
        "rng-read" => read(&mut r, index, arg),
        "rng-hostile" => hostile(&mut r, &dev, index, arg),
        _ => {
            sprintln!("PROBE {} FAIL unknown-command", name);
            Ok(())
        }
    };
    if let Err(e) = result {
        sprintln!("PROBE {} FAIL {} dev={}", name, e.reason(), index);
    }
    let _ = r.t.reset();
}

/// `rng-read:BYTES[:REQ]`: BYTES in requests of REQ bytes (default 4096). Reports how many
/// bytes came back, requests answered short, distinct byte values, the longest run of one
/// byte value, and FNV-1a 64 of the stream.
fn read(r: &mut Rng, index: usize, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<2>(arg);
    let total = if n >= 1 { parse_u64(f[0]) } else { None };
    let req = if n >= 2 { parse_u64(f[1]) } else { Some(4096) };
    let (Some(total), Some(req)) = (total, req) else {
        sprintln!("PROBE rng-read FAIL bad-argument usage=rng-read:BYTES[:REQ]");
        return Ok(());
    };
    if req == 0 || req > MAX_BUF {
        sprintln!("PROBE rng-read FAIL bad-argument req=1..{}", MAX_BUF);
        return Ok(());
    }
    let buf = dma::alloc(req, 4096).ok_or(VirtioError::NoMemory)?;
    let mut seen = [false; 256];
    let (mut got, mut requests, mut short, mut max_len) = (0u64, 0u64, 0u64, 0u32);
    let (mut run, mut max_run, mut last) = (0u64, 0u64, -1i32);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    while got < total {
        let want = req.min(total - got) as u32;
        // Poison the buffer so bytes the device did not write cannot pass as written.
        // SAFETY: `buf` is an arena allocation of `req` bytes; the device is idle.
        unsafe { dma::bytes_mut(buf, want as usize) }.fill(0);
        let len = r.read(buf, want)?;
        requests += 1;
        if len > want {
            sprintln!(
                "PROBE rng-read FAIL used-len-too-long len={} posted={}",
                len,
                want
            );
            return Ok(());
        }
        if len < want {
            short += 1;
        }
        max_len = max_len.max(len);
        if len == 0 {
            sprintln!("PROBE rng-read FAIL empty-answer requests={}", requests);
            return Ok(());
        }
        // SAFETY: the device finished with the buffer (its chain is used).
        for &b in unsafe { dma::bytes_mut(buf, len as usize) }.iter() {
            seen[b as usize] = true;
            hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            if b as i32 == last {
                run += 1;
            } else {
                run = 1;
                last = b as i32;
            }
            max_run = max_run.max(run);
        }
        got += len as u64;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    sprintln!(
        "PROBE rng-read ok dev={} bytes={} requests={} short={} max_len={} distinct={} max_run={} fnv1a64={:016x}",
        index, got, requests, short, max_len, distinct, max_run, hash
    );
    Ok(())
}

/// `rng-hostile:KIND`: `ro` (read-only buffer), `oob` (buffer outside RAM), `straddle`
/// (writable buffer then one outside RAM), `head-oob` (avail entry past the queue). Then a
/// good 64-byte request must be answered in full.
fn hostile(
    r: &mut Rng,
    dev: &MmioDevice,
    index: usize,
    arg: Option<&[u8]>,
) -> Result<(), VirtioError> {
    let kind = as_text(arg.unwrap_or(b""));
    let buf = dma::alloc(4096, 4096).ok_or(VirtioError::NoMemory)?;
    let outside = dma::outside_memory();
    let head = match kind {
        "ro" => {
            r.q.set_desc(0, buf, 64, 0, 0);
            0
        }
        "oob" => {
            r.q.set_desc(0, outside, 64, DESC_F_WRITE, 0);
            0
        }
        "straddle" => {
            r.q.set_desc(0, buf, 64, DESC_F_WRITE | DESC_F_NEXT, 1);
            r.q.set_desc(1, outside, 64, DESC_F_WRITE, 0);
            0
        }
        "head-oob" => r.q.size + 7,
        _ => {
            sprintln!("PROBE rng-hostile FAIL bad-argument kinds=ro,oob,straddle,head-oob");
            return Ok(());
        }
    };
    let outcome = match r.run(head, ANSWER_US) {
        Ok(len) => {
            if len != 0 {
                sprintln!("PROBE rng-hostile FAIL kind={} len={}", kind, len);
                return Ok(());
            }
            "answered"
        }
        Err(VirtioError::NeedsReset) | Err(VirtioError::WrongUsedId) => {
            dma::reset();
            *r = Rng::open(dev)?;
            "needs-reset"
        }
        Err(e) => {
            sprintln!("PROBE rng-hostile FAIL kind={} {}", kind, e.reason());
            return Ok(());
        }
    };
    let buf = dma::alloc(64, 64).ok_or(VirtioError::NoMemory)?;
    match r.read(buf, 64) {
        Ok(64) => sprintln!(
            "PROBE rng-hostile ok dev={} kind={} outcome={} then=ok",
            index,
            kind,
            outcome
        ),
        Ok(n) => sprintln!("PROBE rng-hostile FAIL kind={} then=len-{}", kind, n),
        Err(e) => sprintln!("PROBE rng-hostile FAIL kind={} then={}", kind, e.reason()),
    }
    Ok(())
}
