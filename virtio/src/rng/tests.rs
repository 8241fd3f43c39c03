use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::rate_limiter::TokenBucketConfig;
use crate::test_utils::{add_linked_chain, guest_memory, ManualClock, RecordingInterrupt};

const BUF: u64 = 0x10_0000;

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    dev: Rng,
    irq: Arc<RecordingInterrupt>,
    next_desc: u16,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let mut dev = Rng::new(None).unwrap();
        let vq = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let irq = Arc::new(RecordingInterrupt::default());
        dev.set_acked_features(1 << VIRTIO_F_VERSION_1);
        dev.activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            queues: vec![vq.create_queue::<Queue>().unwrap()],
            queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        })
        .unwrap();
        Harness {
            mem,
            vq,
            dev,
            irq,
            next_desc: 0,
        }
    }

    fn add_chain(&mut self, descs: &[(u64, u32, bool)]) {
        self.next_desc = add_linked_chain(&self.vq, self.next_desc, descs);
    }

    fn used_len(&self, i: u16) -> u32 {
        let used = self.vq.used_addr();
        self.mem
            .read_obj::<u32>(used.unchecked_add(4 + 8 * u64::from(i) + 4))
            .unwrap()
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(self.vq.used_addr().unchecked_add(2))
            .unwrap()
    }
}

use vm_memory::Address as _;

#[test]
fn fills_writable_buffers_with_random_bytes() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem);
    h.add_chain(&[(BUF, 4096, true), (BUF + 0x2000, 4096, true)]);
    h.dev.process_queue();
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used_len(0), 8192);
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    mem.read_slice(&mut a, GuestAddress(BUF)).unwrap();
    mem.read_slice(&mut b, GuestAddress(BUF + 0x2000)).unwrap();
    // 4 KiB of zeroes, or two equal halves, from a real random source: never.
    assert!(a.iter().any(|&x| x != 0) && a != b);
    let m = h.dev.metrics().snapshot();
    assert_eq!((m.entropy_event_count, m.entropy_bytes), (1, 8192));
    assert!(h.irq.vring.load(Ordering::SeqCst) >= 1);
}

#[test]
fn a_request_gets_at_most_64_kib() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem);
    h.add_chain(&[(BUF, 60 << 10, true), (BUF + (60 << 10), 60 << 10, true)]);
    h.dev.process_queue();
    assert_eq!(h.used_len(0), MAX_REQUEST_BYTES as u32);
    // The byte past the cap was not written.
    let mut tail = [0xffu8; 64];
    mem.read_slice(&mut tail, GuestAddress(BUF + MAX_REQUEST_BYTES as u64))
        .unwrap();
    assert_eq!(tail, [0u8; 64]);
}

#[test]
fn hostile_chains_are_answered_empty_and_counted() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem);
    h.add_chain(&[(BUF, 64, false)]); // read-only
    h.add_chain(&[(0x1_0000_0000, 64, true)]); // outside memory
    h.add_chain(&[(0xff_f000, 0x2000, true)]); // straddles the end of memory
    h.add_chain(&[(BUF, 16, true)]); // then a good one
    h.dev.process_queue();
    assert_eq!(h.used_idx(), 4);
    assert_eq!(
        [h.used_len(0), h.used_len(1), h.used_len(2), h.used_len(3)],
        [0, 0, 0, 16]
    );
    let m = h.dev.metrics().snapshot();
    assert_eq!(m.invalid_requests, 3);
    assert_eq!(m.queue_errors, 0);
    assert!(!h.irq.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn a_broken_ring_needs_a_reset() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem);
    h.add_chain(&[(BUF, 16, true)]);
    // avail.idx far ahead of the ring size: the queue is unusable.
    mem.write_obj::<u16>(100, h.vq.avail_addr().unchecked_add(2))
        .unwrap();
    h.dev.process_queue();
    assert!(h.irq.needs_reset.load(Ordering::SeqCst));
    assert_eq!(h.dev.metrics().snapshot().queue_errors, 1);
    // Nothing more is served until the driver resets.
    h.dev.process_queue();
    assert_eq!(h.dev.metrics().snapshot().queue_errors, 1);
}

#[test]
fn the_rate_limiter_holds_requests_back_until_tokens_return() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem);
    let clock = Arc::new(ManualClock::default());
    let cfg = RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 1024,
            one_time_burst: None,
            refill_time: 1000,
        }),
        ops: None,
    };
    h.dev
        .set_rate_limiter(RateLimiter::with_clock(&cfg, clock.clone()).unwrap());
    h.add_chain(&[(BUF, 1024, true)]);
    h.add_chain(&[(BUF + 0x1000, 1024, true)]);
    h.dev.process_queue();
    assert_eq!(h.used_idx(), 1, "the second request must wait");
    assert_eq!(h.dev.metrics().snapshot().entropy_rate_limiter_throttled, 1);
    clock.advance_ms(1000);
    // The timer fired: the loop calls the handler, then serves the queue.
    h.dev.rate_limiter.event_handler();
    h.dev.process_queue();
    assert_eq!(h.used_idx(), 2);
    assert_eq!(h.used_len(1), 1024);
}

#[test]
fn activation_needs_a_ready_queue_and_reset_stops_service() {
    let mem = guest_memory();
    let mut dev = Rng::new(None).unwrap();
    let e = dev
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: Arc::new(RecordingInterrupt::default()),
            queues: vec![],
            queue_evts: vec![],
        })
        .unwrap_err();
    assert!(matches!(e, ActivateError::QueueCount { .. }), "{e}");
    assert_eq!(dev.metrics().snapshot().activate_fails, 1);
    let mut h = Harness::new(&mem);
    h.dev.reset();
    assert!(!h.dev.is_activated());
    h.add_chain(&[(BUF, 16, true)]);
    h.dev.process_queue();
    assert_eq!(h.used_idx(), 0);
    assert_eq!(h.dev.device_type(), 4);
    let mut cfg = [0xffu8; 4];
    h.dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 4]);
}
