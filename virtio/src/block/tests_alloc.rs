//! The data path allocates nothing per request once warm: reads and writes driven through the
//! device (sync and io_uring engines) under the crate's counting allocator.
//!
//! The ring is laid out by hand ([`RawRing`]): the mock queue of `virtio-queue` places its
//! used ring over the upper half of its available ring, which only works while no more
//! than half the ring has ever been used.

use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::tests::{config, disk_file, DATA, DISK_SECTORS, HDR, STATUS};
use super::*;
use crate::device::{ActivateContext, VirtioDevice};
use crate::net::test_utils::wait_readable;
use crate::test_alloc::allocations;
use crate::test_rings::RawRing;
use crate::test_utils::{guest_memory, RecordingInterrupt};
use crate::GuestMemoryMmap;

const WRITE: u16 = 2;
const QUEUE_SIZE: u16 = 16;
/// Requests before counting: the first ones may size what the device keeps (the io_uring
/// engine's iovec arrays, one per ring entry used).
const WARM_UP: u32 = 64;
const COUNTED: u32 = 2_000;

fn active_block(mem: &GuestMemoryMmap, engine: IoEngine, path: &std::path::Path) -> Block {
    let mut cfg = config(path);
    cfg.io_engine = engine;
    // No flush ring for the sync engine: only reads and writes are counted.
    cfg.cache_type = CacheType::Unsafe;
    let mut dev = Block::new(&cfg).unwrap();
    dev.set_acked_features(dev.avail_features() & !(1 << crate::features::VIRTIO_RING_F_EVENT_IDX));
    let q = RawRing::at(0, QUEUE_SIZE).queue();
    dev.activate(ActivateContext {
        mem: mem.clone(),
        interrupt: Arc::new(RecordingInterrupt::default()),
        queues: vec![q],
        queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
    })
    .unwrap();
    dev
}

/// Posts one 4 KiB request (alternately a write and a read of sector 8), lets the device
/// serve it and checks it completed with status 0.
fn one_request(dev: &mut Block, mem: &GuestMemoryMmap, i: u32) {
    let ring = RawRing::at(0, QUEUE_SIZE);
    let read = i % 2 == 1;
    let t = if read {
        VIRTIO_BLK_T_IN
    } else {
        VIRTIO_BLK_T_OUT
    };
    mem.write_obj(t, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(8u64, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let before = ring.used_idx(mem);
    let data_flags = if read { WRITE } else { 0 };
    ring.add_chain(
        mem,
        0,
        &[(HDR, 16, 0), (DATA, 4096, data_flags), (STATUS, 1, WRITE)],
    );
    dev.process_queue();
    if let Some(fd) = dev.engine.as_ref().map(|e| e.completion_fd()) {
        while ring.used_idx(mem) == before {
            assert!(wait_readable(fd, std::time::Duration::from_secs(10)));
            dev.on_async_completions();
        }
    }
    assert_eq!(ring.used_idx(mem), before.wrapping_add(1), "request {i}");
    let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(status, 0, "request {i}: {:?}", dev.metrics);
}

/// Allocations made by `COUNTED` requests after the warm-up.
fn allocations_in_steady_state(engine: IoEngine) -> u64 {
    let mem = guest_memory();
    let file = disk_file(DISK_SECTORS);
    let mut dev = active_block(&mem, engine, file.as_path());
    for i in 0..WARM_UP {
        one_request(&mut dev, &mem, i);
    }
    let before = allocations();
    for i in WARM_UP..WARM_UP + COUNTED {
        one_request(&mut dev, &mem, i);
    }
    let n = allocations() - before;
    assert_eq!(
        dev.metrics
            .read_count
            .load(std::sync::atomic::Ordering::Relaxed),
        u64::from((WARM_UP + COUNTED) / 2)
    );
    n
}

#[test]
fn sync_reads_and_writes_allocate_nothing_in_steady_state() {
    assert_eq!(allocations_in_steady_state(IoEngine::Sync), 0);
}

#[test]
fn io_uring_reads_and_writes_allocate_nothing_in_steady_state() {
    assert_eq!(allocations_in_steady_state(IoEngine::Async), 0);
}

#[test]
fn the_counter_sees_an_allocation() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert_eq!(allocations() - before, 1);
    drop(v);
}
