//! Save → restore of the transport, the queues and a block device, and every refusal.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

use devices::BusDevice;
use virtio_bindings::bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use crate::block::{
    Block, BlockConfig, BlockState, BlockStateError, CacheType, ImageFormat, IoEngine,
};
use crate::device::VirtioDevice;
use crate::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::mmio::status::*;
use crate::persist::*;
use crate::test_rings::{bring_up, RawRing};
use crate::test_utils::guest_memory;
use crate::{GuestMemoryMmap, MmioTransport, MmioTransportState, TransportStateError};

const QSIZE: u16 = 16;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const SECTORS: u64 = 64;

fn disk() -> TempFile {
    let f = TempFile::new_with_prefix("/tmp/xenia-persist-test").unwrap();
    f.as_file().set_len(SECTORS * 512).unwrap();
    f
}

fn block(path: &std::path::Path) -> Arc<Mutex<Block>> {
    Arc::new(Mutex::new(
        Block::new(&BlockConfig {
            drive_id: "rootfs".into(),
            path_on_host: path.to_path_buf(),
            is_read_only: false,
            cache_type: CacheType::Writeback,
            io_engine: IoEngine::Sync,
            rate_limiter: None,
            image_format: ImageFormat::Raw,
        })
        .unwrap(),
    ))
}

/// Queue 0 of the block device: 16 entries from guest address 0.
fn ring() -> RawRing {
    RawRing::at(0, QSIZE)
}

/// Posts a write of `data` at `sector` with descriptors 3n..3n+2.
fn post_write(mem: &GuestMemoryMmap, n: u16, sector: u64, data: &[u8]) {
    let k = u64::from(n);
    let (hdr, buf, status) = (HDR + k * 0x100, DATA + k * 0x1000, STATUS + k);
    mem.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(hdr)).unwrap();
    mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    mem.write_slice(data, GuestAddress(buf)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    ring().add_chain(
        mem,
        n * 3,
        &[(hdr, 16, 0), (buf, data.len() as u32, 0), (status, 1, 2)],
    );
}

fn on_disk(path: &std::path::Path, sector: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(sector * 512)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

/// A saved, activated block device that served one request with EVENT_IDX negotiated.
struct Saved {
    mem: GuestMemoryMmap,
    file: TempFile,
    transport: MmioTransportState,
    block: BlockState,
}

fn saved() -> Saved {
    let mem = guest_memory();
    let file = disk();
    let dev = block(file.as_path());
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    let features = dev.lock().unwrap().avail_features();
    assert_ne!(features & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    bring_up(&mut t, features, &[ring()]);
    assert!(dev.lock().unwrap().is_activated());
    post_write(&mem, 0, 1, &[0xa5; 512]);
    dev.lock().unwrap().process_queue();
    assert_eq!(ring().used_idx(&mem), 1);
    let (transport, block) = {
        let mut d = dev.lock().unwrap();
        d.quiesce();
        (t.save_state(), d.save_state())
    };
    Saved {
        mem,
        file,
        transport,
        block,
    }
}

/// A fresh device and transport over the same memory and image, as the VMM builds them.
fn fresh(s: &Saved) -> (Arc<Mutex<Block>>, MmioTransport) {
    let dev = block(s.file.as_path());
    let t = MmioTransport::new(s.mem.clone(), dev.clone()).unwrap();
    (dev, t)
}

fn restore(
    s: &Saved,
    tstate: &MmioTransportState,
    bstate: &BlockState,
) -> Result<(Arc<Mutex<Block>>, MmioTransport), TransportStateError> {
    let (dev, mut t) = fresh(s);
    {
        let mut d = dev.lock().unwrap();
        d.restore_state(bstate).unwrap();
        t.restore_state(tstate, &mut *d, &bstate.virtio)?;
    }
    Ok((dev, t))
}

#[test]
fn restored_block_device_serves_the_next_request_from_the_saved_ring_position() {
    let s = saved();
    let q = &s.block.virtio.queues[0];
    assert!(s.block.virtio.activated && q.ready && q.event_idx_enabled);
    assert_eq!((q.next_avail, q.next_used), (1, 1));

    // The states survive serialisation unchanged.
    let json = serde_json::to_string(&(&s.transport, &s.block)).unwrap();
    let (tstate, bstate): (MmioTransportState, BlockState) = serde_json::from_str(&json).unwrap();
    assert_eq!((&tstate, &bstate), (&s.transport, &s.block));

    let (dev, t) = restore(&s, &tstate, &bstate).unwrap();
    assert!(dev.lock().unwrap().is_activated());
    // Round trip: saving the restored pair gives the same states.
    assert_eq!(t.save_state(), s.transport);
    assert_eq!(dev.lock().unwrap().save_state(), s.block);

    // The guest posts the next request on the same ring; the restored device takes it from
    // entry 1, writes the image and fills used entry 1.
    post_write(&s.mem, 1, 5, &[0x3c; 1024]);
    assert_eq!(t.kick().unwrap(), 1);
    assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
    dev.lock().unwrap().process_queue();
    assert_eq!(ring().used_idx(&s.mem), 2);
    assert_eq!(ring().used_elem(&s.mem, 1), (3, 1));
    assert_eq!(
        s.mem.read_obj::<u8>(GuestAddress(STATUS + 1)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    assert_eq!(on_disk(s.file.as_path(), 5, 1024), vec![0x3c; 1024]);
    assert_eq!(on_disk(s.file.as_path(), 1, 512), vec![0xa5; 512]);
}

#[test]
fn a_device_the_driver_never_started_restores_idle() {
    let mem = guest_memory();
    let file = disk();
    let dev = block(file.as_path());
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    for status in [ACKNOWLEDGE, ACKNOWLEDGE | DRIVER] {
        t.write(0x70, &status.to_le_bytes());
    }
    let s = Saved {
        mem,
        file,
        transport: t.save_state(),
        block: dev.lock().unwrap().save_state(),
    };
    assert!(!s.block.virtio.activated && s.block.virtio.queues.is_empty());
    let (dev2, t2) = restore(&s, &s.transport, &s.block).unwrap();
    assert!(!dev2.lock().unwrap().is_activated());
    assert_eq!(t2.save_state(), s.transport);
    assert_eq!(t2.kick().unwrap(), 0);
}

#[test]
fn a_device_that_needs_reset_stays_stopped_after_restore() {
    let mut s = saved();
    s.transport.needs_reset = true;
    s.transport.interrupt_status = 2;
    let (dev, t) = restore(&s, &s.transport, &s.block).unwrap();
    assert!(!dev.lock().unwrap().is_activated());
    assert!(!t.is_live());
    assert_ne!(t.device_status() & DEVICE_NEEDS_RESET, 0);
    assert_eq!(t.kick().unwrap(), 0);
}

#[test]
fn kick_re_raises_a_pending_interrupt() {
    let mut s = saved();
    s.transport.interrupt_status = 1;
    let (_dev, t) = restore(&s, &s.transport, &s.block).unwrap();
    let _ = t.irq_evt().read();
    t.kick().unwrap();
    assert_eq!(t.irq_evt().read().unwrap(), 1);
}

/// Changes one field of a good (transport, block) state pair.
type Mutation = Box<dyn Fn(&mut MmioTransportState, &mut BlockState)>;

#[test]
fn every_invalid_transport_or_queue_field_is_refused_before_anything_is_applied() {
    let s = saved();
    let version = 1u64 << VIRTIO_F_VERSION_1;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "status skips FEATURES_OK",
            Box::new(|t, _| t.device_status = ACKNOWLEDGE | DRIVER | DRIVER_OK),
            "device_status",
        ),
        (
            "status with NEEDS_RESET bit",
            Box::new(|t, _| t.device_status |= DEVICE_NEEDS_RESET),
            "device_status",
        ),
        (
            "interrupt bits",
            Box::new(|t, _| t.interrupt_status = 4),
            "interrupt_status",
        ),
        (
            "unoffered feature",
            Box::new(|t, _| t.driver_features |= 1 << 40),
            "driver_features",
        ),
        (
            "no VERSION_1",
            Box::new(move |t, b| {
                t.driver_features &= !version;
                b.virtio.acked_features &= !version;
            }),
            "VIRTIO_F_VERSION_1",
        ),
        (
            "unknown features",
            Box::new(|t, _| t.unknown_features_accepted = true),
            "unknown_features_accepted",
        ),
        (
            "acked differs",
            Box::new(|_, b| b.virtio.acked_features &= !(1 << VIRTIO_RING_F_EVENT_IDX)),
            "acked_features",
        ),
        (
            "queue count",
            Box::new(|t, _| t.queues.push(t.queues[0])),
            "transport.queues",
        ),
        (
            "queue max",
            Box::new(|t, _| t.queues[0].max_size = 512),
            "queues[0].max_size",
        ),
        (
            "regs misaligned",
            Box::new(|t, _| t.queues[0].desc_table += 8),
            "transport.queues[0]",
        ),
        (
            "regs outside memory",
            Box::new(|t, _| t.queues[0].used_ring = 0x1_0000_0000),
            "transport.queues[0]",
        ),
        (
            "ready before FEATURES_OK",
            Box::new(|t, b| {
                t.device_status = ACKNOWLEDGE | DRIVER;
                b.virtio.acked_features = 0;
                b.virtio.activated = false;
                b.virtio.queues.clear();
            }),
            "ready",
        ),
        (
            "activated without DRIVER_OK",
            Box::new(|t, _| t.device_status &= !DRIVER_OK),
            "DRIVER_OK",
        ),
        (
            "DRIVER_OK without activation",
            Box::new(|_, b| {
                b.virtio.activated = false;
                b.virtio.queues.clear();
            }),
            "device.activated",
        ),
        (
            "live size not a power of two",
            Box::new(|_, b| b.virtio.queues[0].size = 12),
            "queues[0].size",
        ),
        (
            "live size above max",
            Box::new(|_, b| b.virtio.queues[0].size = 512),
            "queues[0].size",
        ),
        (
            "live max",
            Box::new(|_, b| b.virtio.queues[0].max_size = 128),
            "queues[0].max_size",
        ),
        (
            "live not ready",
            Box::new(|_, b| b.virtio.queues[0].ready = false),
            "queues[0].ready",
        ),
        (
            "live avail misaligned",
            Box::new(|_, b| b.virtio.queues[0].avail_ring += 1),
            "queues[0].avail_ring",
        ),
        (
            "live used misaligned",
            Box::new(|_, b| b.virtio.queues[0].used_ring += 2),
            "queues[0].used_ring",
        ),
        (
            "live outside memory",
            Box::new(|_, b| b.virtio.queues[0].desc_table = 0xfff_fff0),
            "guest memory",
        ),
        (
            "live event idx",
            Box::new(|_, b| b.virtio.queues[0].event_idx_enabled = false),
            "event_idx_enabled",
        ),
        (
            "indices",
            Box::new(|_, b| {
                b.virtio.queues[0].next_avail = b.virtio.queues[0].next_used.wrapping_add(QSIZE + 1)
            }),
            "next_avail",
        ),
        (
            "live differs from regs",
            Box::new(|_, b| b.virtio.queues[0].size = 8),
            "queues[0].size",
        ),
        (
            "live rings differ from regs",
            Box::new(|_, b| b.virtio.queues[0].used_ring += 0x1000),
            "queues[0].used_ring",
        ),
    ];
    for (what, mutate, field) in cases {
        let (mut tstate, mut bstate) = (s.transport.clone(), s.block.clone());
        mutate(&mut tstate, &mut bstate);
        let (dev, mut t) = fresh(&s);
        let before = t.save_state();
        let mut d = dev.lock().unwrap();
        let err = match d.validate_state(&bstate) {
            Err(e) => e.to_string(),
            Ok(()) => match t.restore_state(&tstate, &mut *d, &bstate.virtio) {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{what}: accepted"),
            },
        };
        assert!(
            err.contains(field),
            "{what}: `{err}` does not name `{field}`"
        );
        assert!(!d.is_activated(), "{what}: device activated");
        assert_eq!(d.acked_features(), 0, "{what}: features applied");
        assert_eq!(t.save_state(), before, "{what}: transport changed");
    }
}

#[test]
fn block_state_must_match_the_rebuilt_drive() {
    let s = saved();
    let (dev, _) = fresh(&s);
    let d = dev.lock().unwrap();
    let mut b = s.block.clone();
    b.capacity += 8;
    assert_eq!(
        d.validate_state(&b).unwrap_err(),
        BlockStateError::Capacity {
            saved: SECTORS + 8,
            now: SECTORS
        }
    );
    let mut b = s.block.clone();
    b.read_only = true;
    assert!(matches!(
        d.validate_state(&b),
        Err(BlockStateError::ReadOnly { .. })
    ));
    let mut b = s.block.clone();
    b.virtio.device_type = 1;
    assert_eq!(
        d.validate_state(&b).unwrap_err(),
        BlockStateError::Virtio(VirtioStateError::DeviceType {
            got: 1,
            expected: 2
        })
    );
    let mut b = s.block.clone();
    b.virtio.acked_features |= 1 << 50;
    assert!(matches!(
        d.validate_state(&b),
        Err(BlockStateError::Virtio(VirtioStateError::FeaturesNotOffered { extra, .. })) if extra == 1 << 50
    ));
    let mut b = s.block.clone();
    b.virtio.queues.push(b.virtio.queues[0]);
    assert_eq!(
        d.validate_state(&b).unwrap_err(),
        BlockStateError::Virtio(VirtioStateError::QueueCount {
            got: 2,
            expected: 1
        })
    );
    let mut b = s.block.clone();
    b.virtio.activated = false;
    assert_eq!(
        d.validate_state(&b).unwrap_err(),
        BlockStateError::Virtio(VirtioStateError::QueuesWithoutActivation { got: 1 })
    );
}

#[test]
fn restore_queue_names_each_bad_field() {
    let mem = guest_memory();
    let good = QueueState {
        max_size: 16,
        next_avail: 3,
        next_used: 2,
        event_idx_enabled: true,
        size: 8,
        ready: true,
        desc_table: 0x1000,
        avail_ring: 0x2000,
        used_ring: 0x3000,
    };
    let q = restore_queue(0, &good, 16, true, &mem).unwrap();
    assert_eq!(QueueState::of(&q), good);
    let check = |mutate: fn(&mut QueueState), want: QueueStateError| {
        let mut bad = good;
        mutate(&mut bad);
        assert_eq!(restore_queue(2, &bad, 16, true, &mem).unwrap_err(), want);
    };
    check(
        |q| q.max_size = 32,
        QueueStateError::MaxSize {
            index: 2,
            got: 32,
            expected: 16,
        },
    );
    check(|q| q.ready = false, QueueStateError::NotReady { index: 2 });
    check(
        |q| q.size = 0,
        QueueStateError::Size {
            index: 2,
            size: 0,
            max: 16,
        },
    );
    check(
        |q| q.size = 6,
        QueueStateError::Size {
            index: 2,
            size: 6,
            max: 16,
        },
    );
    check(
        |q| q.size = 32,
        QueueStateError::Size {
            index: 2,
            size: 32,
            max: 16,
        },
    );
    check(
        |q| q.desc_table = 0x1008,
        QueueStateError::Alignment {
            index: 2,
            field: "desc_table",
            addr: 0x1008,
            align: 16,
        },
    );
    check(
        |q| q.avail_ring = 0x2001,
        QueueStateError::Alignment {
            index: 2,
            field: "avail_ring",
            addr: 0x2001,
            align: 2,
        },
    );
    check(
        |q| q.used_ring = 0x3002,
        QueueStateError::Alignment {
            index: 2,
            field: "used_ring",
            addr: 0x3002,
            align: 4,
        },
    );
    check(
        |q| q.event_idx_enabled = false,
        QueueStateError::EventIdx {
            index: 2,
            got: false,
            negotiated: true,
        },
    );
    check(
        |q| q.next_used = 0xfffa,
        QueueStateError::Indices {
            index: 2,
            next_avail: 3,
            next_used: 0xfffa,
            in_flight: 9,
            size: 8,
        },
    );
    check(
        |q| q.used_ring = 0x100_0000 - 8,
        QueueStateError::OutsideMemory {
            index: 2,
            desc: 0x1000,
            avail: 0x2000,
            used: 0x100_0000 - 8,
            size: 8,
        },
    );
    // Wrapped indices within the ring are fine.
    let mut wrapped = good;
    wrapped.next_avail = 2;
    wrapped.next_used = 0xfffc;
    assert!(restore_queue(0, &wrapped, 16, true, &mem).is_ok());
}

#[test]
fn quiesce_completes_async_requests_before_the_queue_is_saved() {
    let mem = guest_memory();
    let file = disk();
    let dev = Arc::new(Mutex::new(
        Block::new(&BlockConfig {
            drive_id: "rootfs".into(),
            path_on_host: file.as_path().to_path_buf(),
            is_read_only: false,
            cache_type: CacheType::Writeback,
            io_engine: IoEngine::Async,
            rate_limiter: None,
            image_format: ImageFormat::Raw,
        })
        .unwrap(),
    ));
    let mut t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    let features = dev.lock().unwrap().avail_features();
    bring_up(&mut t, features, &[ring()]);
    for n in 0..4 {
        post_write(&mem, n, u64::from(n) * 8, &[0x40 + n as u8; 4096]);
    }
    let mut d = dev.lock().unwrap();
    d.process_queue();
    // Submitted to io_uring; completions are only reaped by the io loop (not running here).
    assert_eq!(ring().used_idx(&mem), 0);
    d.quiesce();
    let state = d.save_state();
    assert_eq!(ring().used_idx(&mem), 4);
    let q = state.virtio.queues[0];
    assert_eq!((q.next_avail, q.next_used), (4, 4));
    for n in 0..4u64 {
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS + n)).unwrap(),
            VIRTIO_BLK_S_OK as u8
        );
        assert_eq!(
            on_disk(file.as_path(), n * 8, 4096),
            vec![0x40 + n as u8; 4096]
        );
    }
}
