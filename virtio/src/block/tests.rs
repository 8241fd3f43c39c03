use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::device::{ActivateContext, VirtioDevice};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, TokenBucketConfig};
use crate::test_utils::{add_linked_chain, guest_memory, ManualClock, RecordingInterrupt};
use crate::GuestMemoryMmap;

pub(super) const HDR: u64 = 0x10_0000;
pub(super) const DATA: u64 = 0x20_0000;
pub(super) const STATUS: u64 = 0x30_0000;
pub(super) const DISK_SECTORS: u64 = 64;
pub(super) const NEXT: u16 = 1;
pub(super) const WRITE: u16 = 2;

pub(super) fn disk_file(sectors: u64) -> TempFile {
    let f = TempFile::new_with_prefix("/tmp/xenia-blk-test").unwrap();
    f.as_file().set_len(sectors * 512).unwrap();
    f
}

pub(super) fn config(path: &std::path::Path) -> BlockConfig {
    BlockConfig {
        drive_id: "rootfs".into(),
        path_on_host: path.to_path_buf(),
        is_read_only: false,
        cache_type: CacheType::Writeback,
        io_engine: IoEngine::Sync,
        image_format: ImageFormat::Raw,
        rate_limiter: None,
    }
}

pub(super) struct Harness<'a> {
    pub(super) mem: &'a GuestMemoryMmap,
    pub(super) vq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub(super) dev: Block,
    pub(super) irq: Arc<RecordingInterrupt>,
    pub(super) next_desc: u16,
    _file: TempFile,
}

impl<'a> Harness<'a> {
    pub(super) fn new(mem: &'a GuestMemoryMmap, tweak: impl FnOnce(&mut BlockConfig)) -> Self {
        Self::with_queue_size(mem, 16, tweak)
    }

    pub(super) fn with_queue_size(
        mem: &'a GuestMemoryMmap,
        queue_size: u16,
        tweak: impl FnOnce(&mut BlockConfig),
    ) -> Self {
        let file = disk_file(DISK_SECTORS);
        let mut cfg = config(file.as_path());
        tweak(&mut cfg);
        let mut dev = Block::new(&cfg).unwrap();
        let vq = MockSplitQueue::create(mem, GuestAddress(0), queue_size);
        let irq = Arc::new(RecordingInterrupt::default());
        dev.set_acked_features(
            dev.avail_features() & !(1 << crate::features::VIRTIO_RING_F_EVENT_IDX),
        );
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
            _file: file,
        }
    }

    /// Adds a chain of (addr, len, device-writable) linked in order.
    pub(super) fn add_chain(&mut self, descs: &[(u64, u32, bool)]) {
        self.next_desc = add_linked_chain(&self.vq, self.next_desc, descs);
    }

    pub(super) fn header(&self, addr: u64, t: u32, sector: u64) {
        self.mem.write_obj(t, GuestAddress(addr)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(addr + 8)).unwrap();
    }

    /// A well-formed request: header, data, status.
    pub(super) fn request(&mut self, t: u32, sector: u64, data_len: u32, device_writes: bool) {
        let n = u64::from(self.next_desc);
        let hdr = HDR + n * 0x100;
        self.header(hdr, t, sector);
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS + n))
            .unwrap();
        if data_len == 0 {
            self.add_chain(&[(hdr, 16, false), (STATUS + n, 1, true)]);
        } else {
            self.add_chain(&[
                (hdr, 16, false),
                (DATA + n * 0x1000, data_len, device_writes),
                (STATUS + n, 1, true),
            ]);
        }
    }

    /// Waits for what went to an io_uring (the async engine, or flushes of a sync drive with
    /// a writeback cache) and completes it.
    pub(super) fn settle(&mut self) {
        if let Some(engine) = self.dev.engine.as_mut() {
            let done = engine.drain();
            self.dev.complete_async(done);
        }
    }

    pub(super) fn status_of(&self, first_desc: u16) -> u8 {
        self.mem
            .read_obj(GuestAddress(STATUS + u64::from(first_desc)))
            .unwrap()
    }

    pub(super) fn used(&self) -> Vec<(u32, u32)> {
        let n = self.vq.used().idx().load();
        (0..n)
            .map(|i| {
                let e = self.vq.used().ring().ref_at(i as usize).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }
}

#[test]
fn write_then_read_round_trip() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    h.request(VIRTIO_BLK_T_OUT, 3, 1024, false);
    h.request(VIRTIO_BLK_T_IN, 3, 1024, true);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.status_of(3), VIRTIO_BLK_S_OK as u8);
    // Both requests served on one notification, with the right used lengths.
    assert_eq!(h.used(), vec![(0, 1), (3, 1025)]);
    assert_eq!(h.irq.vring.load(Ordering::SeqCst), 1);
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(DATA + 3 * 0x1000))
        .unwrap();
    assert_eq!(back, pattern);
    // And it really reached the file at sector 3.
    let mut f = std::fs::File::open(h.dev.disk.path()).unwrap();
    f.seek(SeekFrom::Start(3 * 512)).unwrap();
    let mut on_disk = vec![0u8; 1024];
    f.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, pattern);
    let m = h.dev.metrics().snapshot();
    assert_eq!(
        (m.read_count, m.write_count, m.read_bytes, m.write_bytes),
        (1, 1, 1024, 1024)
    );
}

#[test]
fn flush_and_get_id() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    h.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
    h.request(VIRTIO_BLK_T_GET_ID, 0, 20, true);
    h.dev.process_queue();
    // GET_ID is answered at once; the flush runs on the flush ring, off the io thread.
    assert_eq!(h.used(), vec![(2, 21)]);
    h.settle();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.status_of(2), VIRTIO_BLK_S_OK as u8);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA + 2 * 0x1000))
        .unwrap();
    assert_eq!(&id[..6], b"rootfs");
    assert!(id[6..].iter().all(|&b| b == 0));
    assert_eq!(h.used(), vec![(2, 21), (0, 1)]);
    assert_eq!(h.dev.metrics().snapshot().flush_count, 1);
}

#[test]
fn unsafe_cache_does_not_offer_or_honour_flush() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |c| c.cache_type = CacheType::Unsafe);
    assert_eq!(h.dev.avail_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    h.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn read_only_drive_refuses_writes() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |c| c.is_read_only = true);
    assert_ne!(h.dev.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    h.request(VIRTIO_BLK_T_OUT, 0, 512, false);
    h.request(VIRTIO_BLK_T_IN, 0, 512, true);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.status_of(3), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.dev.metrics().snapshot().read_only_violations, 1);
}

#[test]
fn capacity_in_config_space() {
    let mem = guest_memory();
    let h = Harness::new(&mem, |_| {});
    let mut cap = [0u8; 8];
    h.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut beyond = [0xaau8; 4];
    h.dev.read_config(1000, &mut beyond);
    assert_eq!(beyond, [0; 4]);
}

/// Each malformed request completes with `expected` and never panics.
fn expect_status(build: impl FnOnce(&mut Harness), expected: u32) {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    build(&mut h);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), expected as u8);
    assert_eq!(h.used().len(), 1);
    assert!(!h.irq.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn malformed_requests_get_an_error_status() {
    // Data buffer outside guest memory.
    expect_status(
        |h| {
            h.header(HDR, VIRTIO_BLK_T_IN, 0);
            h.add_chain(&[
                (HDR, 16, false),
                (0x4000_0000, 512, true),
                (STATUS, 1, true),
            ]);
        },
        VIRTIO_BLK_S_IOERR,
    );
    // Header in a device-writable descriptor.
    expect_status(
        |h| {
            h.header(HDR, VIRTIO_BLK_T_IN, 0);
            h.add_chain(&[(HDR, 16, true), (DATA, 512, true), (STATUS, 1, true)]);
        },
        VIRTIO_BLK_S_IOERR,
    );
    // Header too short.
    expect_status(
        |h| {
            h.header(HDR, VIRTIO_BLK_T_IN, 0);
            h.add_chain(&[(HDR, 8, false), (DATA, 512, true), (STATUS, 1, true)]);
        },
        VIRTIO_BLK_S_IOERR,
    );
    // Zero-length data buffer.
    expect_status(
        |h| h.request(VIRTIO_BLK_T_IN, 0, 0, true),
        VIRTIO_BLK_S_IOERR,
    );
    // Length not a multiple of 512.
    expect_status(
        |h| h.request(VIRTIO_BLK_T_OUT, 0, 100, false),
        VIRTIO_BLK_S_IOERR,
    );
    // Past the end of the disk, and sector arithmetic overflow.
    expect_status(
        |h| h.request(VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 1024, true),
        VIRTIO_BLK_S_IOERR,
    );
    expect_status(
        |h| h.request(VIRTIO_BLK_T_IN, u64::MAX, 512, true),
        VIRTIO_BLK_S_IOERR,
    );
    // Read into a device-readable buffer (wrong direction).
    expect_status(
        |h| h.request(VIRTIO_BLK_T_IN, 0, 512, false),
        VIRTIO_BLK_S_IOERR,
    );
    // Unknown request type.
    expect_status(|h| h.request(0x77, 0, 512, false), VIRTIO_BLK_S_UNSUPP);
    // Discard with the unmap flag (reserved for write-zeroes).
    expect_status(
        |h| {
            h.request(VIRTIO_BLK_T_DISCARD, 0, 16, false);
            h.mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
            h.mem.write_obj(1u32, GuestAddress(DATA + 8)).unwrap();
            h.mem.write_obj(1u32, GuestAddress(DATA + 12)).unwrap();
        },
        VIRTIO_BLK_S_UNSUPP,
    );
}

#[test]
fn chains_without_status_are_dropped() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    // Loop: 0 -> 1 -> 0.
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA, 512, NEXT | WRITE, 0)),
    ];
    h.vq.add_desc_chains(&looped, 0).unwrap();
    // Status byte in a read-only descriptor.
    h.next_desc = 2;
    h.header(HDR + 0x100, VIRTIO_BLK_T_IN, 0);
    h.add_chain(&[
        (HDR + 0x100, 16, false),
        (DATA, 512, true),
        (STATUS, 1, false),
    ]);
    // Status descriptor outside memory.
    h.add_chain(&[
        (HDR + 0x100, 16, false),
        (DATA, 512, true),
        (0x4000_0000, 1, true),
    ]);
    h.dev.process_queue();
    // Each head is given back (length 0) so the driver can reclaim it; nothing is written.
    assert_eq!(h.used(), vec![(0, 0), (2, 0), (5, 0)]);
    assert_eq!(h.dev.metrics().snapshot().dropped_requests, 3);
    assert!(!h.irq.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn corrupt_avail_index_marks_device_needs_reset() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    // The driver claims 100 new entries in a 16-entry queue.
    h.vq.avail().idx().store(100);
    h.dev.process_queue();
    assert!(h.irq.needs_reset.load(Ordering::SeqCst));
    assert_eq!(h.dev.metrics().snapshot().queue_errors, 1);
    // Further notifications do nothing until reset.
    h.dev.process_queue();
    assert_eq!(h.dev.metrics().snapshot().queue_errors, 1);
}

/// A guest breaking its queue, resetting and breaking it again gets one log line per
/// period, not one per round.
#[test]
fn repeatedly_broken_queue_logs_once_per_period() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    for _ in 0..20 {
        h.vq.avail().idx().store(100);
        h.dev.process_queue();
        h.dev.reset();
        h.vq.avail().idx().store(0);
        h.dev
            .activate(ActivateContext {
                mem: mem.clone(),
                interrupt: h.irq.clone(),
                queues: vec![h.vq.create_queue::<Queue>().unwrap()],
                queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            })
            .unwrap();
    }
    assert_eq!(h.dev.metrics().snapshot().queue_errors, 20);
    assert_eq!(h.dev.guest_log.suppressed(), 19);
}

#[test]
fn discard_and_write_zeroes_clear_data() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(h.dev.disk.path())
            .unwrap();
        f.write_all(&vec![0x5a; 8 * 512]).unwrap();
    }
    let seg = |h: &Harness, n: u64, sector: u64, sectors: u32, flags: u32| {
        let a = DATA + n * 0x1000;
        h.mem.write_obj(sector, GuestAddress(a)).unwrap();
        h.mem.write_obj(sectors, GuestAddress(a + 8)).unwrap();
        h.mem.write_obj(flags, GuestAddress(a + 12)).unwrap();
    };
    h.request(VIRTIO_BLK_T_DISCARD, 0, 16, false);
    seg(&h, 0, 0, 2, 0);
    h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, false);
    seg(&h, 3, 4, 2, 0);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.status_of(3), VIRTIO_BLK_S_OK as u8);
    let mut content = Vec::new();
    std::fs::File::open(h.dev.disk.path())
        .unwrap()
        .read_to_end(&mut content)
        .unwrap();
    assert!(content[..1024].iter().all(|&b| b == 0));
    assert!(content[1024..2048].iter().all(|&b| b == 0x5a));
    assert!(content[2048..3072].iter().all(|&b| b == 0));
    assert!(content[3072..4096].iter().all(|&b| b == 0x5a));
}

#[test]
fn update_disk_changes_capacity_and_notifies() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    let bigger = disk_file(DISK_SECTORS * 2);
    h.dev.update_disk(bigger.as_path()).unwrap();
    let mut cap = [0u8; 8];
    h.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS * 2);
    assert_eq!(h.irq.config.load(Ordering::SeqCst), 1);
    // A request past the old end now succeeds.
    h.request(VIRTIO_BLK_T_IN, DISK_SECTORS + 1, 512, true);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    assert!(h
        .dev
        .update_disk(std::path::Path::new("/nonexistent/xenia.img"))
        .is_err());
}

#[test]
fn rate_limiter_defers_then_resumes() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    let clock = Arc::new(ManualClock::default());
    let cfg = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 100,
        }),
    };
    h.dev
        .set_rate_limiter(RateLimiter::with_clock(&cfg, clock.clone()).unwrap());
    h.request(VIRTIO_BLK_T_IN, 0, 512, true);
    h.request(VIRTIO_BLK_T_IN, 1, 512, true);
    h.dev.process_queue();
    assert_eq!(h.used().len(), 1);
    assert!(h.dev.rate_limiter.is_blocked());
    assert_eq!(h.dev.metrics().snapshot().rate_limiter_throttled_events, 1);
    clock.advance_ms(100);
    // What the io loop does when the timerfd fires.
    h.dev.rate_limiter.event_handler();
    h.dev.process_queue();
    assert_eq!(h.used().len(), 2);
    assert_eq!(h.status_of(3), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn async_engine_round_trip() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |c| c.io_engine = IoEngine::Async);
    let pattern = vec![0x3cu8; 4096];
    mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    h.request(VIRTIO_BLK_T_OUT, 8, 4096, false);
    h.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
    h.dev.process_queue();
    let done = h.dev.engine.as_mut().unwrap().drain();
    assert_eq!(done.len(), 2);
    h.dev.complete_async(done);
    h.request(VIRTIO_BLK_T_IN, 8, 4096, true);
    h.dev.process_queue();
    let done = h.dev.engine.as_mut().unwrap().drain();
    h.dev.complete_async(done);
    assert_eq!(h.used().len(), 3);
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.status_of(3), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.status_of(5), VIRTIO_BLK_S_OK as u8);
    let mut back = vec![0u8; 4096];
    mem.read_slice(&mut back, GuestAddress(DATA + 5 * 0x1000))
        .unwrap();
    assert_eq!(back, pattern);
    let m = h.dev.metrics().snapshot();
    assert_eq!((m.write_count, m.flush_count, m.read_count), (1, 1, 1));
}

#[test]
fn reset_stops_serving() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    h.dev.reset();
    assert!(!h.dev.is_activated());
    h.request(VIRTIO_BLK_T_IN, 0, 512, true);
    h.dev.process_queue();
    assert!(h.used().is_empty());
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    use virtio_queue::QueueT;
    let mem = guest_memory();
    let file = disk_file(DISK_SECTORS);
    let mut dev = Block::new(&config(file.as_path())).unwrap();
    dev.set_acked_features(dev.avail_features());
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_event_idx(true);
    let irq = Arc::new(RecordingInterrupt::default());
    dev.activate(ActivateContext {
        mem: mem.clone(),
        interrupt: irq.clone(),
        queues: vec![q],
        queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
    })
    .unwrap();
    let mut h = Harness {
        mem: &mem,
        vq,
        dev,
        irq,
        next_desc: 0,
        _file: file,
    };
    // used_event (after the 16 avail entries) = 1: interrupt only once used idx passes 1.
    let used_event = GuestAddress(h.vq.avail_addr().0 + 4 + 2 * 16);
    mem.write_obj(1u16, used_event).unwrap();
    // Writes (used length 1): the mock's used ring overlaps the avail ring's tail, and a
    // longer used length would land on used_event.
    h.request(VIRTIO_BLK_T_OUT, 0, 512, false);
    h.dev.process_queue();
    assert_eq!(h.used().len(), 1);
    assert_eq!(h.irq.vring.load(Ordering::SeqCst), 0);
    h.request(VIRTIO_BLK_T_OUT, 0, 512, false);
    h.dev.process_queue();
    assert_eq!(h.used().len(), 2);
    assert_eq!(h.irq.vring.load(Ordering::SeqCst), 1);
    // The device published avail_event so the driver can suppress notifications too.
    let avail_event: u16 = mem
        .read_obj(GuestAddress(h.vq.used_addr().0 + 4 + 8 * 16))
        .unwrap();
    assert_eq!(avail_event, 2);
}
