//! The `vsock-*` commands: stream connections by hand over the driver in `vsock.rs`, with
//! credit flow control both ways (the probe advertises `BUF_ALLOC` and never has more than
//! that of a peer's data unconsumed; it sends no more than the peer's credit).
//!
//! Under PVM every ring-0 instruction of the probe is emulated (about 1 us), so nothing here
//! touches data byte by byte on the data path: echo and sink only copy (one `rep movs`) and
//! count, and the connect pattern is one block made once and stamped per block. The host
//! checks integrity (it compares what it sent with what came back, or with the pattern).

use super::vsock::*;
use super::{dma, fields, VirtioError};
use crate::cmdline::{as_text, parse_u64};
use crate::sprintln;
use crate::timer::Deadline;

const MAX_CONNS: usize = 80;
/// Receive buffer advertised per echo connection (it holds at most this much unsent).
const BUF_ALLOC: u32 = 64 << 10;
/// A credit update once this much was consumed since the peer last heard (echo).
const CREDIT_STEP: u32 = 16 << 10;
/// Sink and connect consume on arrival: a larger window (fewer round trips on a busy host).
const BIG_BUF_ALLOC: u32 = 2 << 20;
const BIG_CREDIT_STEP: u32 = 256 << 10;

/// The base block of `vsock-connect` connection `n`: `PAYLOAD` bytes of little-endian
/// xorshift64 words (shifts 13, 7, 17) from the seed `(n + 1) * 0x9e3779b97f4a7c15 | 1`.
/// Block `i` of the stream is the base block with its first 8 bytes replaced by `i`
/// (little-endian); the last block is cut to what is left. Host tests regenerate it.
fn base_block(n: u64, out: &mut [u8]) {
    let mut s = (n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for w in out.chunks_exact_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        w.copy_from_slice(&s.to_le_bytes());
    }
}

#[derive(Clone, Copy, Default)]
struct Conn {
    used: bool,
    local: u32,
    peer: u32,
    peer_buf: u32,
    peer_fwd: u32,
    tx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_sent: u32,
    /// Echo: bytes received and not yet sent back, at `pend`.
    pend: u64,
    pend_len: u32,
    bytes: u64,
    peer_shut_send: bool,
    we_shut: bool,
    /// What this connection advertises, and how often it says it consumed.
    buf_alloc: u32,
    step: u32,
}

impl Conn {
    fn credit(&self) -> u32 {
        self.peer_buf
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd))
    }

    fn update(&mut self, h: &Hdr) {
        self.peer_buf = h.buf_alloc;
        self.peer_fwd = h.fwd_cnt;
    }
}

fn send_ctl(d: &mut Dev, c: &mut Conn, op: u16, flags: u32) -> Result<(), VirtioError> {
    let mut h = d.hdr(op, c.local, c.peer);
    h.flags = flags;
    h.buf_alloc = c.buf_alloc;
    h.fwd_cnt = c.fwd_cnt;
    c.last_fwd_sent = c.fwd_cnt;
    d.send(&h, &[])
}

/// Sends as much of `data` as credit and one buffer allow; returns the bytes sent.
fn send_data(d: &mut Dev, c: &mut Conn, data: &[u8]) -> Result<usize, VirtioError> {
    let n = data.len().min(c.credit() as usize).min(PAYLOAD as usize);
    if n == 0 {
        return Ok(0);
    }
    let mut h = d.hdr(OP_RW, c.local, c.peer);
    h.buf_alloc = c.buf_alloc;
    h.fwd_cnt = c.fwd_cnt;
    c.last_fwd_sent = c.fwd_cnt;
    d.send(&h, &data[..n])?;
    c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
    Ok(n)
}

/// `n` received bytes were consumed: the peer hears of it every `CREDIT_STEP`.
fn consumed(d: &mut Dev, c: &mut Conn, n: u32) -> Result<(), VirtioError> {
    c.fwd_cnt = c.fwd_cnt.wrapping_add(n);
    if c.fwd_cnt.wrapping_sub(c.last_fwd_sent) >= c.step {
        send_ctl(d, c, OP_CREDIT_UPDATE, 0)?;
    }
    Ok(())
}

fn rst_to(d: &mut Dev, h: &Hdr) -> Result<(), VirtioError> {
    let r = d.hdr(OP_RST, h.dst_port, h.src_port);
    d.send(&r, &[])
}

pub fn run(name: &str, index: usize, arg: Option<&[u8]>) {
    let mut d = match Dev::open(index) {
        Ok(d) => d,
        Err(e) => {
            sprintln!("PROBE {} FAIL {} dev={}", name, e.reason(), index);
            return;
        }
    };
    let result = match name {
        "vsock-info" => {
            sprintln!(
                "PROBE vsock-info ok dev={} cid={} features={:#x}",
                index,
                d.cid,
                d.offered
            );
            Ok(())
        }
        "vsock-echo" => serve(&mut d, name, arg, false),
        "vsock-sink" => serve(&mut d, name, arg, true),
        "vsock-connect" => connect(&mut d, arg),
        "vsock-refused" => refused(&mut d, arg),
        "vsock-hostile" => super::vsock_hostile::hostile(&mut d, arg),
        _ => {
            sprintln!("PROBE {} FAIL unknown-command", name);
            Ok(())
        }
    };
    if let Err(e) = result {
        sprintln!("PROBE {} FAIL {} dev={}", name, e.reason(), index);
    }
    let _ = d.t.reset();
}

/// `vsock-echo:PORT:CONNS[:SECONDS]` / `vsock-sink:PORT:CONNS[:SECONDS]`: listens on PORT
/// until CONNS connections have ended (RST after a shutdown; SECONDS default 120). Echo
/// sends every byte back; sink counts them and, when the host shuts its side, answers
/// `<bytes>\n`. Prints `PROBE <cmd> ready port=`, one `PROBE vsock-conn` line
/// per connection, `PROBE vsock-event reset n=` per TRANSPORT_RESET (connections dropped),
/// then `PROBE <cmd> ok port= conns= bytes= resets= refused=`.
fn serve(d: &mut Dev, name: &str, arg: Option<&[u8]>, sink: bool) -> Result<(), VirtioError> {
    let (f, n) = fields::<3>(arg);
    let port = (n >= 1).then(|| parse_u64(f[0])).flatten();
    let want = (n >= 2).then(|| parse_u64(f[1])).flatten();
    let secs = if n >= 3 { parse_u64(f[2]) } else { Some(120) };
    let (Some(port), Some(want), Some(secs)) = (port, want, secs) else {
        sprintln!(
            "PROBE {} FAIL bad-argument usage={}:PORT:CONNS[:SECONDS]",
            name,
            name
        );
        return Ok(());
    };
    let port = port as u32;
    let mut t = [Conn::default(); MAX_CONNS];
    let pend =
        dma::alloc(u64::from(BUF_ALLOC) * MAX_CONNS as u64, 4096).ok_or(VirtioError::NoMemory)?;
    for (i, c) in t.iter_mut().enumerate() {
        c.pend = pend + u64::from(BUF_ALLOC) * i as u64;
    }
    let (mut done, mut total, mut resets, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let deadline = Deadline::after_us(secs.saturating_mul(1_000_000));
    sprintln!("PROBE {} ready port={} cid={}", name, port, d.cid);
    let mut polls = 0u32;
    while done < want {
        if let Some(ev) = d.event() {
            resets += 1;
            for c in t.iter_mut() {
                c.used = false;
            }
            sprintln!("PROBE vsock-event reset id={} n={}", ev, resets);
        }
        if let Some(rx) = d.recv() {
            let h = rx.hdr;
            let r = serve_packet(d, &mut t, &h, rx.payload, port, sink, &mut done, &mut total);
            d.recycle(rx.id);
            if let Some(refusal) = r? {
                refused += refusal;
            }
            continue;
        }
        // Echo: send back what waits, as credit allows; shut down once the peer did and
        // everything went back.
        for c in t.iter_mut().filter(|c| c.used) {
            if c.pend_len > 0 {
                // SAFETY: `pend` is this connection's arena buffer of BUF_ALLOC bytes.
                let data = unsafe { dma::bytes_mut(c.pend, c.pend_len as usize) };
                let sent = send_data(d, c, data)?;
                if sent > 0 {
                    data.copy_within(sent.., 0);
                    c.pend_len -= sent as u32;
                    consumed(d, c, sent as u32)?;
                }
            }
            if c.pend_len == 0 && c.peer_shut_send && !c.we_shut {
                c.we_shut = true;
                send_ctl(d, c, OP_SHUTDOWN, SHUT_RCV | SHUT_SEND)?;
            }
        }
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(1024) {
            if d.t.needs_reset() {
                return Err(VirtioError::NeedsReset);
            }
            if deadline.passed() {
                sprintln!("PROBE {} FAIL timeout done={} bytes={}", name, done, total);
                return Ok(());
            }
        }
    }
    sprintln!(
        "PROBE {} ok port={} conns={} bytes={} resets={} refused={}",
        name,
        port,
        done,
        total,
        resets,
        refused
    );
    Ok(())
}

/// One packet for a listening command; `Some(1)` when it refused a connection.
#[allow(clippy::too_many_arguments)]
fn serve_packet(
    d: &mut Dev,
    t: &mut [Conn; MAX_CONNS],
    h: &Hdr,
    payload: u64,
    port: u32,
    sink: bool,
    done: &mut u64,
    total: &mut u64,
) -> Result<Option<u64>, VirtioError> {
    if h.dst_cid != d.cid || h.type_ != TYPE_STREAM {
        return Ok(None);
    }
    let slot = t
        .iter()
        .position(|c| c.used && c.local == h.dst_port && c.peer == h.src_port);
    if h.op == OP_REQUEST {
        let free = t.iter().position(|c| !c.used);
        match (h.dst_port == port, slot, free) {
            (true, None, Some(i)) => {
                let pend = t[i].pend;
                t[i] = Conn {
                    used: true,
                    local: port,
                    peer: h.src_port,
                    pend,
                    buf_alloc: if sink { BIG_BUF_ALLOC } else { BUF_ALLOC },
                    step: if sink { BIG_CREDIT_STEP } else { CREDIT_STEP },
                    ..Conn::default()
                };
                t[i].update(h);
                send_ctl(d, &mut t[i], OP_RESPONSE, 0)?;
                return Ok(None);
            }
            _ => {
                rst_to(d, h)?;
                return Ok(Some(1));
            }
        }
    }
    let Some(i) = slot else {
        if h.op != OP_RST {
            rst_to(d, h)?;
        }
        return Ok(None);
    };
    let c = &mut t[i];
    c.update(h);
    match h.op {
        OP_RW => {
            let len = h.len;
            // SAFETY: the device wrote `len` (checked <= PAYLOAD) bytes into this rx buffer.
            let data = unsafe { dma::bytes_mut(payload, len as usize) };
            c.bytes += u64::from(len);
            *total += u64::from(len);
            if sink {
                consumed(d, c, len)?;
            } else if c.pend_len + len > BUF_ALLOC {
                // More than the credit we gave.
                sprintln!("PROBE vsock-conn FAIL credit-overrun peer={}", c.peer);
                c.used = false;
                rst_to(d, h)?;
            } else {
                // SAFETY: `pend` has BUF_ALLOC bytes; pend_len + len fits (checked).
                unsafe { dma::bytes_mut(c.pend + u64::from(c.pend_len), len as usize) }
                    .copy_from_slice(data);
                c.pend_len += len;
            }
        }
        OP_SHUTDOWN => {
            if h.flags & SHUT_SEND != 0 {
                c.peer_shut_send = true;
            }
            if sink && c.peer_shut_send && !c.we_shut {
                let mut line = [0u8; 40];
                let n = format_reply(&mut line, c.bytes);
                send_data(d, c, &line[..n])?;
                c.we_shut = true;
                send_ctl(d, c, OP_SHUTDOWN, SHUT_RCV | SHUT_SEND)?;
            }
        }
        OP_RST => {
            sprintln!(
                "PROBE vsock-conn port={} peer={} bytes={} clean={}",
                c.local,
                c.peer,
                c.bytes,
                c.we_shut as u8
            );
            c.used = false;
            *done += 1;
        }
        OP_CREDIT_REQUEST => send_ctl(d, c, OP_CREDIT_UPDATE, 0)?,
        OP_CREDIT_UPDATE => {}
        _ => {
            c.used = false;
            rst_to(d, h)?;
        }
    }
    Ok(None)
}

/// `<bytes>\n` into `out`; returns its length.
fn format_reply(out: &mut [u8; 40], bytes: u64) -> usize {
    let mut n = 0;
    let mut digits = [0u8; 20];
    let mut v = bytes;
    let mut k = 0;
    loop {
        digits[k] = b'0' + (v % 10) as u8;
        k += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while k > 0 {
        k -= 1;
        out[n] = digits[k];
        n += 1;
    }
    out[n] = b'\n';
    n + 1
}

/// `vsock-connect:PORT:BYTES[:CONNS]`: CONNS connections one after the other to host port
/// PORT, each sending BYTES of its pattern (see `base_block`) then shutting its side, and reading whatever
/// comes back until the host closes: `PROBE vsock-conn n= sent= received=` each, then `PROBE vsock-connect ok port= conns= sent= received=`.
/// `FAIL rst` when the host refused.
fn connect(d: &mut Dev, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<3>(arg);
    let port = (n >= 1).then(|| parse_u64(f[0])).flatten();
    let bytes = (n >= 2).then(|| parse_u64(f[1])).flatten();
    let conns = if n >= 3 { parse_u64(f[2]) } else { Some(1) };
    let (Some(port), Some(bytes), Some(conns)) = (port, bytes, conns) else {
        sprintln!("PROBE vsock-connect FAIL bad-argument usage=vsock-connect:PORT:BYTES[:CONNS]");
        return Ok(());
    };
    let scratch = dma::alloc(PAYLOAD, 4096).ok_or(VirtioError::NoMemory)?;
    // SAFETY: a fresh arena buffer of PAYLOAD bytes, only used here.
    let scratch = unsafe { dma::bytes_mut(scratch, PAYLOAD as usize) };
    let (mut all_sent, mut all_recv) = (0u64, 0u64);
    for k in 0..conns {
        let mut c = Conn {
            used: true,
            local: 49152 + (k % 16000) as u32,
            peer: port as u32,
            buf_alloc: BIG_BUF_ALLOC,
            step: BIG_CREDIT_STEP,
            ..Conn::default()
        };
        send_ctl(d, &mut c, OP_REQUEST, 0)?;
        base_block(k, scratch);
        d.prefill_tx(scratch);
        let mut sent = 0u64;
        let mut established = false;
        let mut shut_sent = false;
        let deadline = Deadline::after_us(120_000_000);
        let mut polls = 0u32;
        loop {
            if let Some(rx) = d.recv() {
                let h = rx.hdr;
                let ours = h.dst_cid == d.cid && h.dst_port == c.local && h.src_port == c.peer;
                if ours {
                    c.update(&h);
                }
                let op = if ours { h.op } else { 0 };
                match op {
                    OP_RESPONSE => established = true,
                    OP_RW => {
                        c.bytes += u64::from(h.len);
                        consumed(d, &mut c, h.len)?;
                    }
                    OP_SHUTDOWN => {
                        if shut_sent && !c.we_shut {
                            c.we_shut = true;
                            send_ctl(d, &mut c, OP_SHUTDOWN, SHUT_RCV | SHUT_SEND)?;
                        }
                        c.peer_shut_send = true;
                    }
                    OP_CREDIT_REQUEST => send_ctl(d, &mut c, OP_CREDIT_UPDATE, 0)?,
                    _ => {}
                }
                d.recycle(rx.id);
                if op == OP_RST {
                    if !established {
                        sprintln!("PROBE vsock-connect FAIL rst port={} n={}", port, k);
                        return Ok(());
                    }
                    break;
                }
                continue;
            }
            if established && sent < bytes {
                // Whole blocks only (the stream's layout), when the credit allows one.
                let want = ((bytes - sent) as usize).min(PAYLOAD as usize);
                if c.credit() as usize >= want {
                    // The block is in every tx buffer already: only its stamp is written.
                    let mut h = d.hdr(OP_RW, c.local, c.peer);
                    h.buf_alloc = c.buf_alloc;
                    h.fwd_cnt = c.fwd_cnt;
                    c.last_fwd_sent = c.fwd_cnt;
                    d.send_prefilled(&h, want, sent / PAYLOAD)?;
                    c.tx_cnt = c.tx_cnt.wrapping_add(want as u32);
                    sent += want as u64;
                }
            }
            if established && sent == bytes && !shut_sent {
                shut_sent = true;
                let flags = if c.peer_shut_send {
                    c.we_shut = true;
                    SHUT_RCV | SHUT_SEND
                } else {
                    SHUT_SEND
                };
                send_ctl(d, &mut c, OP_SHUTDOWN, flags)?;
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(1024) {
                if d.t.needs_reset() {
                    return Err(VirtioError::NeedsReset);
                }
                if deadline.passed() {
                    sprintln!(
                        "PROBE vsock-connect FAIL timeout n={} established={} sent={} received={}",
                        k,
                        established as u8,
                        sent,
                        c.bytes
                    );
                    return Ok(());
                }
            }
        }
        sprintln!(
            "PROBE vsock-conn n={} sent={} received={}",
            k,
            sent,
            c.bytes
        );
        all_sent += sent;
        all_recv += c.bytes;
    }
    sprintln!(
        "PROBE vsock-connect ok port={} conns={} sent={} received={}",
        port,
        conns,
        all_sent,
        all_recv
    );
    Ok(())
}

/// Waits up to `us` for an RST addressed to guest port `local`; other packets are dropped.
pub fn wait_rst(d: &mut Dev, local: u32, us: u64) -> Result<bool, VirtioError> {
    let deadline = Deadline::after_us(us);
    loop {
        if let Some(rx) = d.recv() {
            let hit = rx.hdr.op == OP_RST && rx.hdr.dst_port == local;
            d.recycle(rx.id);
            if hit {
                return Ok(true);
            }
            continue;
        }
        if d.t.needs_reset() {
            return Err(VirtioError::NeedsReset);
        }
        if deadline.passed() {
            return Ok(false);
        }
    }
}

/// `vsock-refused:PORT`: a connection to host port PORT that nobody serves gets RST:
/// `PROBE vsock-refused ok port= outcome=rst` (FAIL outcome=response|timeout).
fn refused(d: &mut Dev, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let Some(port) = arg.and_then(parse_u64) else {
        sprintln!("PROBE vsock-refused FAIL bad-argument usage=vsock-refused:PORT");
        return Ok(());
    };
    let mut c = Conn {
        local: 40000,
        peer: port as u32,
        buf_alloc: BUF_ALLOC,
        ..Conn::default()
    };
    send_ctl(d, &mut c, OP_REQUEST, 0)?;
    if wait_rst(d, c.local, 5_000_000)? {
        sprintln!("PROBE vsock-refused ok port={} outcome=rst", port);
    } else {
        sprintln!("PROBE vsock-refused FAIL outcome=timeout port={}", port);
    }
    let _ = as_text;
    Ok(())
}
