//! `net-hostile:<kind>`: malformed tx / rx descriptors or queue set-ups on
//! virtio-net, then a check that a good frame still goes out.
//!
//! tx kinds (`desc-oob`, `loop`, `wo-tx`, `zero-len`, `short`, `head-oob`,
//! `avail-jump`): the device must return the chain in the tx used ring or
//! set DEVICE_NEEDS_RESET. rx kinds (`rx-ro`, `rx-oob`): the bad buffer is
//! first in the rx ring, good ones follow; the probe then sends an ARP
//! request (to `probe.gw`, else to itself as a gratuitous ARP) so that a
//! frame arrives, and the device must return the bad buffer or set
//! DEVICE_NEEDS_RESET. Setup kinds (`qsize-npot`, `ring-oob`, on the tx
//! queue): QueueReady must read back 0. Afterwards (re-initialised if
//! needed) a good frame must complete on tx: `then=ok`.

use super::mmio::{Transport, DEVICE_ID_NET};
use super::net::{Net, BUF_LEN, HDR_LEN};
use super::net_cmds::ip_config;
use super::netstack as ns;
use super::queue::{VirtQueue, DESC_F_NEXT, DESC_F_WRITE};
use super::{dma, find, VirtioError};
use crate::cmdline::as_text;
use crate::sprintln;
use crate::timer::Deadline;

const ANSWER_US: u64 = 3_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    DescOob,
    Loop,
    WoTx,
    ZeroLen,
    Short,
    HeadOob,
    AvailJump,
    RxRo,
    RxOob,
    QsizeNpot,
    RingOob,
}

fn parse_kind(a: &[u8]) -> Option<Kind> {
    Some(match a {
        b"desc-oob" => Kind::DescOob,
        b"loop" => Kind::Loop,
        b"wo-tx" => Kind::WoTx,
        b"zero-len" => Kind::ZeroLen,
        b"short" => Kind::Short,
        b"head-oob" => Kind::HeadOob,
        b"avail-jump" => Kind::AvailJump,
        b"rx-ro" => Kind::RxRo,
        b"rx-oob" => Kind::RxOob,
        b"qsize-npot" => Kind::QsizeNpot,
        b"ring-oob" => Kind::RingOob,
        _ => return None,
    })
}

pub fn run(index: usize, arg: Option<&[u8]>) {
    let Some(kind) = arg.and_then(parse_kind) else {
        sprintln!("PROBE net-hostile FAIL bad-argument kinds=desc-oob,loop,wo-tx,zero-len,short,head-oob,avail-jump,rx-ro,rx-oob,qsize-npot,ring-oob");
        return;
    };
    let name = as_text(arg.unwrap_or(b""));
    let r = match kind {
        Kind::QsizeNpot | Kind::RingOob => setup_kind(index, kind, name),
        Kind::RxRo | Kind::RxOob => rx_kind(index, kind, name),
        _ => tx_kind(index, kind, name),
    };
    if let Err((e, st)) = r {
        sprintln!(
            "PROBE net-hostile FAIL kind={} {} dev={} device_status={:#x}",
            name,
            e.reason(),
            index,
            st
        );
    }
}

type HostileResult = Result<(), (VirtioError, u32)>;

/// Polls `q` for a used entry (any head), DEVICE_NEEDS_RESET or the timeout.
fn wait_used(q: &mut VirtQueue, t: &Transport) -> Result<&'static str, VirtioError> {
    let deadline = Deadline::after_us(ANSWER_US);
    let mut polls = 0u32;
    loop {
        if q.pop_used().is_some() {
            return Ok("answered");
        }
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(256) {
            if t.needs_reset() {
                return Ok("needs-reset");
            }
            if deadline.passed() {
                return Err(VirtioError::Timeout);
            }
        }
    }
}

/// A broadcast ARP request from us; returns whether the tx buffer completed.
fn good_frame(n: &mut Net) -> Result<(), VirtioError> {
    let (mac, ip) = (n.mac, ip_config().map_or([0; 4], |c| c.0));
    let target = ip_config().and_then(|c| c.2).unwrap_or(ip);
    let i = n.tx_slot(ANSWER_US)?;
    // SAFETY: tx buffer `i` is ours until queued.
    let fr = unsafe { dma::bytes_mut(n.tx_buf(i) + HDR_LEN, 60) };
    let len = ns::arp(fr, 1, mac, ip, [0; 6], target) as u64;
    n.queue_tx(i, len);
    n.kick_tx();
    let deadline = Deadline::after_us(ANSWER_US);
    while n.tx.outstanding() > 0 {
        n.reclaim_tx();
        if n.t.needs_reset() {
            return Err(VirtioError::NeedsReset);
        }
        if deadline.passed() {
            return Err(VirtioError::Timeout);
        }
    }
    Ok(())
}

fn report(name: &str, outcome: &str, then: Result<(), VirtioError>, n: &Net) {
    match then {
        Ok(()) => sprintln!(
            "PROBE net-hostile ok kind={} outcome={} then=ok",
            name,
            outcome
        ),
        Err(e) => sprintln!(
            "PROBE net-hostile FAIL kind={} outcome={} then={} device_status={:#x}",
            name,
            outcome,
            e.reason(),
            n.t.status()
        ),
    }
}

fn finish(index: usize, name: &str, outcome: &'static str, mut n: Net) -> HostileResult {
    if outcome == "needs-reset" {
        n.close();
        n = Net::open(index).map_err(|e| (e, 0))?;
    }
    let then = good_frame(&mut n);
    report(name, outcome, then, &n);
    n.close();
    Ok(())
}

fn tx_kind(index: usize, kind: Kind, name: &str) -> HostileResult {
    let mut n = Net::open(index).map_err(|e| (e, 0))?;
    let fail = |n: &Net, e: VirtioError| (e, n.t.status());
    let a = n.tx_slot(ANSWER_US).map_err(|e| fail(&n, e))?;
    let buf = n.tx_buf(a);
    // A plausible frame in the buffer, so only the descriptor is wrong.
    dma::write::<[u8; 64]>(buf, [0; 64]);
    let frame_len = (HDR_LEN + 60) as u32;
    match kind {
        Kind::DescOob => n.tx.set_desc(a, dma::outside_memory(), frame_len, 0, 0),
        Kind::Loop => {
            let b = n.tx_slot(ANSWER_US).map_err(|e| fail(&n, e))?;
            n.tx.set_desc(a, buf, frame_len, DESC_F_NEXT, b);
            n.tx.set_desc(b, n.tx_buf(b), 16, DESC_F_NEXT, a);
        }
        Kind::WoTx => n.tx.set_desc(a, buf, frame_len, DESC_F_WRITE, 0),
        Kind::ZeroLen => n.tx.set_desc(a, buf, 0, 0, 0),
        Kind::Short => n.tx.set_desc(a, buf, 4, 0, 0),
        _ => n.tx.set_desc(a, buf, frame_len, 0, 0),
    }
    if kind == Kind::HeadOob {
        n.tx.push(n.tx.size + 7);
    } else {
        n.tx.push(a);
    }
    if kind == Kind::AvailJump {
        n.tx.publish_raw(n.tx.size.wrapping_mul(2).wrapping_add(3));
        n.t.notify(1);
    } else {
        n.kick_tx();
    }
    let outcome = match wait_used(&mut n.tx, &n.t) {
        Ok(o) => o,
        Err(e) => {
            let st = n.t.status();
            n.close();
            return Err((e, st));
        }
    };
    // Descriptor `a` back to its normal shape for reuse (a looped partner stays out).
    n.tx.set_desc(a, buf, BUF_LEN as u32, 0, 0);
    finish(index, name, outcome, n)
}

fn rx_kind(index: usize, kind: Kind, name: &str) -> HostileResult {
    let mut n = Net::open_with(index, false).map_err(|e| (e, 0))?;
    match kind {
        Kind::RxRo => n.rx.set_desc(0, n.rx_buf(0), BUF_LEN as u32, 0, 0),
        _ => {
            n.rx.set_desc(0, dma::outside_memory(), BUF_LEN as u32, DESC_F_WRITE, 0)
        }
    }
    n.rx.push(0);
    for i in 1..n.rx_count {
        n.rx.set_desc(i, n.rx_buf(i), BUF_LEN as u32, DESC_F_WRITE, 0);
        n.rx.push(i);
    }
    n.rx.publish();
    n.t.notify(0);
    // Make something arrive (the reply to our ARP request).
    let sent = good_frame(&mut n);
    let outcome = match sent.and_then(|()| wait_used(&mut n.rx, &n.t)) {
        Err(VirtioError::NeedsReset) => "needs-reset",
        Ok(o) => o,
        Err(e) => {
            let st = n.t.status();
            n.close();
            return Err((e, st));
        }
    };
    finish(index, name, outcome, n)
}

fn setup_kind(index: usize, kind: Kind, name: &str) -> HostileResult {
    let dev = find(DEVICE_ID_NET, index).ok_or((VirtioError::NoDevice, 0))?;
    let t = Transport { base: dev.base };
    let fail = |e: VirtioError| (e, t.status());
    let offered = t.begin().map_err(fail)?;
    t.negotiate(offered, 0).map_err(fail)?;
    let max = t.queue_max(1);
    if max < 4 {
        return Err(fail(VirtioError::QueueMaxZero));
    }
    let size = max.min(256);
    let q = VirtQueue::new(1, size).ok_or_else(|| fail(VirtioError::NoMemory))?;
    let accepted = match kind {
        Kind::QsizeNpot => t.program_queue(1, size - 1, q.desc, q.avail, q.used),
        _ => t.program_queue(1, size, q.desc, dma::outside_memory(), q.used),
    };
    let needs_reset = t.needs_reset();
    let _ = t.reset();
    if accepted {
        sprintln!(
            "PROBE net-hostile FAIL kind={} queue-ready-accepted dev={}",
            name,
            index
        );
        return Ok(());
    }
    if needs_reset {
        return Err((VirtioError::NeedsReset, 0));
    }
    // A fresh, proper initialisation must work after the refusal.
    let n = Net::open(index).map_err(|e| (e, 0))?;
    finish(index, name, "refused", n)
}
