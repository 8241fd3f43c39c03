//! `vsock-hostile:KIND`: malformed packets from the guest. Each is sent, the answer (an RST
//! to the named guest port, or nothing) awaited, then a REQUEST to an unserved port must
//! still be answered with RST (the device kept working):
//! `PROBE vsock-hostile ok kind= answer=rst|none rsts= then=ok`.
//!
//! | kind | packet |
//! |---|---|
//! | `short` | a 20-byte descriptor: no whole header |
//! | `src-cid` | REQUEST from another CID (a guest pretending to be someone else) |
//! | `dst-cid` | REQUEST to CID 7 instead of the host |
//! | `type` | REQUEST of type 2 (seqpacket) |
//! | `op` | op 99 |
//! | `len` | RW saying 4096 payload bytes in a 60-byte descriptor |
//! | `big` | RW saying 1 MiB of payload |
//! | `rw-unknown` | RW for a connection that does not exist |
//! | `flood:N` | N REQUESTs to an unserved port, sent without reading answers |

use super::vsock::*;
use super::vsock_cmds::wait_rst;
use super::VirtioError;
use crate::cmdline::{as_text, parse_u64};
use crate::sprintln;
use crate::timer::Deadline;

const PORT: u32 = 45000;
/// An unserved host port (tests keep nothing listening there).
const NOBODY: u32 = 9;

pub fn hostile(d: &mut Dev, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let arg = arg.unwrap_or(b"");
    let (kind, n) = match arg.iter().position(|&b| b == b':') {
        Some(i) => (as_text(&arg[..i]), parse_u64(&arg[i + 1..])),
        None => (as_text(arg), None),
    };
    let mut h = d.hdr(OP_REQUEST, PORT, NOBODY);
    h.buf_alloc = 4096;
    let mut desc_len = HDR as u32;
    let mut expect_rst = true;
    match kind {
        "short" => {
            desc_len = 20;
            expect_rst = false;
        }
        "src-cid" => {
            h.src_cid = d.cid + 1;
            expect_rst = false;
        }
        "dst-cid" => {
            h.dst_cid = 7;
            expect_rst = false;
        }
        "type" => h.type_ = 2,
        "op" => h.op = 99,
        "len" => {
            h.op = OP_RW;
            h.len = 4096;
            desc_len = HDR as u32 + 16;
        }
        "big" => {
            h.op = OP_RW;
            h.len = 1 << 20;
            desc_len = HDR as u32 + 16;
        }
        "rw-unknown" => {
            h.op = OP_RW;
            h.len = 16;
            desc_len = HDR as u32 + 16;
        }
        "flood" => return flood(d, n.unwrap_or(2000)),
        _ => {
            sprintln!(
                "PROBE vsock-hostile FAIL bad-argument kinds=short,src-cid,dst-cid,type,op,len,big,rw-unknown,flood:N"
            );
            return Ok(());
        }
    }
    d.send_raw(&h, desc_len)?;
    let got = wait_rst(d, PORT, if expect_rst { 3_000_000 } else { 500_000 })?;
    if got != expect_rst {
        sprintln!(
            "PROBE vsock-hostile FAIL kind={} answer={}",
            kind,
            if got { "rst" } else { "none" }
        );
        return Ok(());
    }
    then_ok(d, kind, if got { "rst" } else { "none" }, u64::from(got))
}

/// The device still answers: a REQUEST to an unserved port gets RST.
fn then_ok(d: &mut Dev, kind: &str, answer: &str, rsts: u64) -> Result<(), VirtioError> {
    let mut r = d.hdr(OP_REQUEST, PORT + 1, NOBODY);
    r.buf_alloc = 4096;
    d.send(&r, &[])?;
    if wait_rst(d, PORT + 1, 5_000_000)? {
        sprintln!(
            "PROBE vsock-hostile ok kind={} answer={} rsts={} then=ok",
            kind,
            answer,
            rsts
        );
    } else {
        sprintln!("PROBE vsock-hostile FAIL kind={} then=timeout", kind);
    }
    Ok(())
}

/// N REQUESTs from distinct ports without reading; then counts the RSTs that come back
/// within a second of quiet (the device bounds what it holds; the rest is dropped).
fn flood(d: &mut Dev, n: u64) -> Result<(), VirtioError> {
    for i in 0..n {
        let mut r = d.hdr(OP_REQUEST, 20000 + (i % 20000) as u32, NOBODY);
        r.buf_alloc = 4096;
        d.send(&r, &[])?;
    }
    let mut rsts = 0u64;
    let mut quiet = Deadline::after_us(1_000_000);
    while !quiet.passed() {
        if let Some(rx) = d.recv() {
            if rx.hdr.op == OP_RST {
                rsts += 1;
            }
            d.recycle(rx.id);
            quiet = Deadline::after_us(1_000_000);
        }
    }
    then_ok(d, "flood", "rst", rsts)
}
