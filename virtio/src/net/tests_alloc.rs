//! Frames in both directions allocate nothing per frame once warm, under the crate's counting
//! allocator. Rings laid out by hand (see `block::tests_alloc` on the mock queue's layout).
#![allow(clippy::unwrap_used, clippy::panic)]

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::test_utils::{test_frame, wait_readable};
use super::tests::{Harness, F_WRITE, RX_BASE, TX_BASE};
use crate::device::{ActivateContext, VirtioDevice};
use crate::test_alloc::allocations;
use crate::test_rings::RawRing;
use crate::test_utils::{guest_memory, RecordingInterrupt};

const QUEUE_SIZE: u16 = 64;
const WARM_UP: u32 = 64;
const COUNTED: u32 = 1_000;
const TX_BUF: u64 = 0x10_0000;
const RX_BUF: u64 = 0x20_0000;

/// Allocations the device made while moving one frame each way, per frame.
fn device_allocations(h: &mut Harness<'_>, rounds: u32) -> u64 {
    let (rx, tx) = (
        RawRing::at(RX_BASE, QUEUE_SIZE),
        RawRing::at(TX_BASE, QUEUE_SIZE),
    );
    let frame = test_frame([2, 0, 0, 0, 0, 9], 0x5a, 128);
    let mut counted = 0;
    for _ in 0..rounds {
        // tx: a 12-byte header, then the frame.
        h.mem.write_slice(&[0u8; 12], GuestAddress(TX_BUF)).unwrap();
        h.mem
            .write_slice(&frame, GuestAddress(TX_BUF + 0x100))
            .unwrap();
        let before = tx.used_idx(h.mem);
        tx.add_chain(
            h.mem,
            0,
            &[(TX_BUF, 12, 0), (TX_BUF + 0x100, frame.len() as u32, 0)],
        );
        let a = allocations();
        h.net.process_tx();
        counted += allocations() - a;
        assert_eq!(tx.used_idx(h.mem), before.wrapping_add(1));

        // rx: one buffer that fits the largest frame (the device reads the tap only then),
        // one frame injected through the tap.
        let before = rx.used_idx(h.mem);
        rx.add_chain(h.mem, 0, &[(RX_BUF, 70_000, F_WRITE)]);
        h.sock.send(&frame);
        for attempt in 0.. {
            if rx.used_idx(h.mem) != before {
                break;
            }
            assert!(attempt < 100, "the frame never reached the guest buffer");
            assert!(wait_readable(
                h.net.tap.as_raw_fd(),
                Duration::from_secs(10)
            ));
            let a = allocations();
            h.net.process_rx();
            counted += allocations() - a;
        }
    }
    counted
}

#[test]
fn tx_and_rx_frames_allocate_nothing_in_steady_state() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    // Fresh queues on hand-laid rings.
    h.net.reset();
    h.net.set_acked_features(h.net.avail_features());
    h.net
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: Arc::new(RecordingInterrupt::default()),
            queues: vec![
                RawRing::at(RX_BASE, QUEUE_SIZE).queue(),
                RawRing::at(TX_BASE, QUEUE_SIZE).queue(),
            ],
            queue_evts: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
        })
        .unwrap();
    device_allocations(&mut h, WARM_UP);
    assert_eq!(device_allocations(&mut h, COUNTED), 0);
}
