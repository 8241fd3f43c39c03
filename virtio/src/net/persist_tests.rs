//! Net snapshot tests: guest rings in memory, real taps on the host side.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::super::test_utils::{test_frame, wait_readable, PacketSocket, TestTap};
use super::super::{Net, NetConfig};
use super::*;
use crate::device::VirtioDevice;
use crate::persist::VirtioPersist;
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use crate::test_rings::{bring_up, RawRing};
use crate::test_utils::guest_memory;
use crate::{GuestMemoryMmap, MmioTransport};

const MAC: [u8; 6] = [6, 0, 0xac, 0x10, 0, 7];
const F_WRITE: u16 = 2;
const TX_BUF: u64 = 0x10_0000;
const RX_BUF: u64 = 0x80_0000;
/// Holds the largest frame plus the header (GSO offloads are acked).
const RX_BUF_LEN: u32 = 65_562;

fn rx_ring() -> RawRing {
    RawRing::at(0, 64)
}

fn tx_ring() -> RawRing {
    RawRing::at(0x8000, 64)
}

/// A net device on its own tap behind a transport; the tap is deleted on drop.
struct Iface {
    net: Arc<Mutex<Net>>,
    transport: MmioTransport,
    sock: PacketSocket,
    _tap: TestTap,
}

impl Iface {
    fn new(mem: &GuestMemoryMmap, rx_limit: Option<RateLimiterConfig>) -> Self {
        let tap = TestTap::new();
        let net = Net::new(&NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: tap.name().into(),
            guest_mac: Some(MAC),
            mtu: Some(1500),
            rx_rate_limiter: rx_limit,
            ..Default::default()
        })
        .unwrap();
        tap.up();
        let sock = PacketSocket::bind(tap.name());
        let net = Arc::new(Mutex::new(net));
        let transport = MmioTransport::new(mem.clone(), net.clone()).unwrap();
        Iface {
            net,
            transport,
            sock,
            _tap: tap,
        }
    }

    fn start(&mut self) {
        let features = self.net.lock().unwrap().avail_features();
        bring_up(&mut self.transport, features, &[rx_ring(), tx_ring()]);
        assert!(self.net.lock().unwrap().is_activated());
    }

    fn wait_tap(&self) {
        let fd = self.net.lock().unwrap().tap.as_raw_fd();
        assert!(wait_readable(fd, Duration::from_secs(10)), "no frame");
    }
}

/// Queues `frame` for transmission with descriptors 2n, 2n+1.
fn send(mem: &GuestMemoryMmap, n: u16, frame: &[u8]) {
    let base = TX_BUF + u64::from(n) * 0x1_0000;
    mem.write_slice(&[0u8; 12], GuestAddress(base)).unwrap();
    mem.write_slice(frame, GuestAddress(base + 0x100)).unwrap();
    tx_ring().add_chain(
        mem,
        n * 2,
        &[(base, 12, 0), (base + 0x100, frame.len() as u32, 0)],
    );
}

/// Posts rx buffer n (descriptor n); returns its address.
fn post_rx(mem: &GuestMemoryMmap, n: u16) -> u64 {
    let addr = RX_BUF + u64::from(n) * 0x1_0000;
    rx_ring().add_chain(mem, n, &[(addr, RX_BUF_LEN, F_WRITE)]);
    addr
}

fn received(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr + 12)).unwrap();
    v
}

#[test]
fn a_restored_interface_carries_on_over_a_different_tap() {
    let mem = guest_memory();
    let mut a = Iface::new(&mem, None);
    a.start();
    let first = test_frame(MAC, 0x11, 200);
    send(&mem, 0, &first);
    a.net.lock().unwrap().process_tx();
    assert_eq!(a.sock.recv_matching(0x11).unwrap(), first);
    let (tstate, nstate) = {
        let mut n = a.net.lock().unwrap();
        n.quiesce();
        (a.transport.save_state(), n.save_state())
    };
    assert_eq!(nstate.virtio.queues.len(), 2);
    assert_eq!(nstate.virtio.queues[1].next_used, 1);
    let json = serde_json::to_string(&nstate).unwrap();
    assert_eq!(serde_json::from_str::<NetState>(&json).unwrap(), nstate);

    // Another tap (a network override); same configuration otherwise.
    let mut b = Iface::new(&mem, None);
    {
        let mut n = b.net.lock().unwrap();
        n.restore_state(&nstate).unwrap();
        b.transport
            .restore_state(&tstate, &mut *n, &nstate.virtio)
            .unwrap();
        assert!(n.is_activated());
        assert_eq!(n.save_state(), nstate);
    }
    assert_eq!(b.transport.save_state(), tstate);
    assert_eq!(b.transport.kick().unwrap(), 2);

    // tx continues at ring entry 1 and leaves through the new tap.
    let second = test_frame(MAC, 0x12, 300);
    send(&mem, 1, &second);
    b.net.lock().unwrap().process_tx();
    assert_eq!(b.sock.recv_matching(0x12).unwrap(), second);
    assert_eq!(tx_ring().used_idx(&mem), 2);
    // rx from the new tap lands in a guest buffer.
    let addr = post_rx(&mem, 0);
    let incoming = test_frame([2, 0, 0, 0, 0, 9], 0x21, 100);
    b.sock.send(&incoming);
    b.wait_tap();
    b.net.lock().unwrap().process_rx();
    assert_eq!(rx_ring().used_idx(&mem), 1);
    let (id, len) = rx_ring().used_elem(&mem, 0);
    assert_eq!((id, len as usize), (0, 12 + incoming.len()));
    assert_eq!(received(&mem, addr, incoming.len()), incoming);
    // Nothing more reached the old tap.
    assert!(!wait_readable(
        a.net.lock().unwrap().tap.as_raw_fd(),
        Duration::from_millis(0)
    ));
}

#[test]
fn quiesce_publishes_a_frame_the_rx_limiter_held() {
    let mem = guest_memory();
    let one_per_minute = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 60_000,
        }),
    };
    let mut a = Iface::new(&mem, Some(one_per_minute));
    a.start();
    post_rx(&mem, 0);
    let second_buf = post_rx(&mem, 1);
    let held = test_frame([2, 0, 0, 0, 0, 9], 0x32, 120);
    a.sock.send(&test_frame([2, 0, 0, 0, 0, 9], 0x31, 100));
    a.sock.send(&held);
    while a.net.lock().unwrap().metrics().snapshot().rx_rate_limited == 0 {
        a.wait_tap();
        a.net.lock().unwrap().process_rx();
    }
    assert_eq!(rx_ring().used_idx(&mem), 1, "second frame held");

    let state = {
        let mut n = a.net.lock().unwrap();
        n.quiesce();
        n.save_state()
    };
    assert_eq!(rx_ring().used_idx(&mem), 2);
    assert_eq!(received(&mem, second_buf, held.len()), held);
    let rx = state.virtio.queues[0];
    assert_eq!((rx.next_avail, rx.next_used), (2, 2));
    assert_eq!(a.net.lock().unwrap().metrics().snapshot().rx_packets, 2);
}

#[test]
fn the_configured_mac_and_mtu_must_match_the_saved_ones() {
    let mem = guest_memory();
    let a = Iface::new(&mem, None);
    let n = a.net.lock().unwrap();
    let good = n.save_state();
    assert!(!good.virtio.activated);
    let mut bad = good.clone();
    bad.guest_mac = Some([6, 0, 0, 0, 0, 1]);
    let e = n.validate_state(&bad).unwrap_err();
    assert!(matches!(e, NetStateError::Mac { .. }));
    assert!(e.to_string().contains("net.guest_mac"), "{e}");
    let mut bad = good.clone();
    bad.mtu = None;
    let e = n.validate_state(&bad).unwrap_err();
    assert!(e.to_string().contains("net.mtu"), "{e}");
    let mut bad = good;
    bad.virtio.device_type = 2;
    let e = n.validate_state(&bad).unwrap_err();
    assert!(e.to_string().contains("net.virtio.device_type"), "{e}");
}
