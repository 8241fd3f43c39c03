//! virtio-balloon driver (virtio 1.2 section 5.5) and the `balloon-*` commands.
//!
//! The balloon owns a region of free RAM above the DMA arena. Inflating hands the region's
//! pages over from its start (256 PFNs per chain, one chain at a time); deflating takes the
//! last ones back. Statistics, when offered, are refilled each time the device returns the
//! buffer.

use super::mmio::{reg, MmioDevice, Transport};
use super::queue::{VirtQueue, DESC_F_WRITE};
use super::{dma, fields, find, VirtioError};
use crate::bootinfo;
use crate::cmdline::{as_text, parse_u64};
use crate::e820::{find_free, E820_RAM};
use crate::mem::MAPPED_LIMIT;
use crate::sprintln;
use crate::timer::{delay_us, Deadline};

pub const DEVICE_ID_BALLOON: u32 = 5;
const F_STATS_VQ: u64 = 1 << 1;
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const QUEUE_SIZE: u16 = 16;
const PFNS_PER_CHAIN: u64 = 256;
const PAGE: u64 = 4096;
const ANSWER_US: u64 = 3_000_000;
/// Word written into each region page; a page that reads 0 after a deflate was released.
const PATTERN: u64 = 0xba11_0000_0000_0000;
const STAT_ENTRIES: usize = 4;

struct Balloon {
    t: Transport,
    inflate: VirtQueue,
    deflate: VirtQueue,
    stats: Option<VirtQueue>,
    features: u64,
    /// PFN array buffer (one chain's worth) and the stats buffer.
    pfns: u64,
    stats_buf: u64,
    stats_sent: u64,
}

impl Balloon {
    fn open(dev: &MmioDevice) -> Result<Balloon, VirtioError> {
        let t = Transport { base: dev.base };
        let offered = t.begin()?;
        let features = t.negotiate(offered, F_STATS_VQ | F_DEFLATE_ON_OOM)?;
        let mk = |i: u16| -> Result<VirtQueue, VirtioError> {
            let max = t.queue_max(i);
            if max == 0 {
                return Err(VirtioError::QueueMaxZero);
            }
            let q = VirtQueue::new(i, max.min(QUEUE_SIZE)).ok_or(VirtioError::NoMemory)?;
            t.setup_queue(&q)?;
            Ok(q)
        };
        let inflate = mk(0)?;
        let deflate = mk(1)?;
        let stats = if features & F_STATS_VQ != 0 {
            Some(mk(2)?)
        } else {
            None
        };
        let pfns = dma::alloc(4 * PFNS_PER_CHAIN, 4096).ok_or(VirtioError::NoMemory)?;
        let stats_buf = dma::alloc(10 * STAT_ENTRIES as u64, 16).ok_or(VirtioError::NoMemory)?;
        t.driver_ok()?;
        Ok(Balloon {
            t,
            inflate,
            deflate,
            stats,
            features,
            pfns,
            stats_buf,
            stats_sent: 0,
        })
    }

    fn target(&self) -> u64 {
        self.t.config32(0) as u64
    }

    fn set_actual(&self, pages: u64) {
        self.t.write(reg::CONFIG + 4, pages as u32);
    }

    /// Posts descriptor 0 (addr, len, flags) on `q` and waits for it.
    fn run(
        t: &Transport,
        q: &mut VirtQueue,
        addr: u64,
        len: u32,
        flags: u16,
        timeout_us: u64,
    ) -> Result<(), VirtioError> {
        q.set_desc(0, addr, len, flags, 0);
        q.push(0);
        q.publish();
        if q.device_wants_notify() {
            t.notify(q.index);
        }
        let deadline = Deadline::after_us(timeout_us);
        let mut polls = 0u32;
        loop {
            if let Some((id, _)) = q.pop_used() {
                return if id == 0 {
                    Ok(())
                } else {
                    Err(VirtioError::WrongUsedId)
                };
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(256) {
                if t.needs_reset() {
                    return Err(VirtioError::NeedsReset);
                }
                if deadline.passed() {
                    return Err(VirtioError::Timeout);
                }
            }
        }
    }

    /// Sends `pfns` (consecutive, from `first`) on the inflate or deflate queue.
    fn send(&mut self, inflate: bool, first: u64, n: u64) -> Result<(), VirtioError> {
        for i in 0..n {
            dma::write::<u32>(self.pfns + 4 * i, (first + i) as u32);
        }
        let q = if inflate {
            &mut self.inflate
        } else {
            &mut self.deflate
        };
        Self::run(&self.t, q, self.pfns, (4 * n) as u32, 0, ANSWER_US)
    }

    /// Writes fresh statistics and posts the buffer (first time, or after the device
    /// returned it).
    fn post_stats(&mut self, free: u64, total: u64) {
        let Some(q) = self.stats.as_mut() else {
            return;
        };
        self.stats_sent += 1;
        let entries: [(u16, u64); STAT_ENTRIES] =
            [(0, 0), (3, self.stats_sent), (4, free), (5, total)];
        for (i, (tag, val)) in entries.iter().enumerate() {
            let at = self.stats_buf + 10 * i as u64;
            dma::write::<u16>(at, *tag);
            dma::write::<u64>(at + 2, *val);
        }
        q.set_desc(0, self.stats_buf, (10 * STAT_ENTRIES) as u32, 0, 0);
        q.push(0);
        q.publish();
        if q.device_wants_notify() {
            self.t.notify(q.index);
        }
    }

    /// Whether the device handed the stats buffer back.
    fn stats_returned(&mut self) -> bool {
        self.stats.as_mut().is_some_and(|q| q.pop_used().is_some())
    }
}

fn ram_bytes() -> u64 {
    let boot = bootinfo::get();
    boot.e820[..boot.e820_len]
        .iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size)
        .sum()
}

/// A region of `mib` MiB of free RAM above the DMA arena.
fn region(mib: u64) -> Option<u64> {
    let boot = bootinfo::get();
    let floor = dma::arena_end()?;
    let initrd = boot.initrd.map(|(a, s)| (a, a.saturating_add(s)));
    find_free(
        &boot.e820[..boot.e820_len],
        mib << 20,
        floor,
        MAPPED_LIMIT,
        initrd.as_slice(),
    )
}

pub fn run(name: &str, index: usize, arg: Option<&[u8]>) {
    let Some(dev) = find(DEVICE_ID_BALLOON, index) else {
        sprintln!("PROBE {} FAIL no-such-device dev={}", name, index);
        return;
    };
    let mut b = match Balloon::open(&dev) {
        Ok(b) => b,
        Err(e) => {
            sprintln!("PROBE {} FAIL {} dev={}", name, e.reason(), index);
            return;
        }
    };
    let result = match name {
        "balloon-serve" => serve(&mut b, index, arg),
        "balloon-hostile" => hostile(&mut b, &dev, index, arg),
        _ => {
            sprintln!("PROBE {} FAIL unknown-command", name);
            Ok(())
        }
    };
    if let Err(e) = result {
        sprintln!("PROBE {} FAIL {} dev={}", name, e.reason(), index);
    }
    let _ = b.t.reset();
}

/// `balloon-serve:SECONDS[:REGION_MIB]`: a driver following the device's target for SECONDS.
fn serve(b: &mut Balloon, index: usize, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<2>(arg);
    let secs = if n >= 1 { parse_u64(f[0]) } else { None };
    let mib = if n >= 2 { parse_u64(f[1]) } else { Some(64) };
    let (Some(secs), Some(mib)) = (secs, mib) else {
        sprintln!("PROBE balloon-serve FAIL bad-argument usage=balloon-serve:SECONDS[:REGION_MIB]");
        return Ok(());
    };
    let Some(start) = region(mib) else {
        sprintln!("PROBE balloon-serve FAIL no-free-ram mib={}", mib);
        return Ok(());
    };
    let pages = (mib << 20) / PAGE;
    let first_pfn = start / PAGE;
    for p in 0..pages {
        dma::write::<u64>(start + p * PAGE, PATTERN | p);
    }
    let total = ram_bytes();
    b.post_stats(pages * PAGE, total);
    sprintln!(
        "PROBE balloon-ready dev={} region=0x{:x} region_mib={} features=0x{:x} stats={} target={}",
        index,
        start,
        mib,
        b.features,
        b.stats.is_some() as u8,
        b.target()
    );
    let (mut actual, mut inflated, mut deflated, mut zero_pages) = (0u64, 0u64, 0u64, 0u64);
    let deadline = Deadline::after_us(secs.saturating_mul(1_000_000));
    let mut reported = u64::MAX;
    while !deadline.passed() {
        let target = b.target().min(pages);
        if target > actual {
            let n = (target - actual).min(PFNS_PER_CHAIN);
            b.send(true, first_pfn + actual, n)?;
            actual += n;
            inflated += n;
            b.set_actual(actual);
        } else if target < actual {
            let n = (actual - target).min(PFNS_PER_CHAIN);
            b.send(false, first_pfn + actual - n, n)?;
            for p in actual - n..actual {
                let at = start + p * PAGE;
                if dma::read::<u64>(at) == 0 {
                    zero_pages += 1;
                }
                dma::write::<u64>(at, PATTERN | p);
            }
            actual -= n;
            deflated += n;
            b.set_actual(actual);
        } else {
            if actual != reported {
                reported = actual;
                let verb = if inflated > deflated {
                    "inflated"
                } else {
                    "deflated"
                };
                sprintln!(
                    "PROBE balloon-{} dev={} actual={} target={} zero_pages={}",
                    verb,
                    index,
                    actual,
                    b.target(),
                    zero_pages
                );
            }
            delay_us(10_000);
        }
        if b.stats_returned() {
            b.post_stats((pages - actual) * PAGE, total);
        }
    }
    sprintln!(
        "PROBE balloon-serve ok dev={} actual={} inflated={} deflated={} zero_pages={} stats_sent={}",
        index,
        actual,
        inflated,
        deflated,
        zero_pages,
        b.stats_sent
    );
    Ok(())
}

/// `balloon-hostile:KIND`: one malformed inflate chain, then a good inflate and deflate of
/// one page. Kinds: `pfn-oob` (PFNs past RAM and 0xffffffff), `odd-len` (6-byte array),
/// `wo` (device-writable PFN array), `buf-oob` (array outside RAM), `huge-count` (65537 PFNs).
fn hostile(
    b: &mut Balloon,
    dev: &MmioDevice,
    index: usize,
    arg: Option<&[u8]>,
) -> Result<(), VirtioError> {
    let kind = as_text(arg.unwrap_or(b""));
    let outside = dma::outside_memory();
    let (addr, len, flags) = match kind {
        "pfn-oob" => {
            dma::write::<u32>(b.pfns, (outside / PAGE) as u32);
            dma::write::<u32>(b.pfns + 4, u32::MAX);
            (b.pfns, 8, 0)
        }
        "odd-len" => (b.pfns, 6, 0),
        "wo" => (b.pfns, 8, DESC_F_WRITE),
        "buf-oob" => (outside, 8, 0),
        "huge-count" => {
            let n = 65_537u64;
            let Some(buf) = dma::alloc_zeroed(4 * n, 4096) else {
                return Err(VirtioError::NoMemory);
            };
            (buf, (4 * n) as u32, 0)
        }
        _ => {
            sprintln!("PROBE balloon-hostile FAIL bad-argument kinds=pfn-oob,odd-len,wo,buf-oob,huge-count");
            return Ok(());
        }
    };
    let outcome = match Balloon::run(&b.t, &mut b.inflate, addr, len, flags, ANSWER_US) {
        Ok(()) => "answered",
        Err(VirtioError::NeedsReset) => {
            dma::reset();
            *b = Balloon::open(dev)?;
            "needs-reset"
        }
        Err(e) => {
            sprintln!("PROBE balloon-hostile FAIL kind={} {}", kind, e.reason());
            return Ok(());
        }
    };
    let Some(page) = region(1) else {
        sprintln!("PROBE balloon-hostile FAIL no-free-ram");
        return Ok(());
    };
    dma::write::<u64>(page, PATTERN);
    let then = b
        .send(true, page / PAGE, 1)
        .and_then(|()| b.send(false, page / PAGE, 1));
    match then {
        Ok(()) if dma::read::<u64>(page) == 0 => sprintln!(
            "PROBE balloon-hostile ok dev={} kind={} outcome={} then=ok",
            index,
            kind,
            outcome
        ),
        Ok(()) => sprintln!(
            "PROBE balloon-hostile FAIL kind={} then=page-not-released",
            kind
        ),
        Err(e) => sprintln!(
            "PROBE balloon-hostile FAIL kind={} then={}",
            kind,
            e.reason()
        ),
    }
    Ok(())
}
