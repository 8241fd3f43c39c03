//! The `blk-*` commands (device chosen by `@N`, the N-th virtio-blk device
//! by MMIO address, default 0) and the deterministic data pattern.

use super::blk::{self, Blk, SECTOR, S_OK, T_FLUSH, T_IN, T_OUT};
use super::{bench, dma, fields, hostile, VirtioError};
use crate::arch::cpu::rdtsc;
use crate::cmdline::{as_text, parse_u64};
use crate::{sprint, sprintln, timer};

/// Sectors per request for blk-write / blk-read.
const CHUNK_SECTORS: u64 = 128;
/// Default sectors per request for blk-readall.
const READALL_SECTORS: u64 = 8;

const PATTERN_A: u64 = 0x9e37_79b9_7f4a_7c15;
const PATTERN_B: u64 = 0xc2b2_ae3d_27d4_eb4f;
const PATTERN_C: u64 = 0x1656_67b1_9e37_79f9;

/// The pattern: little-endian 64-bit word `i` (0..64) of disk sector `s` is
/// `seed*A + s*B + i*C` (mod 2^64). Fills `sectors` sectors starting with
/// disk sector `first` into `buf`.
pub fn pattern_fill(buf: u64, seed: u64, first: u64, sectors: u64) {
    let mut base = seed
        .wrapping_mul(PATTERN_A)
        .wrapping_add(first.wrapping_mul(PATTERN_B));
    let mut p = buf as *mut u64;
    for _ in 0..sectors {
        let mut v = base;
        for _ in 0..SECTOR / 8 {
            // SAFETY: the caller's buffer holds `sectors` sectors.
            unsafe {
                p.write_volatile(v);
                p = p.add(1);
            }
            v = v.wrapping_add(PATTERN_C);
        }
        base = base.wrapping_add(PATTERN_B);
    }
}

/// First difference from the pattern: (byte offset in `buf`, expected byte, got byte).
pub fn pattern_check(buf: u64, seed: u64, first: u64, sectors: u64) -> Option<(u64, u8, u8)> {
    let mut base = seed
        .wrapping_mul(PATTERN_A)
        .wrapping_add(first.wrapping_mul(PATTERN_B));
    let mut off = 0u64;
    for _ in 0..sectors {
        let mut v = base;
        for _ in 0..SECTOR / 8 {
            let got: u64 = dma::read(buf + off);
            if got != v {
                let diff = got ^ v;
                let byte = diff.trailing_zeros() as u64 / 8;
                return Some((
                    off + byte,
                    (v >> (8 * byte)) as u8,
                    (got >> (8 * byte)) as u8,
                ));
            }
            off += 8;
            v = v.wrapping_add(PATTERN_C);
        }
        base = base.wrapping_add(PATTERN_B);
    }
    None
}

pub fn run(name: &str, index: usize, arg: Option<&[u8]>) {
    if name == "blk-hostile" {
        hostile::blk(index, arg);
        return;
    }
    let mut b = match Blk::open(index) {
        Ok(b) => b,
        Err(e) => {
            sprintln!("PROBE {} FAIL {} dev={}", name, e.reason(), index);
            return;
        }
    };
    let result = match name {
        "blk-info" => info(&b, index),
        "blk-id" => id(&mut b, index),
        "blk-write" => write_read(&mut b, index, arg, true),
        "blk-read" => write_read(&mut b, index, arg, false),
        "blk-flush" => flush(&mut b, index),
        "blk-readall" => readall(&mut b, index, arg),
        "blk-inflight" => inflight(&mut b, index, arg),
        "blk-await-change" => await_change(&b, index, arg),
        "blk-bench" => bench::run(&mut b, index, arg),
        _ => {
            sprintln!("PROBE {} FAIL unknown-command", name);
            Ok(())
        }
    };
    if let Err(e) = result {
        sprintln!(
            "PROBE {} FAIL {} dev={} status=0x{:x}",
            name,
            e.reason(),
            index,
            b.t.status()
        );
    }
    b.close();
}

fn info(b: &Blk, index: usize) -> Result<(), VirtioError> {
    sprintln!(
        "PROBE blk-info ok dev={} addr={:#x} irq={} capacity={} features={:#x} accepted={:#x} ro={} flush={} queue_size={} status={:#x}",
        index,
        b.dev.base,
        b.dev.irq,
        b.capacity,
        b.offered,
        b.features,
        b.read_only() as u8,
        (b.offered & blk::F_FLUSH != 0) as u8,
        b.q.size,
        b.t.status()
    );
    Ok(())
}

/// Waits for the host to change the device's configuration (e.g. `PATCH /drives` with a new
/// image): prints a `ready` line the host can wait for, then polls the config generation and
/// the config-change interrupt bit until either moves or `TIMEOUT_MS` (default 30000) passes.
fn await_change(b: &Blk, index: usize, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    const REG_INTERRUPT_STATUS: u64 = 0x60;
    const REG_CONFIG_GENERATION: u64 = 0xfc;
    const INT_CONFIG_CHANGE: u32 = 1 << 1;
    let timeout_ms = arg.and_then(parse_u64).unwrap_or(30_000);
    let gen = b.t.read(REG_CONFIG_GENERATION);
    sprintln!(
        "PROBE blk-await-change ready dev={} capacity={} gen={}",
        index,
        b.capacity,
        gen
    );
    let deadline = timer::Deadline::after_us(timeout_ms.saturating_mul(1000));
    loop {
        let isr = b.t.read(REG_INTERRUPT_STATUS);
        let now = b.t.read(REG_CONFIG_GENERATION);
        if isr & INT_CONFIG_CHANGE != 0 || now != gen {
            // Capacity is the first config field: 64 bits at offset 0.
            sprintln!(
                "PROBE blk-await-change ok dev={} capacity={} gen={} config_interrupt={}",
                index,
                b.t.config64(0),
                now,
                (isr & INT_CONFIG_CHANGE != 0) as u8
            );
            return Ok(());
        }
        if deadline.passed() {
            sprintln!("PROBE blk-await-change FAIL timeout dev={}", index);
            return Ok(());
        }
        timer::delay_us(1000);
    }
}

fn id(b: &mut Blk, index: usize) -> Result<(), VirtioError> {
    let mut serial = [0u8; 20];
    let st = blk::get_id(b, &mut serial)?;
    if st != S_OK {
        sprintln!("PROBE blk-id FAIL status={} dev={}", st, index);
        return Ok(());
    }
    let len = serial.iter().position(|&c| c == 0).unwrap_or(20);
    let text = &serial[..len];
    if text.iter().any(|&c| !(0x21..0x7f).contains(&c)) {
        sprint!("PROBE blk-id ok dev={} len={} hex=", index, len);
        for c in text {
            sprint!("{:x}{:x}", c >> 4, c & 0xf);
        }
        sprintln!("");
    } else {
        sprintln!(
            "PROBE blk-id ok dev={} len={} serial={}",
            index,
            len,
            as_text(text)
        );
    }
    Ok(())
}

/// Parses `SECTOR:COUNT:SEED`.
fn range_args(arg: Option<&[u8]>) -> Option<(u64, u64, u64)> {
    let (f, n) = fields::<3>(arg);
    if n != 3 {
        return None;
    }
    Some((parse_u64(f[0])?, parse_u64(f[1])?, parse_u64(f[2])?))
}

fn write_read(
    b: &mut Blk,
    index: usize,
    arg: Option<&[u8]>,
    write: bool,
) -> Result<(), VirtioError> {
    let name = if write { "blk-write" } else { "blk-read" };
    let Some((sector, count, seed)) = range_args(arg) else {
        sprintln!("PROBE {} FAIL bad-argument want=SECTOR:COUNT:SEED", name);
        return Ok(());
    };
    if count == 0 || sector.checked_add(count).is_none_or(|end| end > b.capacity) {
        sprintln!(
            "PROBE {} FAIL out-of-range sector={} count={} capacity={}",
            name,
            sector,
            count,
            b.capacity
        );
        return Ok(());
    }
    let buf = dma::alloc(CHUNK_SECTORS * SECTOR, 4096).ok_or(VirtioError::NoMemory)?;
    let mut done = 0;
    let mut requests = 0u64;
    while done < count {
        let n = (count - done).min(CHUNK_SECTORS);
        let s = sector + done;
        let len = (n * SECTOR) as u32;
        if write {
            pattern_fill(buf, seed, s, n);
        }
        let kind = if write { T_OUT } else { T_IN };
        let st = b.request(kind, s, Some((buf, len, !write)))?;
        requests += 1;
        if st != S_OK {
            sprintln!(
                "PROBE {} FAIL status={} sector={} dev={}",
                name,
                st,
                s,
                index
            );
            return Ok(());
        }
        if !write {
            if let Some((off, want, got)) = pattern_check(buf, seed, s, n) {
                sprintln!(
                    "PROBE blk-read FAIL mismatch offset={} sector={} expected={:#x} got={:#x} dev={}",
                    done * SECTOR + off,
                    s + off / SECTOR,
                    want,
                    got,
                    index
                );
                return Ok(());
            }
        }
        done += n;
    }
    sprintln!(
        "PROBE {} ok dev={} sector={} count={} seed={} bytes={} requests={}",
        name,
        index,
        sector,
        count,
        seed,
        count * SECTOR,
        requests
    );
    Ok(())
}

fn flush(b: &mut Blk, index: usize) -> Result<(), VirtioError> {
    let offered = b.offered & blk::F_FLUSH != 0;
    let st = b.request(T_FLUSH, 0, None)?;
    if offered && st != S_OK {
        sprintln!(
            "PROBE blk-flush FAIL status={} flush_offered=1 dev={}",
            st,
            index
        );
    } else {
        sprintln!(
            "PROBE blk-flush ok dev={} status={} flush_offered={}",
            index,
            st,
            offered as u8
        );
    }
    Ok(())
}

fn readall(b: &mut Blk, index: usize, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<2>(arg);
    let count = if n >= 1 { parse_u64(f[0]) } else { None };
    let per = if n >= 2 {
        parse_u64(f[1])
    } else {
        Some(READALL_SECTORS)
    };
    let (Some(count), Some(per)) = (count, per) else {
        sprintln!("PROBE blk-readall FAIL bad-argument want=COUNT[:REQ_SECTORS]");
        return Ok(());
    };
    if per == 0 || per > 2048 || b.capacity == 0 {
        sprintln!(
            "PROBE blk-readall FAIL bad-argument req_sectors={} capacity={}",
            per,
            b.capacity
        );
        return Ok(());
    }
    let buf = dma::alloc(per * SECTOR, 4096).ok_or(VirtioError::NoMemory)?;
    let start = rdtsc();
    let (mut done, mut requests, mut sector) = (0u64, 0u64, 0u64);
    while done < count {
        // Wraps at the end of the disk.
        if sector >= b.capacity {
            sector = 0;
        }
        let n = (count - done).min(per).min(b.capacity - sector);
        let st = b.request(T_IN, sector, Some((buf, (n * SECTOR) as u32, true)))?;
        if st != S_OK {
            sprintln!(
                "PROBE blk-readall FAIL status={} sector={} dev={}",
                st,
                sector,
                index
            );
            return Ok(());
        }
        requests += 1;
        done += n;
        sector += n;
    }
    let cycles = rdtsc().wrapping_sub(start);
    let ms = timer::tsc_freq().map_or(0, |f| cycles / f.khz.max(1));
    sprintln!(
        "PROBE blk-readall ok dev={} sectors={} bytes={} requests={} tsc_cycles={} ms={}",
        index,
        count,
        count * SECTOR,
        requests,
        cycles,
        ms
    );
    Ok(())
}

fn inflight(b: &mut Blk, index: usize, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let n = match arg.and_then(parse_u64) {
        Some(n) if n >= 1 && n <= b.slots as u64 => n as u16,
        _ => {
            sprintln!("PROBE blk-inflight FAIL bad-argument max={}", b.slots);
            return Ok(());
        }
    };
    let bufs = dma::alloc(n as u64 * SECTOR, 4096).ok_or(VirtioError::NoMemory)?;
    for k in 0..n {
        let sector = k as u64 % b.capacity.max(1);
        b.prepare(
            k,
            T_IN,
            sector,
            Some((bufs + k as u64 * SECTOR, SECTOR as u32, true)),
        );
        b.q.push(3 * k);
    }
    b.kick();
    // One bit per slot: each head must come back exactly once.
    let mut seen = [0u64; 4];
    for _ in 0..n {
        let (id, _) = b.wait_used(blk::REQUEST_TIMEOUT_US)?;
        let slot = id / 3;
        if id % 3 != 0 || slot >= n as u32 || seen[slot as usize / 64] & 1 << (slot % 64) != 0 {
            sprintln!(
                "PROBE blk-inflight FAIL bad-used-id id={} dev={}",
                id,
                index
            );
            return Ok(());
        }
        seen[slot as usize / 64] |= 1 << (slot % 64);
        let st = b.status_byte(slot as u16);
        if st != S_OK {
            sprintln!(
                "PROBE blk-inflight FAIL status={} slot={} dev={}",
                st,
                slot,
                index
            );
            return Ok(());
        }
    }
    sprintln!(
        "PROBE blk-inflight ok dev={} n={} completed={}",
        index,
        n,
        n
    );
    Ok(())
}
