//! `blk-bench:<seqread|seqwrite|randread|randwrite>:<req_bytes>:<inflight>:<total_mib>`.
//!
//! Every slot is prepared once (descriptors, buffer, header type); the loop
//! only rewrites a header's sector and pushes the head, and notifies once per
//! batch of completions (not at all while the device says NO_NOTIFY). Data
//! written by `seqwrite` and `randwrite` is whatever the buffers hold (not the pattern).

use super::blk::{Blk, SECTOR, S_OK, T_IN, T_OUT};
use super::{dma, fields, VirtioError};
use crate::arch::cpu::rdtsc;
use crate::cmdline::parse_u64;
use crate::{sprintln, timer};

const MAX_REQ_BYTES: u64 = 1 << 20;
/// Without progress for this long, notify again (and check for a reset).
const STALL_US: u64 = 1_000_000;
/// Without progress for this long, give up.
const GIVE_UP_US: u64 = 60_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    SeqRead,
    SeqWrite,
    RandRead,
    RandWrite,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::SeqRead => "seqread",
            Mode::SeqWrite => "seqwrite",
            Mode::RandRead => "randread",
            Mode::RandWrite => "randwrite",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Mode::SeqWrite | Mode::RandWrite)
    }
}

struct Sectors {
    mode: Mode,
    next: u64,
    per: u64,
    /// Request-sized blocks on the disk.
    blocks: u64,
    rng: u64,
}

impl Sectors {
    fn next(&mut self) -> u64 {
        match self.mode {
            Mode::RandRead | Mode::RandWrite => {
                // xorshift64
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                (self.rng % self.blocks) * self.per
            }
            _ => {
                let s = self.next;
                self.next += self.per;
                if self.next >= self.blocks * self.per {
                    self.next = 0;
                }
                s
            }
        }
    }
}

pub fn run(b: &mut Blk, index: usize, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<4>(arg);
    let mode = match f[0] {
        b"seqread" => Some(Mode::SeqRead),
        b"seqwrite" => Some(Mode::SeqWrite),
        b"randread" => Some(Mode::RandRead),
        b"randwrite" => Some(Mode::RandWrite),
        _ => None,
    };
    let (Some(mode), Some(req), Some(inflight), Some(mib), 4) =
        (mode, parse_u64(f[1]), parse_u64(f[2]), parse_u64(f[3]), n)
    else {
        sprintln!("PROBE blk-bench FAIL bad-argument want=seqread|seqwrite|randread|randwrite:REQ_BYTES:INFLIGHT:TOTAL_MIB");
        return Ok(());
    };
    let per = req / SECTOR;
    if req == 0 || !req.is_multiple_of(SECTOR) || req > MAX_REQ_BYTES || per > b.capacity {
        sprintln!(
            "PROBE blk-bench FAIL bad-req-bytes req_bytes={} capacity={}",
            req,
            b.capacity
        );
        return Ok(());
    }
    if inflight == 0 || inflight > b.slots as u64 {
        sprintln!(
            "PROBE blk-bench FAIL bad-inflight inflight={} max={}",
            inflight,
            b.slots
        );
        return Ok(());
    }
    if mode.writes() && b.read_only() {
        sprintln!("PROBE blk-bench FAIL read-only dev={}", index);
        return Ok(());
    }
    let Some(freq) = timer::tsc_freq() else {
        sprintln!("PROBE blk-bench FAIL no-tsc-calibration");
        return Ok(());
    };
    let total_bytes = mib << 20;
    let total = total_bytes.div_ceil(req).max(1);
    let inflight = inflight.min(total) as u16;
    let bufs = dma::alloc(inflight as u64 * req, 4096).ok_or(VirtioError::NoMemory)?;
    let kind = if mode.writes() { T_OUT } else { T_IN };
    let mut sectors = Sectors {
        mode,
        next: 0,
        per,
        blocks: b.capacity / per,
        rng: 0x2545_f491_4f6c_dd1d,
    };
    for k in 0..inflight {
        let buf = bufs + k as u64 * req;
        b.prepare(k, kind, 0, Some((buf, req as u32, !mode.writes())));
    }
    let khz = freq.khz.max(1);
    let stall_ticks = STALL_US * khz / 1000;
    let give_up_ticks = GIVE_UP_US * khz / 1000;
    let start = rdtsc();
    for k in 0..inflight {
        b.repost(k, sectors.next());
    }
    let mut issued = inflight as u64;
    let mut completed = 0u64;
    b.kick();
    let mut last_progress = start;
    let mut last_nudge = start;
    let mut unpublished = false;
    while completed < total {
        let Some((id, _)) = b.q.pop_used() else {
            let now = rdtsc();
            if now.wrapping_sub(last_nudge) > stall_ticks {
                if b.t.needs_reset() {
                    return Err(VirtioError::NeedsReset);
                }
                if now.wrapping_sub(last_progress) > give_up_ticks {
                    return Err(VirtioError::Timeout);
                }
                b.t.notify(0);
                last_nudge = now;
            }
            continue;
        };
        let slot = (id / 3) as u16;
        if id % 3 != 0 || slot >= inflight {
            return Err(VirtioError::WrongUsedId);
        }
        let st = b.status_byte(slot);
        if st != S_OK {
            sprintln!("PROBE blk-bench FAIL status={} dev={}", st, index);
            return Ok(());
        }
        completed += 1;
        if issued < total {
            b.repost(slot, sectors.next());
            issued += 1;
            unpublished = true;
        }
        // Publish (and notify) once the completions seen so far are drained.
        if unpublished && b.q.used_idx() == b.q.last_used() {
            b.kick();
            unpublished = false;
        }
        last_progress = rdtsc();
        last_nudge = last_progress;
    }
    let cycles = rdtsc().wrapping_sub(start).max(1);
    let bytes = total * req;
    // Hundredths of MiB/s, integer only (no floats in ring 0 under PVM).
    let centi = bytes as u128 * khz as u128 * 1000 * 100 / cycles as u128 / (1 << 20);
    let iops = total as u128 * khz as u128 * 1000 / cycles as u128;
    let frac = (centi % 100) as u8;
    sprintln!(
        "PROBE blk-bench ok dev={} mode={} req_bytes={} inflight={} bytes={} requests={} tsc_cycles={} tsc_khz={} mib_per_s={}.{}{} iops={}",
        index,
        mode.name(),
        req,
        inflight,
        bytes,
        total,
        cycles,
        khz,
        centi / 100,
        frac / 10,
        frac % 10,
        iops
    );
    Ok(())
}
