//! What a hostile guest can do to virtio-net with more than one vCPU or odd buffers: the
//! source MAC rewritten between check and send, frames bigger than its buffers, a reset and
//! re-activation between two turns of the io loop.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::test_utils::{self, test_frame, PacketSocket};
use super::tests::*;
use super::*;
use crate::device::{ActivateContext, VirtioDevice};
use crate::test_utils::guest_memory;

/// A second "vCPU" (a host thread) keeps flipping the last source-MAC byte of a tx buffer
/// while the device sends it over and over: the frames that reach the tap must all carry
/// the guest's MAC, and the device must have counted the ones it caught.
#[test]
fn source_mac_flipped_during_tx_never_reaches_the_tap() {
    use std::sync::atomic::AtomicBool;
    const ROUNDS: u16 = 1500;
    const PER_ROUND: u16 = 32;
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    // The mock lays its used ring over the second half of the avail ring, which only
    // matters once the ring wraps, as it does here: give the device a used ring elsewhere.
    h.net.reset();
    h.net.set_acked_features(h.net.avail_features());
    let mut txq: virtio_queue::Queue = h.txq.create_queue().unwrap();
    txq.set_used_ring_address(Some((TX_BASE + 0x1000) as u32), Some(0));
    h.net
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: h.irq.clone(),
            queues: vec![h.rxq.create_queue().unwrap(), txq],
            queue_evts: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
        })
        .unwrap();
    let frame = test_frame(GUEST_MAC, 0x31, 200);
    let buf = BUF_BASE;
    mem.write_slice(&[0u8; 12], GuestAddress(buf)).unwrap();
    mem.write_slice(&frame, GuestAddress(buf + 12)).unwrap();
    h.txq
        .desc_table()
        .store(0, d(buf, 12 + frame.len() as u32, 0, 0))
        .unwrap();
    let flip_addr = GuestAddress(buf + 12 + 11);
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (mem, stop) = (mem.clone(), stop.clone());
        std::thread::spawn(move || {
            let (good, bad) = (GUEST_MAC[5], GUEST_MAC[5] ^ 0x5a);
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = if flips.is_multiple_of(2) { bad } else { good };
                mem.write_obj(v, flip_addr).unwrap();
                flips += 1;
            }
            flips
        })
    };
    let (mut good_seen, mut foreign_seen) = (0u64, 0u64);
    let mut rx = vec![0u8; 2048];
    let mut drain = |sock: &PacketSocket| {
        while let Some(n) = sock.try_recv(&mut rx) {
            if n > 14 && rx[12..14] == test_utils::TEST_ETHERTYPE.to_be_bytes() && rx[14] == 0x31 {
                if rx[6..12] == GUEST_MAC {
                    good_seen += 1;
                } else {
                    foreign_seen += 1;
                }
            }
        }
    };
    for _ in 0..ROUNDS {
        // Every chain is the same single descriptor: one buffer, rewritten under us. (The
        // mock's add_desc_chains does not wrap the ring, so the ring is written here.)
        for _ in 0..PER_ROUND {
            let idx = h.txq.avail().idx().load();
            h.txq
                .avail()
                .ring()
                .ref_at(usize::from(idx % 64))
                .unwrap()
                .store(0);
            h.txq.avail().idx().store(idx.wrapping_add(1));
        }
        h.net.process_tx();
        drain(&h.sock);
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    drain(&h.sock);
    let m = h.metrics();
    let total = u64::from(ROUNDS) * u64::from(PER_ROUND);
    assert_eq!(foreign_seen, 0, "spoofed frames reached the tap: {m:?}");
    assert_eq!(m.tx_packets + m.tx_spoofed_dropped, total, "{m:?}");
    assert!(
        flips > 0 && m.tx_spoofed_dropped > 0,
        "the race never happened: {m:?}"
    );
    assert!(good_seen > 0, "{m:?}");
}

#[test]
fn rx_frame_bigger_than_the_guest_buffer_is_dropped_not_truncated() {
    use virtio_bindings::bindings::virtio_net::*;
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    // No mergeable buffers, no GSO: one chain per frame, whatever its size.
    let offloads = (1 << VIRTIO_NET_F_MRG_RXBUF)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6)
        | (1 << VIRTIO_NET_F_GUEST_UFO);
    h.reactivate(h.net.avail_features() & !offloads);
    let a = h.post_rx_buffer(12 + 500);
    let big = test_frame([2, 0, 0, 0, 0, 9], 0x44, 1000);
    h.sock.send(&big);
    h.wait_tap();
    h.net.process_rx();
    assert_eq!(h.rx_used(), 0, "a truncated frame was delivered");
    let m = h.metrics();
    assert_eq!((m.rx_oversized_dropped, m.rx_packets), (1, 0), "{m:?}");
    // The buffer went back to the ring and takes the next frame that fits.
    let small = test_frame([2, 0, 0, 0, 0, 9], 0x45, 300);
    h.sock.send(&small);
    h.wait_tap();
    h.net.process_rx();
    assert_eq!(h.rx_used(), 1);
    assert_eq!(h.rx_used_elem(0), (0, 12 + 300));
    assert_eq!(h.read_rx(a + 12, 300), small);
    // Exactly what fits is not "too big".
    let a2 = h.post_rx_buffer(12 + 500);
    let exact = test_frame([2, 0, 0, 0, 0, 9], 0x46, 500);
    h.sock.send(&exact);
    h.wait_tap();
    h.net.process_rx();
    assert_eq!(h.rx_used(), 2);
    assert_eq!(h.read_rx(a2 + 12, 500), exact);
    assert_eq!(h.metrics().rx_oversized_dropped, 1);
}

/// A driver reset and re-activation both land between two turns of the io loop (the vCPU
/// thread holds the device lock meanwhile): the loop must still know what it watches, and
/// receive must work afterwards.
#[test]
fn reset_and_reactivation_between_loop_turns_keeps_rx_working() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    h.post_rx_buffer(65_562);
    let acked = h.net.acked_features();
    let Harness {
        mem,
        rxq,
        txq,
        net,
        irq,
        sock,
        tap: _tap,
        ..
    } = h;
    let net = Arc::new(Mutex::new(net));
    let mut manager: EventManager<Arc<Mutex<Net>>> = EventManager::new().unwrap();
    manager.add_subscriber(net.clone());
    for _ in 0..2 {
        manager.run_with_timeout(0).unwrap();
    }
    assert!(net.lock().unwrap().lp.tap_watched);
    {
        // What the transport does on the vCPU thread: reset, then a full re-initialisation.
        let mut n = net.lock().unwrap();
        n.reset();
        n.set_acked_features(acked);
        n.activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
        })
        .unwrap();
    }
    // The loop picks up the re-activation first (control event), with nothing to receive.
    manager.run_with_timeout(0).unwrap();
    assert!(!net.lock().unwrap().rx.tap_dead);
    // Only the tap's readiness can deliver this frame now. The rings were reused as they
    // were: the buffer posted before is available again.
    let frame = test_frame([2, 0, 0, 0, 0, 9], 0x47, 200);
    sock.send(&frame);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rxq.used().idx().load() == 0 && std::time::Instant::now() < deadline {
        manager.run_with_timeout(100).unwrap();
    }
    let n = net.lock().unwrap();
    assert_eq!(rxq.used().idx().load(), 1, "{:?}", n.metrics.snapshot());
    assert!(!n.rx.tap_dead);
    let mut got = vec![0u8; 200];
    mem.read_slice(&mut got, GuestAddress(0x80_0000 + 12))
        .unwrap();
    assert_eq!(got, frame);
}

/// The header copy and the guest iovecs after it join up exactly, wherever the guest split
/// its buffers (here across the virtio-net header, the MACs and the payload).
#[test]
fn a_frame_split_across_the_copied_headers_arrives_intact() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    let frame = test_frame(GUEST_MAC, 0x48, 300);
    let mut bytes = vec![0u8; 12];
    bytes.extend_from_slice(&frame);
    // Pieces of 7, 9, 13 (ending inside the header copy), 1, 2 and the rest.
    let cuts = [0usize, 7, 16, 29, 30, 32, bytes.len()];
    let mut descs = Vec::new();
    for (i, w) in cuts.windows(2).enumerate() {
        let addr = BUF_BASE + 0x4_0000 + i as u64 * 0x1000;
        mem.write_slice(&bytes[w[0]..w[1]], GuestAddress(addr))
            .unwrap();
        descs.push(d(addr, (w[1] - w[0]) as u32, 0, 0));
    }
    h.push_tx_chain(&descs);
    h.net.process_tx();
    assert_eq!(h.sock.recv_matching(0x48).unwrap(), frame);
    let m = h.metrics();
    assert_eq!((m.tx_packets, m.tx_bytes, m.tx_malformed), (1, 300, 0));
}
