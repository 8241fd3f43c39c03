//! What a hostile or unlucky guest can do to virtio-blk: the advertised limits, indirect
//! descriptors nobody negotiated, status byte placement, flush routing, the io_uring engine's
//! failure paths and restrictions, and raw block devices as backing files.

use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

use super::io_uring::{AsyncEngine, EngineOps};
use super::request::{MAX_DISCARD_SECTORS, SEG_MAX};
use super::tests::*;
use super::*;
use crate::device::{ActivateContext, VirtioDevice};
use crate::test_utils::guest_memory;

/// A read of `segments` one-sector buffers in a 256-entry queue.
fn read_with_segments(h: &mut Harness, segments: u32) {
    let mut descs = vec![(HDR, 16, false)];
    for i in 0..u64::from(segments) {
        descs.push((0x40_0000 + i * 512, 512, true));
    }
    descs.push((STATUS, 1, true));
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    h.add_chain(&descs);
}

#[test]
fn more_data_buffers_than_seg_max_are_refused() {
    let mem = guest_memory();
    let h = Harness::with_queue_size(&mem, 256, |_| {});
    let seg_max = {
        let mut b = [0u8; 4];
        h.dev.read_config(12, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(seg_max, SEG_MAX);
    // A 256-entry queue cannot hold more (header + 254 + status); a larger queue (which the
    // transport refuses) or a parser fed by anything else still must not take more.
    let mut h = Harness::with_queue_size(&mem, 512, |_| {});
    // Big enough that only seg_max can refuse the request.
    let big = disk_file(1024);
    h.dev.update_disk(big.as_path()).unwrap();
    read_with_segments(&mut h, SEG_MAX + 1);
    h.dev.process_queue();
    assert_eq!(h.used(), vec![(0, 1)]);
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.dev.metrics().snapshot().read_count, 0);

    // Exactly seg_max is served.
    let mut h = Harness::with_queue_size(&mem, 256, |_| {});
    h.dev.update_disk(big.as_path()).unwrap();
    read_with_segments(&mut h, SEG_MAX);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.used(), vec![(0, SEG_MAX * 512 + 1)]);
}

#[test]
fn discard_and_write_zeroes_beyond_the_advertised_maximum_are_refused() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    // A disk large enough that only the advertised limit can refuse the range (sparse).
    let big = disk_file(0);
    big.as_file()
        .set_len((u64::from(MAX_DISCARD_SECTORS) + 16) * 512)
        .unwrap();
    h.dev.update_disk(big.as_path()).unwrap();
    let mut b = [0u8; 4];
    h.dev.read_config(36, &mut b);
    assert_eq!(
        u32::from_le_bytes(b),
        MAX_DISCARD_SECTORS,
        "max_discard_sectors"
    );
    h.dev.read_config(48, &mut b);
    assert_eq!(
        u32::from_le_bytes(b),
        MAX_DISCARD_SECTORS,
        "max_write_zeroes_sectors"
    );
    let segment = |h: &Harness, n: u64, sectors: u32| {
        let a = DATA + n * 0x1000;
        h.mem.write_obj(0u64, GuestAddress(a)).unwrap();
        h.mem.write_obj(sectors, GuestAddress(a + 8)).unwrap();
        h.mem.write_obj(0u32, GuestAddress(a + 12)).unwrap();
    };
    for (first, t) in [(0u16, VIRTIO_BLK_T_DISCARD), (3, VIRTIO_BLK_T_WRITE_ZEROES)] {
        h.request(t, 0, 16, false);
        segment(&h, u64::from(first), MAX_DISCARD_SECTORS + 1);
    }
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.status_of(3), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.dev.metrics().snapshot().discard_count, 0);
    // The maximum itself is fine.
    h.request(VIRTIO_BLK_T_DISCARD, 0, 16, false);
    segment(&h, 6, MAX_DISCARD_SECTORS);
    h.dev.process_queue();
    assert_eq!(h.status_of(6), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn indirect_descriptors_are_refused_when_not_negotiated() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    assert_eq!(
        h.dev.avail_features() & (1 << crate::features::VIRTIO_RING_F_INDIRECT_DESC),
        0
    );
    // A well-formed read, but described by an indirect table.
    let table = 0x50_0000u64;
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    let entries = [
        SplitDescriptor::new(HDR, 16, NEXT, 1),
        SplitDescriptor::new(DATA, 512, NEXT | WRITE, 2),
        SplitDescriptor::new(STATUS, 1, WRITE, 0),
    ];
    for (i, d) in entries.iter().enumerate() {
        mem.write_obj(RawDescriptor::from(*d), GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let indirect = RawDescriptor::from(SplitDescriptor::new(table, 48, 4, 0));
    h.vq.add_desc_chains(&[indirect], 0).unwrap();
    h.dev.process_queue();
    // Returned unread: no status written, no data touched.
    assert_eq!(h.used(), vec![(0, 0)]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x77);
    let m = h.dev.metrics().snapshot();
    assert_eq!((m.dropped_requests, m.read_count), (1, 0));
    assert!(!h.irq.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn status_byte_is_the_last_byte_of_the_last_descriptor() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    mem.write_slice(&[0xee; 4], GuestAddress(STATUS)).unwrap();
    h.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 4, true)]);
    h.dev.process_queue();
    let mut status = [0u8; 4];
    mem.read_slice(&mut status, GuestAddress(STATUS)).unwrap();
    assert_eq!(status, [0xee, 0xee, 0xee, VIRTIO_BLK_S_OK as u8]);
    assert_eq!(h.used(), vec![(0, 513)]);
}

#[test]
fn sync_reads_and_writes_leave_the_file_offset_alone() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    mem.write_slice(&[0x11; 1024], GuestAddress(DATA)).unwrap();
    h.request(VIRTIO_BLK_T_OUT, 5, 1024, false);
    h.request(VIRTIO_BLK_T_IN, 5, 1024, true);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.status_of(3), VIRTIO_BLK_S_OK as u8);
    // preadv/pwritev: no seek happened on the shared description.
    let pos = h.dev.disk.file().stream_position().unwrap();
    assert_eq!(pos, 0);
}

#[test]
fn flush_is_unsupported_without_negotiation_on_both_engines() {
    for engine in [IoEngine::Sync, IoEngine::Async] {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, |c| {
            c.io_engine = engine;
            c.cache_type = CacheType::Writeback;
        });
        // The driver did not accept VIRTIO_BLK_F_FLUSH.
        h.dev.reset();
        h.dev
            .set_acked_features(h.dev.avail_features() & !(1 << VIRTIO_BLK_F_FLUSH));
        h.dev
            .activate(ActivateContext {
                mem: mem.clone(),
                interrupt: h.irq.clone(),
                queues: vec![h.vq.create_queue::<virtio_queue::Queue>().unwrap()],
                queue_evts: vec![vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            })
            .unwrap();
        h.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
        h.dev.process_queue();
        h.settle();
        assert_eq!(h.status_of(0), VIRTIO_BLK_S_UNSUPP as u8, "{engine:?}");
        assert_eq!(h.dev.metrics().snapshot().flush_count, 0, "{engine:?}");
    }
}

#[test]
fn a_flush_does_not_hold_up_the_requests_behind_it() {
    // Both engines send a negotiated flush to a ring; the io thread moves on at once.
    for engine in [IoEngine::Sync, IoEngine::Async] {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, |c| {
            c.io_engine = engine;
            c.cache_type = CacheType::Writeback;
        });
        assert_eq!(
            h.dev
                .engine
                .as_ref()
                .map(|e| e.ops().serves(request::RequestKind::Flush)),
            Some(true)
        );
        h.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
        h.request(VIRTIO_BLK_T_GET_ID, 0, 20, true);
        h.dev.process_queue();
        assert_eq!(h.used(), vec![(2, 21)], "{engine:?}");
        h.settle();
        assert_eq!(h.used(), vec![(2, 21), (0, 1)], "{engine:?}");
        assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    }
}

/// A refused `io_uring_enter` after the SQE was queued: the request stays in flight and
/// completes exactly once, when the submission is retried.
#[test]
fn failed_submission_completes_the_request_once() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |c| c.io_engine = IoEngine::Async);
    mem.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    h.dev.engine.as_mut().unwrap().fail_enters = 1;
    h.request(VIRTIO_BLK_T_OUT, 2, 512, false);
    h.dev.process_queue();
    assert!(h.used().is_empty(), "completed although still queued");
    assert_eq!(h.dev.engine.as_ref().unwrap().in_flight(), 1);
    // The loop is woken to retry (the engine signalled its completion fd).
    let done = h.dev.engine.as_mut().unwrap().reap();
    h.dev.complete_async(done);
    h.settle();
    assert_eq!(h.used(), vec![(0, 1)]);
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    let m = h.dev.metrics().snapshot();
    assert_eq!((m.write_count, m.io_errors), (1, 0));
}

/// `drain` keeps waiting through failed waits, and leaks rather than frees when the kernel
/// stays unusable.
#[test]
fn drain_retries_and_leaks_rather_than_frees() {
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |c| c.io_engine = IoEngine::Async);
    h.dev.engine.as_mut().unwrap().fail_enters = 5;
    h.request(VIRTIO_BLK_T_IN, 0, 512, true);
    h.dev.process_queue();
    let done = h.dev.engine.as_mut().unwrap().drain();
    assert_eq!(done.len(), 1);
    assert!(done[0].ok());

    let engine = h.dev.engine.as_mut().unwrap();
    engine.fail_enters = u32::MAX;
    h.request(VIRTIO_BLK_T_IN, 0, 512, true);
    h.dev.process_queue();
    let engine = h.dev.engine.as_mut().unwrap();
    assert_eq!(engine.in_flight(), 1);
    let done = engine.drain();
    assert!(done.is_empty());
    assert_eq!((engine.in_flight(), engine.leaked()), (0, 1));
    // Let the ring go without the real submission ever reaching the kernel.
    engine.fail_enters = 0;
}

/// Ring operations bypass seccomp: the ring takes only its opcodes, only on its fixed file.
#[test]
fn the_ring_refuses_other_opcodes_and_files() {
    let file = disk_file(8);
    let other = disk_file(8);
    let mut engine =
        AsyncEngine::new(8, file.as_file().as_raw_fd(), EngineOps::ReadWriteFlush).unwrap();
    let mut buf = [0u8; 512];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    use ::io_uring::{opcode, squeue::Flags, types};
    let path = c"/etc/hostname";
    let entries = [
        // The engine's own kind of request: allowed.
        opcode::Readv::new(types::Fixed(0), &iov, 1)
            .build()
            .user_data(1),
        // The right opcode on a file that is not the registered one.
        opcode::Readv::new(types::Fd(other.as_file().as_raw_fd()), &iov, 1)
            .build()
            .user_data(2),
        opcode::Nop::new().build().user_data(3),
        opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .build()
            .user_data(4),
        // An allowed opcode with a flag other than FIXED_FILE.
        opcode::Fsync::new(types::Fixed(0))
            .build()
            .flags(Flags::IO_DRAIN)
            .user_data(5),
    ];
    let ring = engine.ring_mut();
    let mut results = Vec::new();
    // One at a time: the kernel stops a batch at the first entry it refuses.
    for e in &entries {
        // SAFETY: `iov`, `buf` and `path` outlive the submit_and_wait below, which waits
        // for this entry's completion.
        unsafe { ring.submission().push(e).unwrap() };
        ring.submit_and_wait(1).unwrap();
        results.extend(ring.completion().map(|c| (c.user_data(), c.result())));
    }
    let eacces = -libc::EACCES;
    assert_eq!(
        results,
        vec![(1, 512), (2, eacces), (3, eacces), (4, eacces), (5, eacces)]
    );
    // A flush-only ring refuses reads too.
    let mut flush_only =
        AsyncEngine::new(8, file.as_file().as_raw_fd(), EngineOps::FlushOnly).unwrap();
    let ring = flush_only.ring_mut();
    let read = opcode::Readv::new(types::Fixed(0), &iov, 1)
        .build()
        .user_data(9);
    // SAFETY: as above.
    unsafe { ring.submission().push(&read).unwrap() };
    ring.submit_and_wait(1).unwrap();
    let r: Vec<i32> = ring.completion().map(|c| c.result()).collect();
    assert_eq!(r, vec![eacces]);
    let _ = (file.as_file().seek(SeekFrom::Start(0)), &mut buf);
}

/// A zram device made for one test (`/sys/class/zram-control`), removed on drop.
struct Zram {
    id: String,
}

impl Zram {
    /// `None` when this kernel has no zram hot-add (skipped then, except under CI).
    fn new(bytes: u64) -> Option<Zram> {
        let id = match std::fs::read_to_string("/sys/class/zram-control/hot_add") {
            Ok(id) => id.trim().to_owned(),
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "zram hot-add unavailable under CI: {e}"
                );
                eprintln!("skipped: no zram hot-add ({e})");
                return None;
            }
        };
        let z = Zram { id };
        std::fs::write(
            format!("/sys/block/zram{}/disksize", z.id),
            bytes.to_string(),
        )
        .unwrap();
        Some(z)
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/dev/zram{}", self.id).into()
    }
}

impl Drop for Zram {
    fn drop(&mut self) {
        // EBUSY while a closed io_uring still releases its fixed-file reference (the kernel
        // tears rings down asynchronously): retry for a bounded time.
        for _ in 0..200 {
            match std::fs::write("/sys/class/zram-control/hot_remove", &self.id) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Ok(()) => return,
                Err(e) => {
                    eprintln!("cannot remove zram{}: {e}", self.id);
                    return;
                }
            }
        }
        eprintln!("zram{} still busy; left behind", self.id);
    }
}

/// A raw block device is a drive, as with Firecracker: its capacity is where its end is
/// (its inode size is 0), and requests reach it.
#[test]
fn a_block_device_is_accepted_with_its_real_capacity() {
    let Some(zram) = Zram::new(1 << 20) else {
        return;
    };
    let disk = file::DiskFile::open(&zram.path(), false, "raw").unwrap();
    assert_eq!(disk.nsectors(), 2048);
    drop(disk);
    let mem = guest_memory();
    let mut h = Harness::new(&mem, |_| {});
    h.dev.update_disk(&zram.path()).unwrap();
    assert_eq!(h.dev.capacity(), 2048);
    mem.write_slice(&[0xa7; 1024], GuestAddress(DATA)).unwrap();
    h.request(VIRTIO_BLK_T_OUT, 2040, 1024, false);
    h.request(VIRTIO_BLK_T_IN, 2040, 1024, true);
    h.dev.process_queue();
    assert_eq!(h.status_of(0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.status_of(3), VIRTIO_BLK_S_OK as u8);
    let mut back = [0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(DATA + 3 * 0x1000))
        .unwrap();
    assert_eq!(back, [0xa7; 1024]);
}

#[test]
fn a_character_device_is_not_a_drive() {
    let e = file::DiskFile::open(std::path::Path::new("/dev/null"), false, "null").unwrap_err();
    assert!(matches!(e, file::DiskError::NotADisk { .. }), "{e}");
    assert!(e.to_string().contains("/dev/null"), "{e}");
}
