//! The device with an MMDS endpoint: frames for the metadata address are answered from
//! inside the device and never reach the tap; everything else still does.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use super::test_utils::test_frame;
use super::tests::{Harness, GUEST_MAC};
use super::FrameEndpoint;
use crate::test_utils::guest_memory;

const MMDS_IP: [u8; 4] = [169, 254, 169, 254];

fn arp_request(src_mac: [u8; 6], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[172, 16, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

/// The real endpoint, as the VMM wires it.
struct Endpoint(mmds::MmdsStack);

impl FrameEndpoint for Endpoint {
    fn wants(&self, head: &[u8]) -> bool {
        self.0.wants(head)
    }
    fn handle_frame(&mut self, frame: &[u8]) {
        self.0.handle_frame(frame);
    }
    fn has_frames(&self) -> bool {
        self.0.has_frames()
    }
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.0.next_frame()
    }
}

fn with_mmds(h: &mut Harness<'_>) {
    let service = Arc::new(Mutex::new(mmds::Mmds::new(1024).unwrap()));
    let config = mmds::StackConfig {
        ipv4: MMDS_IP.into(),
    };
    h.net
        .set_frame_endpoint(Box::new(Endpoint(mmds::MmdsStack::new(&config, service))));
}

#[test]
fn arp_for_the_mmds_address_is_answered_by_the_device_not_the_tap() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    with_mmds(&mut h);
    // Room for the largest frame, as the rx path gathers before placing any frame.
    let buf = h.post_rx_buffer(40_000);
    h.post_rx_buffer(40_000);
    h.push_tx_frame(&arp_request(GUEST_MAC, MMDS_IP));
    // A frame for the host right after it: it must be the first thing the tap sees.
    let marker = test_frame(GUEST_MAC, 0x51, 100);
    h.push_tx_frame(&marker);
    h.net.process_tx();
    h.net.process_rx();
    assert_eq!(h.tx_used(), 2);
    assert_eq!(h.rx_used(), 1, "the ARP reply reached the guest");
    let (_, len) = h.rx_used_elem(0);
    assert_eq!(len, 12 + 42);
    let reply = h.read_rx(buf, 12 + 42);
    assert_eq!(&reply[12..18], &GUEST_MAC, "to the asker");
    assert_eq!(&reply[12 + 14 + 6..12 + 14 + 8], &[0, 2], "an ARP reply");
    assert_eq!(&reply[12 + 14 + 14..12 + 14 + 18], &MMDS_IP);
    // The tap saw only the marker, and the device counted one frame sent.
    let mut raw = vec![0u8; 2048];
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(n) = h.sock.try_recv(&mut raw) {
            seen.push(raw[..n].to_vec());
            if raw[..n] == marker[..] {
                break;
            }
        }
    }
    assert_eq!(seen.last(), Some(&marker));
    assert!(
        seen.iter().all(|f| f[12..14] != [0x08, 0x06]),
        "no ARP for the MMDS address on the tap"
    );
    assert_eq!(h.metrics().tx_packets, 1);
}

#[test]
fn a_spoofed_frame_to_the_mmds_is_dropped_like_any_other() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    with_mmds(&mut h);
    h.post_rx_buffer(40_000);
    h.post_rx_buffer(40_000);
    h.push_tx_frame(&arp_request([6, 0, 0, 0, 0, 0x66], MMDS_IP));
    h.net.process_tx();
    h.net.process_rx();
    assert_eq!(h.rx_used(), 0, "no answer");
    assert_eq!(h.metrics().tx_spoofed_dropped, 1);
}

#[test]
fn without_mmds_the_address_is_ordinary_traffic() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    h.push_tx_frame(&arp_request(GUEST_MAC, MMDS_IP));
    h.net.process_tx();
    assert_eq!(h.metrics().tx_packets, 1);
}
