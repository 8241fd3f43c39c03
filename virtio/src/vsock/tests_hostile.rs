//! A hostile guest: bad headers, wrong CIDs, lengths beyond the buffer, credit lies, packets
//! for unknown connections, REQUEST floods. The device counts each, answers RST where a
//! connection is named, and other connections keep working.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::Write;

use super::conn::TX_BUF_SIZE;
use super::packet::{Op, MAX_PAYLOAD};
use super::tests::{hdr, read_n, Harness, CID};
use super::MAX_CONNECTIONS;

/// After each hostile case: a good connection still carries data both ways.
fn still_works(h: &mut Harness, gport: u32, hport: u32) {
    let l = h.host_listen(hport);
    let mut s = h.guest_connect(gport, hport, &l);
    h.send(hdr(Op::Rw, gport, hport, 3), b"abc");
    assert_eq!(read_n(&mut s, 3), b"abc");
    s.write_all(b"xyz").unwrap();
    h.run_wait(100);
    let p = h.recv();
    assert_eq!(
        p.last().map(|p| p.1.clone()),
        Some(b"xyz".to_vec()),
        "{p:?}"
    );
}

#[test]
fn short_headers_and_wrong_direction_chains_are_counted() {
    let mut h = Harness::new("hshort");
    // 20 bytes of header only.
    h.send_chain(&[(0x80_0000, 20, 0)]);
    // A device-writable tx descriptor.
    h.send_chain(&[(0x80_0000, 44, 2)]);
    // Outside guest memory.
    h.send_chain(&[(0x4000_0000, 44, 0)]);
    assert_eq!(h.metrics().invalid_chains, 3);
    assert!(h.recv().is_empty());
    // An rx buffer the device may not write, and one too short for a header.
    h.give_rx_chain(&[(0x60_0000, 4096, 0)]);
    h.give_rx_chain(&[(0x60_0000, 10, 2)]);
    h.give_rx(8);
    h.send(hdr(Op::Request, 1, 99, 0), &[]);
    let p = h.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0.op, Op::Rst as u16);
    assert_eq!(h.metrics().invalid_chains, 5);
    still_works(&mut h, 2, 100);
}

#[test]
fn wrong_cids_type_op_and_lengths_are_refused_and_counted() {
    let mut h = Harness::new("hhdr");
    h.give_rx(32);
    let l = h.host_listen(200);
    let mut victim = h.guest_connect(10, 200, &l);
    // Wrong source CID (pretending to be another guest) and wrong destination: dropped,
    // no answer, the connection is untouched.
    let mut x = hdr(Op::Rw, 10, 200, 1);
    x.src_cid = CID + 1;
    h.send(x, b"!");
    let mut x = hdr(Op::Rw, 10, 200, 1);
    x.dst_cid = 7;
    h.send(x, b"!");
    assert!(h.recv().is_empty());
    assert_eq!(h.metrics().invalid_packets, 2);
    assert_eq!(h.dev().connection_count(), 1);
    // Unknown op, a datagram, and payload on a control op, for unknown connections: RST.
    let mut x = hdr(Op::Rw, 11, 200, 0);
    x.op = 42;
    h.send(x, &[]);
    let mut x = hdr(Op::Request, 12, 200, 0);
    x.type_ = 2;
    h.send(x, &[]);
    h.send(hdr(Op::CreditUpdate, 13, 200, 4), b"zzzz");
    let p = h.recv();
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p.iter().all(|p| p.0.op == Op::Rst as u16));
    // A length beyond the chain, and one beyond the payload limit, on the live connection:
    // its stream cannot go on, so it is reset.
    h.send(hdr(Op::Rw, 10, 200, 4096), b"only a few bytes");
    let p = h.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0.op, Op::Rst as u16);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (200, 10));
    victim
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut victim, &mut b).unwrap(), 0);
    let mut big = hdr(Op::Rw, 14, 200, MAX_PAYLOAD + 1);
    big.len = MAX_PAYLOAD + 1;
    h.send(big, &[]);
    let p = h.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0.op, Op::Rst as u16);
    let m = h.metrics();
    assert!(m.invalid_packets >= 7, "{m:?}");
    drop(l);
    still_works(&mut h, 20, 201);
}

#[test]
fn packets_for_unknown_connections_get_rst_and_rst_is_never_answered() {
    let mut h = Harness::new("hunk");
    h.give_rx(8);
    h.send(hdr(Op::Rw, 5, 6, 2), b"hi");
    h.send(hdr(Op::Response, 5, 6, 0), &[]);
    h.send(hdr(Op::Shutdown, 5, 6, 0), &[]);
    h.send(hdr(Op::Rst, 5, 6, 0), &[]);
    let p = h.recv();
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p.iter().all(|p| p.0.op == Op::Rst as u16));
    assert_eq!(h.metrics().unknown_conn_packets, 3);
    still_works(&mut h, 7, 8);
}

#[test]
fn credit_lies_cannot_make_xenia_buffer_or_overrun() {
    let mut h = Harness::new("hlie");
    h.give_rx(64);
    let l = h.host_listen(300);
    let mut s = h.guest_connect(30, 300, &l);
    // The guest claims an enormous buffer: each packet is still at most one rx buffer.
    let mut lie = hdr(Op::CreditUpdate, 30, 300, 0);
    lie.buf_alloc = u32::MAX;
    h.send(lie, &[]);
    s.write_all(&vec![5u8; 100_000]).unwrap();
    h.run_wait(100);
    let p = h.recv();
    assert!(p.iter().all(|p| p.1.len() <= 4096));
    // The guest claims it consumed more than it was sent: no credit, nothing more read.
    let mut lie = hdr(Op::CreditUpdate, 30, 300, 0);
    lie.buf_alloc = 4096;
    lie.fwd_cnt = u32::MAX / 2;
    h.send(lie, &[]);
    s.write_all(b"more").unwrap();
    h.run_wait(50);
    assert!(h.recv().iter().all(|p| p.0.op != Op::Rw as u16));
    // The guest sends more than the credit it was given while the host reads nothing:
    // reset, never buffered beyond buf_alloc.
    let chunk = vec![1u8; 65536];
    let mut sent = 0usize;
    while sent <= 4 * TX_BUF_SIZE as usize && h.metrics().credit_violations == 0 {
        h.send(hdr(Op::Rw, 30, 300, chunk.len() as u32), &chunk);
        sent += chunk.len();
        assert!(h
            .dev()
            .conns
            .values()
            .all(|c| c.guest_bytes_buffered() <= TX_BUF_SIZE as usize));
    }
    assert_eq!(h.metrics().credit_violations, 1);
    assert!(h.recv().iter().any(|p| p.0.op == Op::Rst as u16));
    assert_eq!(h.dev().connection_count(), 0);
    still_works(&mut h, 31, 301);
}

#[test]
fn request_floods_are_bounded_and_others_keep_working() {
    let mut h = Harness::new("hflood");
    // No rx buffers: every RST waits; past the bound they are dropped and counted.
    for i in 0..1200u32 {
        h.send(hdr(Op::Request, 40_000 + i, 9, 0), &[]);
    }
    let m = h.metrics();
    assert_eq!(m.connect_fails, 1200);
    assert_eq!(m.rsts_dropped, 1200 - super::MAX_QUEUED_RSTS as u64);
    h.give_rx(200);
    assert_eq!(h.recv().len(), 200);
    // Drain the rest.
    for _ in 0..5 {
        h.give_rx(200);
        h.recv();
    }
    // A flood to a listening port fills the connection table, then is refused.
    let _l = h.host_listen(9);
    h.give_rx(200);
    for i in 0..(MAX_CONNECTIONS as u32 + 20) {
        h.send(hdr(Op::Request, 50_000 + i, 9, 0), &[]);
        if i % 150 == 0 {
            h.recv();
            h.give_rx(200);
        }
    }
    assert_eq!(
        h.dev().connection_count(),
        MAX_CONNECTIONS,
        "{:?}",
        h.metrics()
    );
    assert_eq!(h.metrics().conn_limit_refusals, 20);
    // Host connections are refused too at the limit (the host sees its socket close).
    let mut hs = std::os::unix::net::UnixStream::connect(&h.uds).unwrap();
    h.run_wait(100);
    hs.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut hs, &mut b).unwrap(), 0);
    // The guest resets them all; a new connection works.
    for i in 0..MAX_CONNECTIONS as u32 {
        h.send(hdr(Op::Rst, 50_000 + i, 9, 0), &[]);
    }
    assert_eq!(h.dev().connection_count(), 0);
    h.recv();
    h.give_rx(32);
    still_works(&mut h, 60_000, 10);
}

#[test]
fn a_response_out_of_turn_resets_the_connection() {
    let mut h = Harness::new("hresp");
    h.give_rx(8);
    let l = h.host_listen(400);
    let _s = h.guest_connect(40, 400, &l);
    h.send(hdr(Op::Response, 40, 400, 0), &[]);
    let p = h.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, Op::Rst as u16);
    assert_eq!(h.dev().connection_count(), 0);
    // A second REQUEST for a live connection resets it too.
    let _s = h.guest_connect(41, 400, &l);
    h.send(hdr(Op::Request, 41, 400, 0), &[]);
    let p = h.recv();
    assert_eq!(p[0].0.op, Op::Rst as u16);
    still_works(&mut h, 42, 401);
}
