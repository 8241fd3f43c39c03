//! `blk-hostile:<kind>`: post a malformed request (or queue setup) on
//! purpose, see how the device copes, then check a good request works.
//!
//! Request kinds: the device must answer (a used entry, with or without a
//! status byte) or set DEVICE_NEEDS_RESET (then we reset, re-initialise and
//! try again). Setup kinds (`qsize-npot`, `ring-oob`): QueueReady must read
//! back 0; then the queue is set up properly.

use super::blk::{self, Blk, SECTOR, STATUS_UNSET, T_IN};
use super::mmio::{Transport, DEVICE_ID_BLOCK};
use super::queue::{VirtQueue, DESC_F_NEXT, DESC_F_WRITE};
use super::{dma, find, VirtioError};
use crate::cmdline::as_text;
use crate::sprintln;

/// How long a malformed request may take to be answered.
const ANSWER_US: u64 = 3_000_000;
/// A request type no virtio-blk version defines.
const BAD_TYPE: u32 = 0x7eed;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    DescOob,
    Loop,
    WoHeader,
    ZeroLen,
    PastEnd,
    BadType,
    HeadOob,
    AvailJump,
    QsizeNpot,
    RingOob,
}

fn parse_kind(arg: &[u8]) -> Option<Kind> {
    Some(match arg {
        b"desc-oob" => Kind::DescOob,
        b"loop" => Kind::Loop,
        b"wo-header" => Kind::WoHeader,
        b"zero-len" => Kind::ZeroLen,
        b"past-end" => Kind::PastEnd,
        b"bad-type" => Kind::BadType,
        b"head-oob" => Kind::HeadOob,
        b"avail-jump" => Kind::AvailJump,
        b"qsize-npot" => Kind::QsizeNpot,
        b"ring-oob" => Kind::RingOob,
        _ => return None,
    })
}

pub fn blk(index: usize, arg: Option<&[u8]>) {
    let Some(kind) = arg.and_then(parse_kind) else {
        sprintln!(
            "PROBE blk-hostile FAIL bad-argument kinds=desc-oob,loop,wo-header,zero-len,past-end,bad-type,head-oob,avail-jump,qsize-npot,ring-oob"
        );
        return;
    };
    let name = as_text(arg.unwrap_or(b""));
    let result = match kind {
        Kind::QsizeNpot | Kind::RingOob => setup_kind(index, kind, name),
        _ => request_kind(index, kind, name),
    };
    if let Err((e, status)) = result {
        sprintln!(
            "PROBE blk-hostile FAIL kind={} {} dev={} device_status={:#x}",
            name,
            e.reason(),
            index,
            status
        );
    }
}

type HostileResult = Result<(), (VirtioError, u32)>;

fn request_kind(index: usize, kind: Kind, name: &str) -> HostileResult {
    let mut b = Blk::open(index).map_err(|e| (e, 0))?;
    let fail = |b: &Blk, e: VirtioError| (e, b.t.status());
    let buf = dma::alloc(SECTOR, 512).ok_or_else(|| fail(&b, VirtioError::NoMemory))?;
    let good = Some((buf, SECTOR as u32, true));
    match kind {
        Kind::DescOob => b.prepare(0, T_IN, 0, Some((dma::outside_memory(), 512, true))),
        Kind::Loop => {
            b.prepare(0, T_IN, 0, good);
            // Status descriptor chains back to the header.
            b.q.set_desc(2, b.status_addr(0), 1, DESC_F_WRITE | DESC_F_NEXT, 0);
        }
        Kind::WoHeader => {
            b.prepare(0, T_IN, 0, good);
            b.q.set_desc(0, b.header_addr(0), 16, DESC_F_NEXT | DESC_F_WRITE, 1);
        }
        Kind::ZeroLen => b.prepare(0, T_IN, 0, Some((buf, 0, true))),
        Kind::PastEnd => b.prepare(0, T_IN, b.capacity, good),
        Kind::BadType => b.prepare(0, BAD_TYPE, 0, good),
        Kind::HeadOob | Kind::AvailJump => b.prepare(0, T_IN, 0, good),
        Kind::QsizeNpot | Kind::RingOob => {}
    }
    match kind {
        // A head index past the descriptor table.
        Kind::HeadOob => b.q.push(b.q.size + 7),
        _ => b.q.push(0),
    }
    if kind == Kind::AvailJump {
        // avail.idx claims far more new entries than the queue holds.
        b.q.publish_raw(b.q.size.wrapping_mul(2).wrapping_add(3));
        if b.q.device_wants_notify() {
            b.t.notify(0);
        }
    } else {
        b.kick();
    }
    let (status, outcome) = match b.wait_used(ANSWER_US) {
        Ok(_) => (b.status_byte(0), "answered"),
        Err(VirtioError::NeedsReset) => (b.status_byte(0), "needs-reset"),
        Err(VirtioError::Timeout) if b.t.needs_reset() => (b.status_byte(0), "needs-reset"),
        Err(VirtioError::Timeout) => {
            let st = b.t.status();
            b.close();
            return Err((VirtioError::Timeout, st));
        }
        Err(e) => return Err(fail(&b, e)),
    };
    if outcome == "needs-reset" {
        b.reinit().map_err(|e| fail(&b, e))?;
    }
    let then = blk::good_request(&mut b);
    report(name, status, outcome, then, &b);
    b.close();
    Ok(())
}

fn report(name: &str, status: u8, outcome: &str, then: Result<u8, VirtioError>, b: &Blk) {
    let mut st_text = [0u8; 4];
    let st = if status == STATUS_UNSET {
        "none"
    } else {
        decimal(status, &mut st_text)
    };
    match then {
        Ok(0) => sprintln!(
            "PROBE blk-hostile ok kind={} status={} outcome={} then=ok",
            name,
            st,
            outcome
        ),
        Ok(s) => sprintln!(
            "PROBE blk-hostile FAIL kind={} status={} outcome={} then=status-{}",
            name,
            st,
            outcome,
            s
        ),
        Err(e) => sprintln!(
            "PROBE blk-hostile FAIL kind={} status={} outcome={} then={} device_status={:#x}",
            name,
            st,
            outcome,
            e.reason(),
            b.t.status()
        ),
    }
}

fn decimal(v: u8, buf: &mut [u8; 4]) -> &str {
    let mut n = 0;
    if v >= 100 {
        buf[n] = b'0' + v / 100;
        n += 1;
    }
    if v >= 10 {
        buf[n] = b'0' + v / 10 % 10;
        n += 1;
    }
    buf[n] = b'0' + v % 10;
    as_text(&buf[..n + 1])
}

fn setup_kind(index: usize, kind: Kind, name: &str) -> HostileResult {
    let dev = find(DEVICE_ID_BLOCK, index).ok_or((VirtioError::NoDevice, 0))?;
    let t = Transport { base: dev.base };
    let fail = |e: VirtioError| (e, t.status());
    let negotiated = Blk::negotiate_only(&t).map_err(fail)?;
    let max = t.queue_max(0);
    if max < 3 {
        return Err(fail(VirtioError::QueueMaxZero));
    }
    let size = max.min(256);
    let q = VirtQueue::new(0, size).ok_or_else(|| fail(VirtioError::NoMemory))?;
    let accepted = match kind {
        // size - 1 of a power of two >= 4 is odd, so not a power of two.
        Kind::QsizeNpot => t.program_queue(0, size - 1, q.desc, q.avail, q.used),
        _ => t.program_queue(0, size, dma::outside_memory(), q.avail, q.used),
    };
    if accepted {
        sprintln!(
            "PROBE blk-hostile FAIL kind={} queue-ready-accepted dev={}",
            name,
            index
        );
        let _ = t.reset();
        return Ok(());
    }
    if t.needs_reset() {
        let _ = t.reset();
        return Err(fail(VirtioError::NeedsReset));
    }
    // The refused queue must still be configurable the proper way.
    let slots = size / 3;
    let hdrs = dma::alloc(16 * slots as u64, 16).ok_or_else(|| fail(VirtioError::NoMemory))?;
    let stats = dma::alloc(slots as u64, 8).ok_or_else(|| fail(VirtioError::NoMemory))?;
    if !t.program_queue(0, size, q.desc, q.avail, q.used) {
        return Err(fail(VirtioError::QueueRefused));
    }
    t.driver_ok().map_err(fail)?;
    let mut b = Blk::from_parts(dev, negotiated, (q, slots, hdrs, stats));
    let then = blk::good_request(&mut b);
    report(name, STATUS_UNSET, "refused", then, &b);
    b.close();
    Ok(())
}
