//! Device tests: virtio-queue mock queues on the guest side, a real tap on the host side.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::test_utils::{test_frame, wait_readable, PacketSocket, TestTap};
use super::*;
use crate::device::{ActivateContext, VirtioDevice};
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use crate::test_utils::{guest_memory, RecordingInterrupt};

pub(super) const F_NEXT: u16 = 1;
pub(super) const F_WRITE: u16 = 2;
pub(super) const GUEST_MAC: [u8; 6] = [6, 0, 0xac, 0x10, 0, 2];
pub(super) const RX_BASE: u64 = 0x0;
pub(super) const TX_BASE: u64 = 0x8000;
pub(super) const BUF_BASE: u64 = 0x10_0000;

pub(super) fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

pub(super) struct Harness<'a> {
    pub(super) mem: &'a Mem,
    pub(super) rxq: MockSplitQueue<'a, Mem>,
    pub(super) txq: MockSplitQueue<'a, Mem>,
    pub(super) net: Net,
    pub(super) irq: Arc<RecordingInterrupt>,
    pub(super) sock: PacketSocket,
    /// Next free descriptor index per queue.
    pub(super) rx_next: u16,
    pub(super) tx_next: u16,
    // Dropped last: deletes the interface.
    pub(super) tap: TestTap,
}

impl<'a> Harness<'a> {
    pub(super) fn new(mem: &'a Mem, tweak: impl FnOnce(&mut NetConfig)) -> Self {
        let tap = TestTap::new();
        let mut cfg = NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: tap.name().into(),
            guest_mac: Some(GUEST_MAC),
            ..Default::default()
        };
        tweak(&mut cfg);
        let mut net = Net::new(&cfg).unwrap();
        tap.up();
        let sock = PacketSocket::bind(tap.name());
        let rxq = MockSplitQueue::create(mem, GuestAddress(RX_BASE), 64);
        let txq = MockSplitQueue::create(mem, GuestAddress(TX_BASE), 64);
        net.set_acked_features(net.avail_features());
        let irq = Arc::new(RecordingInterrupt::default());
        let ctx = ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
        };
        net.activate(ctx).unwrap();
        Harness {
            mem,
            rxq,
            txq,
            net,
            irq,
            sock,
            rx_next: 0,
            tx_next: 0,
            tap,
        }
    }

    /// Resets the device and activates it again with `acked` features and fresh queues
    /// over the same rings (descriptor indices restart at 0).
    pub(super) fn reactivate(&mut self, acked: u64) {
        self.net.reset();
        self.net.set_acked_features(acked);
        self.net
            .activate(ActivateContext {
                mem: self.mem.clone(),
                interrupt: self.irq.clone(),
                queues: vec![
                    self.rxq.create_queue().unwrap(),
                    self.txq.create_queue().unwrap(),
                ],
                queue_evts: vec![
                    EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                    EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                ],
            })
            .unwrap();
    }

    /// Queues a tx chain: a 12-byte header descriptor, then `frame`.
    pub(super) fn push_tx_frame(&mut self, frame: &[u8]) {
        let base = BUF_BASE + u64::from(self.tx_next) * 0x1_0000;
        self.mem
            .write_slice(&[0u8; 12], GuestAddress(base))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(base + 0x100))
            .unwrap();
        self.push_tx_chain(&[d(base, 12, 0, 0), d(base + 0x100, frame.len() as u32, 0, 0)]);
    }

    /// Queues descriptors as one tx chain (NEXT flags and links filled in).
    pub(super) fn push_tx_chain(&mut self, descs: &[RawDescriptor]) {
        let first = self.tx_next;
        let linked: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let s = SplitDescriptor::from(*raw);
                let last = i + 1 == descs.len();
                let flags = if last { s.flags() } else { s.flags() | F_NEXT };
                d(s.addr().raw_value(), s.len(), flags, first + i as u16 + 1)
            })
            .collect();
        self.txq.add_desc_chains(&linked, first).unwrap();
        self.tx_next += descs.len() as u16;
    }

    /// Posts one write-only rx buffer of `len` bytes; returns its guest address.
    pub(super) fn post_rx_buffer(&mut self, len: u32) -> u64 {
        let addr = 0x80_0000 + u64::from(self.rx_next) * 0x1_0000;
        self.rxq
            .add_desc_chains(&[d(addr, len, F_WRITE, 0)], self.rx_next)
            .unwrap();
        self.rx_next += 1;
        addr
    }

    pub(super) fn tx_used(&self) -> u16 {
        self.txq.used().idx().load()
    }

    pub(super) fn rx_used(&self) -> u16 {
        self.rxq.used().idx().load()
    }

    pub(super) fn rx_used_elem(&self, i: u16) -> (u32, u32) {
        let e = self
            .rxq
            .used()
            .ring()
            .ref_at(usize::from(i))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    pub(super) fn metrics(&self) -> NetMetricsSnapshot {
        self.net.metrics.snapshot()
    }

    /// Waits until the tap has a frame queued for the guest.
    pub(super) fn wait_tap(&self) {
        assert!(
            wait_readable(self.net.tap.as_raw_fd(), Duration::from_secs(10)),
            "no frame reached the tap"
        );
    }

    pub(super) fn read_rx(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn features_and_config_space() {
    let mem = guest_memory();
    let tap = TestTap::new();
    let cfg = NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: tap.name().into(),
        guest_mac: Some(GUEST_MAC),
        mtu: Some(9000),
        ..Default::default()
    };
    let net = Net::new(&cfg).unwrap();
    let f = net.avail_features();
    use virtio_bindings::bindings::virtio_net::*;
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4,
        crate::features::VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert!(crate::features::has(f, bit), "feature bit {bit} missing");
    }
    let mut c = [0u8; 12];
    net.read_config(0, &mut c);
    assert_eq!(c[0..6], GUEST_MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
    let mut past = [0xffu8; 4];
    net.read_config(10, &mut past);
    assert_eq!(past, [0x28, 0x23, 0, 0]);

    let plain = Net::new(&NetConfig {
        iface_id: "eth1".into(),
        host_dev_name: tap.name().into(),
        ..Default::default()
    });
    // The first device still holds the tap: a tap without IFF_MULTI_QUEUE takes one reader.
    assert!(plain.is_err());
    drop(net);
    let plain = reopen_when_released(&NetConfig {
        iface_id: "eth1".into(),
        host_dev_name: tap.name().into(),
        ..Default::default()
    });
    assert!(!crate::features::has(
        plain.avail_features(),
        VIRTIO_NET_F_MAC
    ));
    assert!(!crate::features::has(
        plain.avail_features(),
        VIRTIO_NET_F_MTU
    ));
    drop(mem);
}

#[test]
fn missing_tap_is_a_named_error() {
    let e = Net::new(&NetConfig {
        iface_id: "eth7".into(),
        host_dev_name: "xenia-none7".into(),
        ..Default::default()
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("eth7") && msg.contains("xenia-none7"), "{msg}");
}

#[test]
fn tx_frame_reaches_the_tap() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    let frame = test_frame(GUEST_MAC, 0x11, 1000);
    h.push_tx_frame(&frame);
    h.net.process_tx();
    assert_eq!(h.sock.recv_matching(0x11).unwrap(), frame);
    assert_eq!(h.tx_used(), 1);
    let m = h.metrics();
    assert_eq!((m.tx_packets, m.tx_bytes), (1, 1000));
    assert!(h.irq.vring.load(Ordering::SeqCst) >= 1);
}

#[test]
fn forged_source_mac_is_dropped_and_counted() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    h.push_tx_frame(&test_frame([6, 0, 0, 0, 0, 0x66], 0x21, 200));
    h.push_tx_frame(&test_frame(GUEST_MAC, 0x22, 200));
    h.net.process_tx();
    // Frames leave in order: the good one arriving first means the forged one never left.
    assert_eq!(h.sock.next_test_frame().unwrap()[14], 0x22);
    assert_eq!(h.tx_used(), 2);
    let m = h.metrics();
    assert_eq!((m.tx_spoofed_dropped, m.tx_packets), (1, 1));
}

#[test]
fn spoofing_allowed_lets_any_source_through() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |c| c.allow_mac_spoofing = true);
    h.push_tx_frame(&test_frame([6, 0, 0, 0, 0, 0x66], 0x23, 200));
    h.net.process_tx();
    assert!(h.sock.recv_matching(0x23).is_some());
    assert_eq!(h.metrics().tx_spoofed_dropped, 0);
}

#[test]
fn malformed_tx_chains_are_dropped_and_the_queue_keeps_working() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    let b = BUF_BASE;
    // Header shorter than virtio_net_hdr + Ethernet header.
    h.push_tx_chain(&[d(b, 8, 0, 0)]);
    // A write-only descriptor where the device must only read.
    h.push_tx_chain(&[d(b, 12, 0, 0), d(b + 0x100, 100, F_WRITE, 0)]);
    // A buffer past the end of guest memory (16 MiB).
    h.push_tx_chain(&[d(b, 12, 0, 0), d(0xff_ff00, 0x1000, 0, 0)]);
    // A frame over 64 KiB plus header.
    h.push_tx_chain(&[d(b, 12, 0, 0), d(b + 0x100, 65_551, 0, 0)]);
    // A loop: the second descriptor points back to the first.
    let first = h.tx_next;
    h.txq
        .add_desc_chains(
            &[
                d(b, 12, F_NEXT, first + 1),
                d(b + 0x100, 100, F_NEXT, first),
            ],
            first,
        )
        .unwrap();
    h.tx_next += 2;
    let good = test_frame(GUEST_MAC, 0x31, 500);
    h.push_tx_frame(&good);
    h.net.process_tx();
    assert_eq!(h.sock.next_test_frame().unwrap(), good);
    let m = h.metrics();
    assert_eq!(m.tx_malformed, 5, "{m:?}");
    assert_eq!(m.tx_packets, 1);
    assert_eq!(h.tx_used(), 6);
    assert!(!h.irq.needs_reset.load(Ordering::SeqCst));
    // Still serving.
    h.push_tx_frame(&test_frame(GUEST_MAC, 0x32, 80));
    h.net.process_tx();
    assert!(h.sock.recv_matching(0x32).is_some());
}

#[test]
fn corrupt_avail_index_asks_for_a_reset() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    // The driver claims 1000 new entries in a 64-entry ring.
    mem.write_obj(1000u16, h.txq.avail_addr().unchecked_add(2))
        .unwrap();
    h.net.process_tx();
    assert!(h.irq.needs_reset.load(Ordering::SeqCst));
    assert_eq!(h.metrics().queue_errors, 1);
    assert!(!h.net.wants_tap());
    // Once broken, kicks are ignored without touching the rings.
    h.net.process_tx();
    h.net.process_rx();
    assert_eq!(h.metrics().queue_errors, 1);
    // Breaking it again after each reset is counted every time, logged once per period.
    let acked = h.net.avail_features();
    for _ in 0..9 {
        mem.write_obj(0u16, h.txq.avail_addr().unchecked_add(2))
            .unwrap();
        h.reactivate(acked);
        mem.write_obj(1000u16, h.txq.avail_addr().unchecked_add(2))
            .unwrap();
        h.net.process_tx();
    }
    assert_eq!(h.metrics().queue_errors, 10);
    assert_eq!(h.net.guest_err_log.suppressed(), 9);
}

#[test]
fn rx_frame_reaches_a_guest_buffer() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    let a = h.post_rx_buffer(40_000);
    let b = h.post_rx_buffer(40_000);
    let frame = test_frame([2, 0, 0, 0, 0, 9], 0x41, 700);
    h.sock.send(&frame);
    h.wait_tap();
    h.net.process_rx();
    assert_eq!(h.rx_used(), 1);
    assert_eq!(h.rx_used_elem(0), (0, 12 + 700));
    assert_eq!(h.read_rx(a + 12, 700), frame);
    assert_eq!(h.read_rx(a + 10, 2), [1, 0], "num_buffers");
    let m = h.metrics();
    assert_eq!((m.rx_packets, m.rx_bytes), (1, 700));
    // The second buffer was not needed and stays available.
    let q = &h.net.active.as_ref().unwrap().rx_queue;
    assert_eq!(q.next_avail(), 1);
    let _ = b;
}

#[test]
fn rx_frame_spans_mergeable_buffers() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    h.tap.set_mtu(9000);
    let addrs: Vec<u64> = (0..60).map(|_| h.post_rx_buffer(1200)).collect();
    let frame = test_frame([2, 0, 0, 0, 0, 9], 0x42, 3000);
    h.sock.send(&frame);
    h.wait_tap();
    h.net.process_rx();
    assert_eq!(h.rx_used(), 1 + 2, "3 used entries for one frame");
    assert_eq!(h.read_rx(addrs[0] + 10, 2), [3, 0], "num_buffers");
    let mut got = h.read_rx(addrs[0] + 12, 1188);
    got.extend(h.read_rx(addrs[1], 1200));
    got.extend(h.read_rx(addrs[2], 3012 - 2400));
    assert_eq!(got, frame);
    assert_eq!(h.rx_used_elem(2).1, 3012 - 2400);
}

#[test]
fn rx_without_buffers_stops_reading_the_tap_until_the_guest_posts() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    let frame = test_frame([2, 0, 0, 0, 0, 9], 0x43, 100);
    h.sock.send(&frame);
    h.wait_tap();
    h.net.process_rx();
    assert_eq!(h.metrics().rx_no_buffer, 1);
    assert!(!h.net.wants_tap(), "the loop must stop watching the tap");
    // Too little space for a 64 KiB frame is no better than none.
    h.post_rx_buffer(1000);
    h.net.rx.stalled = false;
    h.net.process_rx();
    assert_eq!(h.rx_used(), 0);
    assert!(!h.net.wants_tap());
    h.post_rx_buffer(65_562);
    h.net.rx.stalled = false;
    h.net.process_rx();
    assert_eq!(h.rx_used(), 1);
    assert!(h.net.wants_tap());
    // The small chain holds the small frame; the big one stays available.
    assert_eq!(h.rx_used_elem(0), (0, 112));
}

#[test]
fn malformed_rx_chain_is_dropped_and_counted() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    // Device-readable buffer in the rx queue.
    h.rxq
        .add_desc_chains(&[d(0x80_0000, 2000, 0, 0)], 0)
        .unwrap();
    h.rx_next = 1;
    let a = h.post_rx_buffer(65_562);
    let frame = test_frame([2, 0, 0, 0, 0, 9], 0x44, 100);
    h.sock.send(&frame);
    h.wait_tap();
    h.net.process_rx();
    assert_eq!(h.metrics().rx_malformed, 1);
    assert_eq!(h.rx_used(), 2);
    assert_eq!(h.rx_used_elem(0), (0, 0));
    assert_eq!(h.read_rx(a + 12, 100), frame);
}

#[test]
fn tx_rate_limit_throttles_and_updates_at_runtime() {
    let mem = guest_memory();
    let one_per_hour = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 3_600_000,
        }),
    };
    let mut h = Harness::new(&mem, |c| c.tx_rate_limiter = Some(one_per_hour));
    h.push_tx_frame(&test_frame(GUEST_MAC, 0x51, 100));
    h.push_tx_frame(&test_frame(GUEST_MAC, 0x52, 100));
    h.net.process_tx();
    assert_eq!(h.tx_used(), 1);
    assert_eq!(h.metrics().tx_rate_limited, 1);
    // A kick while throttled changes nothing (the loop waits on the timerfd).
    h.net.process_tx();
    assert_eq!(h.tx_used(), 1);
    let unlimited = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 0,
            one_time_burst: None,
            refill_time: 0,
        }),
    };
    h.net.update_rate_limiters(None, Some(&unlimited));
    h.net.process_tx();
    assert_eq!(h.tx_used(), 2);
    assert!(h.sock.recv_matching(0x52).is_some());
}

#[test]
fn rx_rate_limit_holds_the_frame_until_the_timer_fires() {
    let mem = guest_memory();
    let two_per_200ms = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 200,
        }),
    };
    let mut h = Harness::new(&mem, |c| c.rx_rate_limiter = Some(two_per_200ms));
    for _ in 0..4 {
        h.post_rx_buffer(65_562);
    }
    h.sock.send(&test_frame([2, 0, 0, 0, 0, 9], 0x61, 100));
    h.sock.send(&test_frame([2, 0, 0, 0, 0, 9], 0x62, 100));
    h.wait_tap();
    h.net.process_rx();
    // The second frame may not have been queued yet when we read; drive until throttled.
    while h.metrics().rx_rate_limited == 0 {
        h.wait_tap();
        h.net.process_rx();
    }
    assert_eq!(h.rx_used(), 1);
    assert!(!h.net.wants_tap(), "no tap reads while throttled");
    // The limiter's timerfd fires once the bucket refills.
    assert!(crate::test_utils::wait_readable(
        h.net.rx_limiter.as_raw_fd()
    ));
    h.net.rx_limiter.event_handler();
    h.net.process_rx();
    assert_eq!(h.rx_used(), 2);
    assert_eq!(h.metrics().rx_packets, 2);
}

#[test]
fn deleted_tap_counts_errors_and_the_loop_does_not_spin() {
    let mem = guest_memory();
    let h = Harness::new(&mem, |_| {});
    let Harness {
        mem,
        rxq,
        txq,
        net,
        irq: _irq,
        sock,
        tap,
        ..
    } = h;
    let net = Arc::new(Mutex::new(net));
    let mut manager: EventManager<Arc<Mutex<Net>>> = EventManager::new().unwrap();
    manager.add_subscriber(net.clone());
    for i in 0..4 {
        rxq.add_desc_chains(&[d(0x80_0000 + i * 0x1_0000, 65_562, F_WRITE, 0)], i as u16)
            .unwrap();
    }
    for _ in 0..2 {
        manager.run_with_timeout(0).unwrap();
    }
    assert!(net.lock().unwrap().lp.tap_watched);
    drop(sock);
    tap.delete();
    // Deleting the interface wakes the tap fd; the device must then stop watching it.
    let mut quiet = false;
    for _ in 0..50 {
        if manager.run_with_timeout(200).unwrap() == 0 {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "the io loop keeps getting events from a dead tap");
    assert!(!net.lock().unwrap().lp.tap_watched);
    let h_tx = TxQueueWriter { txq: &txq, mem };
    h_tx.push(&test_frame(GUEST_MAC, 0x71, 100));
    {
        let mut n = net.lock().unwrap();
        n.process_tx();
    }
    let m = net.lock().unwrap().metrics.snapshot();
    assert_eq!(m.tap_write_errors, 1, "{m:?}");
    assert_eq!(
        txq.used().idx().load(),
        1,
        "the frame is returned to the guest"
    );
}

struct TxQueueWriter<'a, 'm> {
    txq: &'a MockSplitQueue<'m, Mem>,
    mem: &'m Mem,
}

impl TxQueueWriter<'_, '_> {
    fn push(&self, frame: &[u8]) {
        self.mem
            .write_slice(&[0u8; 12], GuestAddress(BUF_BASE))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(BUF_BASE + 0x100))
            .unwrap();
        self.txq
            .add_desc_chains(
                &[
                    d(BUF_BASE, 12, F_NEXT, 1),
                    d(BUF_BASE + 0x100, frame.len() as u32, 0, 0),
                ],
                0,
            )
            .unwrap();
    }
}

/// Attaches to a tap another `Net` of this test just released. Other tests in this process
/// spawn programs (`ip`), and a child holds a copy of every fd between its fork and its exec
/// (`O_CLOEXEC` closes it only at exec): the tap may stay attached for that moment, so EBUSY
/// is retried for a bounded time; any other error fails at once.
fn reopen_when_released(config: &NetConfig) -> Net {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Net::new(config) {
            Ok(net) => return net,
            Err(NetError::Tap {
                source: TapError::Attach { source, .. },
                ..
            }) if source.raw_os_error() == Some(libc::EBUSY)
                && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reopening the tap: {e}"),
        }
    }
}
