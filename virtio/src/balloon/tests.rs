use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::queues::MAX_PFNS_PER_CHAIN;
use super::*;
use crate::test_utils::{guest_memory, RecordingInterrupt};
use crate::GuestMemoryMmap;

const WRITE: u16 = 2;
/// Where the PFN arrays live.
const PFNS: u64 = 0x20_0000;
/// Guest pages the tests inflate (filled with a pattern first).
const VICTIM: u64 = 0x40_0000;
const QUEUE_BASES: [u64; 4] = [0x0, 0x1_0000, 0x2_0000, 0x3_0000];

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    vqs: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    dev: Balloon,
    irq: Arc<RecordingInterrupt>,
    next_desc: Vec<u16>,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap, config: BalloonConfig) -> Self {
        let mut dev = Balloon::new(config).unwrap();
        let n = dev.queue_max_sizes().len();
        let vqs: Vec<_> = QUEUE_BASES[..n]
            .iter()
            .map(|&b| MockSplitQueue::create(mem, GuestAddress(b), 16))
            .collect();
        let irq = Arc::new(RecordingInterrupt::default());
        dev.set_acked_features(dev.avail_features());
        dev.activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            queues: vqs
                .iter()
                .map(|q| q.create_queue::<Queue>().unwrap())
                .collect(),
            queue_evts: (0..n)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
        })
        .unwrap();
        Harness {
            mem,
            vqs,
            dev,
            irq,
            next_desc: vec![0; n],
        }
    }

    /// Adds a one-descriptor chain to queue `q`.
    fn add(&mut self, q: usize, addr: u64, len: u32, writable: bool) {
        let start = self.next_desc[q];
        let d = SplitDescriptor::new(addr, len, if writable { WRITE } else { 0 }, 0);
        self.vqs[q]
            .add_desc_chains(&[RawDescriptor::from(d)], start)
            .unwrap();
        self.next_desc[q] += 1;
    }

    /// Writes `pfns` at `at` and posts them on queue `q` as one chain.
    fn post_pfns(&mut self, q: usize, at: u64, pfns: &[u32]) {
        for (i, p) in pfns.iter().enumerate() {
            self.mem
                .write_obj(*p, GuestAddress(at + 4 * i as u64))
                .unwrap();
        }
        self.add(q, at, 4 * pfns.len() as u32, false);
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj::<u16>(self.vqs[q].used_addr().unchecked_add(2))
            .unwrap()
    }

    fn m(&self) -> BalloonMetricsSnapshot {
        self.dev.metrics().snapshot()
    }
}

fn stats_config() -> BalloonConfig {
    BalloonConfig {
        amount_mib: 4,
        deflate_on_oom: true,
        stats_polling_interval_s: 1,
        free_page_reporting: true,
    }
}

fn fill(mem: &GuestMemoryMmap, addr: u64, len: usize) {
    mem.write_slice(&vec![0xa5u8; len], GuestAddress(addr))
        .unwrap();
}

fn is_zero(mem: &GuestMemoryMmap, addr: u64, len: usize) -> bool {
    let mut b = vec![0xffu8; len];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b.iter().all(|&x| x == 0)
}

#[test]
fn inflated_pages_are_released_and_deflate_releases_nothing() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, BalloonConfig::default());
    fill(&mem, VICTIM, 4 * 4096);
    let first = (VICTIM / 4096) as u32;
    // Pages 0 and 1, then 3: two runs; page 2 stays.
    h.post_pfns(0, PFNS, &[first, first + 1, first + 3]);
    h.dev.process_queue(0);
    assert_eq!(h.used_idx(0), 1);
    assert!(is_zero(&mem, VICTIM, 2 * 4096));
    assert!(!is_zero(&mem, VICTIM + 2 * 4096, 4096));
    assert!(is_zero(&mem, VICTIM + 3 * 4096, 4096));
    let m = h.m();
    assert_eq!(
        (m.inflate_count, m.pages_released, m.invalid_pfns),
        (1, 3, 0)
    );
    fill(&mem, VICTIM, 4096);
    h.post_pfns(1, PFNS + 0x1000, &[first]);
    h.dev.process_queue(1);
    assert_eq!(h.used_idx(1), 1);
    assert!(
        !is_zero(&mem, VICTIM, 4096),
        "deflate must not touch the page"
    );
    assert_eq!((h.m().deflate_count, h.m().pages_released), (1, 3));
    assert!(h.irq.vring.load(Ordering::SeqCst) >= 2);
}

#[test]
fn hostile_pfns_and_chains_are_refused_and_counted() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, BalloonConfig::default());
    fill(&mem, VICTIM, 4096);
    let good = (VICTIM / 4096) as u32;
    // 16 MiB of memory: PFN 0x1000 is the first page past it; u32::MAX is far past it.
    h.post_pfns(0, PFNS, &[0x1000, u32::MAX, good]);
    // Odd length, a device-writable buffer, a buffer outside memory.
    h.add(0, PFNS, 6, false);
    h.add(0, PFNS, 8, true);
    h.add(0, 0x1_0000_0000, 8, false);
    // More PFNs than a chain may carry (the buffer is in memory: 16 MiB covers it).
    h.add(0, 0x80_0000, 4 * (MAX_PFNS_PER_CHAIN as u32 + 1), false);
    h.dev.process_queue(0);
    assert_eq!(h.used_idx(0), 5, "every chain is answered");
    let m = h.m();
    assert_eq!(m.invalid_pfns, 2);
    assert_eq!(m.invalid_requests, 4);
    assert_eq!(m.pages_released, 1);
    assert_eq!(m.queue_errors, 0);
    assert!(is_zero(&mem, VICTIM, 4096));
    assert!(!h.irq.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn statistics_are_parsed_held_and_handed_back_on_the_timer() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, stats_config());
    let stats = 0x50_0000;
    let mut buf = Vec::new();
    for (tag, val) in [(4u16, 7u64 << 20), (5, 64 << 20), (3, 42)] {
        buf.extend_from_slice(&tag.to_le_bytes());
        buf.extend_from_slice(&val.to_le_bytes());
    }
    mem.write_slice(&buf, GuestAddress(stats)).unwrap();
    h.add(2, stats, buf.len() as u32, false);
    h.dev.process_queue(2);
    assert_eq!(h.used_idx(2), 0, "the stats buffer is held");
    let s = h.dev.statistics().unwrap();
    assert_eq!(
        (s.free_memory, s.total_memory, s.minor_faults),
        (Some(7 << 20), Some(64 << 20), Some(42))
    );
    assert_eq!((s.target_pages, s.target_mib, s.actual_mib), (1024, 4, 0));
    h.dev.request_stats();
    assert_eq!(h.used_idx(2), 1, "the poll hands it back");
    assert_eq!(h.m().stats_updates_count, 1);
    // A buffer too large for the tags there are is refused, not read without bound.
    h.add(2, stats, 10 * 1000, false);
    h.dev.process_queue(2);
    assert_eq!(h.m().stats_update_fails, 1);
}

#[test]
fn reported_free_ranges_are_released() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, stats_config());
    fill(&mem, VICTIM, 8 * 4096);
    h.add(3, VICTIM, 8 * 4096, true);
    h.add(3, VICTIM + 1, 4096, true); // not page-aligned
    h.dev.process_queue(3);
    assert_eq!(h.used_idx(3), 2);
    assert!(is_zero(&mem, VICTIM, 8 * 4096));
    let m = h.m();
    assert_eq!(
        (m.reporting_count, m.pages_released, m.invalid_pfns),
        (2, 8, 1)
    );
}

#[test]
fn target_actual_and_statistics_settings() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, stats_config());
    let mut c = [0u8; 8];
    h.dev.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes([c[0], c[1], c[2], c[3]]), 1024);
    h.dev.write_config(4, &512u32.to_le_bytes());
    assert_eq!(h.dev.actual_pages(), 512);
    // num_pages belongs to the device.
    h.dev.write_config(0, &1u32.to_le_bytes());
    assert_eq!(h.dev.target_pages(), 1024);
    let before = h.irq.config.load(Ordering::SeqCst);
    h.dev.update_target(8).unwrap();
    assert_eq!(h.dev.target_pages(), 2048);
    assert_eq!(h.irq.config.load(Ordering::SeqCst), before + 1);
    assert!(h.dev.update_stats_interval(5).is_ok());
    assert!(matches!(
        h.dev.update_stats_interval(0),
        Err(BalloonError::StatsToggle)
    ));
    let off = Balloon::new(BalloonConfig::default()).unwrap();
    assert!(matches!(off.statistics(), Err(BalloonError::StatsDisabled)));
    assert_eq!(off.queue_max_sizes().len(), 2);
    assert_eq!(off.device_type(), 5);
}

#[test]
fn queue_numbers_follow_the_accepted_features() {
    let all = QueueLayout::for_features((1 << feature::STATS_VQ) | (1 << feature::PAGE_REPORTING));
    assert_eq!((all.stats, all.reporting), (Some(2), Some(3)));
    // A driver that did not accept statistics numbers the reporting queue 2.
    let rep = QueueLayout::for_features(1 << feature::PAGE_REPORTING);
    assert_eq!((rep.stats, rep.reporting), (None, Some(2)));
}

mod persist {
    use super::*;
    use crate::persist::VirtioPersist;

    fn stats_buffer(mem: &GuestMemoryMmap, at: u64, minor: u64) -> u32 {
        let mut buf = Vec::new();
        for (tag, val) in [(3u16, minor), (5, 64 << 20)] {
            buf.extend_from_slice(&tag.to_le_bytes());
            buf.extend_from_slice(&val.to_le_bytes());
        }
        mem.write_slice(&buf, GuestAddress(at)).unwrap();
        buf.len() as u32
    }

    #[test]
    fn the_held_stats_buffer_sizes_and_stats_survive_a_save_and_restore() {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, stats_config());
        let len = stats_buffer(&mem, 0x50_0000, 7);
        h.add(2, 0x50_0000, len, false);
        h.dev.process_queue(2);
        h.dev.write_config(4, &100u32.to_le_bytes());
        let state = h.dev.save_state();
        assert_eq!(state.stats_head, Some(0));
        assert_eq!((state.target_pages, state.actual_pages), (1024, 100));
        let text = serde_json::to_string(&state).unwrap();
        let back: BalloonState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);

        // A fresh device built from the same configuration takes the state, then the
        // transport re-activates it with the saved queues.
        let mut fresh = Balloon::new(stats_config()).unwrap();
        fresh.validate_state(&state).unwrap();
        fresh.restore_state(&state).unwrap();
        fresh.set_acked_features(state.virtio.acked_features);
        let irq = Arc::new(RecordingInterrupt::default());
        let queues = state
            .virtio
            .queues
            .iter()
            .map(|q| Queue::try_from(virtio_queue::QueueState::from(*q)).unwrap())
            .collect();
        fresh
            .activate(ActivateContext {
                mem: mem.clone(),
                interrupt: irq,
                queues,
                queue_evts: (0..4)
                    .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                    .collect(),
            })
            .unwrap();
        assert_eq!(fresh.actual_pages(), 100);
        assert_eq!(fresh.statistics().unwrap().minor_faults, Some(7));
        // The held buffer goes back to the guest at the next poll.
        fresh.request_stats();
        assert_eq!(h.used_idx(2), 1);
    }

    #[test]
    fn bad_states_are_refused_by_field() {
        let mem = guest_memory();
        let h = Harness::new(&mem, stats_config());
        let mut state = h.dev.save_state();
        state.stats_head = Some(16);
        let e = h.dev.validate_state(&state).unwrap_err().to_string();
        assert!(e.contains("balloon.stats_head") && e.contains("16"), "{e}");
        let plain = Balloon::new(BalloonConfig::default()).unwrap();
        let mut state = plain.save_state();
        state.stats_head = Some(0);
        assert_eq!(
            plain.validate_state(&state),
            Err(BalloonStateError::StatsHeadInactive)
        );
        let mut state = h.dev.save_state();
        state.virtio.device_type = 4;
        let e = h.dev.validate_state(&state).unwrap_err().to_string();
        assert!(e.contains("balloon.virtio.device_type"), "{e}");
        let rng = crate::rng::Rng::new(None).unwrap();
        let mut rs = rng.save_state();
        rs.virtio.acked_features = 1 << 40;
        let e = rng.validate_state(&rs).unwrap_err().to_string();
        assert!(e.contains("entropy.virtio.acked_features"), "{e}");
    }
}

/// Guest memory mapped `MAP_PRIVATE` from a file full of 0xa5, as a restored VM's is.
fn file_backed_memory(file: &std::fs::File) -> GuestMemoryMmap {
    use vm_memory::bitmap::AtomicBitmap;
    use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
    use vm_memory::{FileOffset, GuestRegionMmap};
    let len = 0x100_0000usize;
    let mapping = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
        .with_file_offset(FileOffset::new(file.try_clone().unwrap(), 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .unwrap();
    GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(mapping, GuestAddress(0)).unwrap()])
        .unwrap()
}

#[test]
fn pages_of_a_memory_file_read_zero_after_inflating_not_the_files_contents() {
    use std::io::Write;
    let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let mut f = tmp.as_file();
    f.write_all(&vec![0xa5u8; 0x100_0000]).unwrap();
    let mem = file_backed_memory(tmp.as_file());
    // The queue rings live in this memory: clear what they need before the harness uses it.
    mem.write_slice(&vec![0u8; 0x40_000], GuestAddress(0))
        .unwrap();
    let mut h = Harness::new(&mem, BalloonConfig::default());
    let first = (VICTIM / 4096) as u32;
    // A page the guest wrote (a private copy) and one it only read (the file's page).
    mem.write_obj(0x1234u64, GuestAddress(VICTIM)).unwrap();
    h.post_pfns(0, PFNS, &[first, first + 1]);
    h.dev.process_queue(0);
    assert_eq!(h.m().pages_released, 2, "{:?}", h.m());
    assert!(is_zero(&mem, VICTIM, 2 * 4096));
    // Neighbours keep the file's contents and the file is untouched.
    assert!(!is_zero(&mem, VICTIM + 2 * 4096, 4096));
    let mut on_disk = [0u8; 16];
    std::os::unix::fs::FileExt::read_exact_at(tmp.as_file(), &mut on_disk, VICTIM).unwrap();
    assert_eq!(on_disk, [0xa5; 16]);
}
