//! virtio-blk: a guest's request queue, with an arbitrary descriptor table, available ring
//! and buffer contents, served by the real device (`virtio::block::Block`, Sync engine)
//! over mock guest memory and a small disk image. This covers the request parser
//! (`virtio/src/block/request.rs`), the file backend and the status/used-ring writes.
//!
//! Input: the [`Scenario`](crate::guest::Scenario) layout. Flags byte: bit 0 acks
//! EVENT_IDX, bit 1 FLUSH, bit 2 DISCARD, bit 3 WRITE_ZEROES, bit 4 INDIRECT_DESC; bit 5
//! serves the queue with the read-only drive instead of the writable one; bit 6 (when bit 5
//! is clear) with a writable drive on the io_uring engine. The device drains io_uring on
//! reset, so every request has completed when the session ends.

use std::sync::{Mutex, OnceLock};

use virtio::block::{Block, BlockConfig, CacheType, IoEngine};
use virtio::features::VIRTIO_RING_F_EVENT_IDX;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES,
};
use vmm_sys_util::tempfile::TempFile;

use crate::device::DeviceLoop;
use crate::guest::{Scenario, ScenarioBuilder, DATA, VIRTIO_RING_F_INDIRECT_DESC};

/// Sectors in each disk image: small, so that ranges past the end are easy to reach.
pub const DISK_SECTORS: u64 = 64;

const FLAG_FEATURES: [(u8, u32); 5] = [
    (1, VIRTIO_RING_F_EVENT_IDX),
    (2, VIRTIO_BLK_F_FLUSH),
    (4, VIRTIO_BLK_F_DISCARD),
    (8, VIRTIO_BLK_F_WRITE_ZEROES),
    (16, VIRTIO_RING_F_INDIRECT_DESC),
];
const FLAG_READ_ONLY: u8 = 32;
const FLAG_ASYNC: u8 = 64;

struct Drives {
    writable: DeviceLoop<Block>,
    read_only: DeviceLoop<Block>,
    io_uring: DeviceLoop<Block>,
}

fn drive(read_only: bool, io_engine: IoEngine) -> DeviceLoop<Block> {
    let file = match TempFile::new_with_prefix(crate::scratch_dir().join("xenia-fuzz-disk")) {
        Ok(f) => f,
        Err(e) => panic!("cannot create a disk image: {e}"),
    };
    if let Err(e) = file.as_file().set_len(DISK_SECTORS * 512) {
        panic!("cannot size the disk image: {e}");
    }
    let cfg = BlockConfig {
        drive_id: format!("{}-{io_engine:?}", if read_only { "ro" } else { "rw" }),
        path_on_host: file.as_path().to_path_buf(),
        is_read_only: read_only,
        cache_type: CacheType::Writeback,
        io_engine,
        image_format: virtio::block::ImageFormat::Raw,
        rate_limiter: None,
    };
    let dev = match Block::new(&cfg) {
        Ok(d) => d,
        Err(e) => panic!("cannot open the disk image: {e}"),
    };
    // The device holds its own descriptor; the name goes now so no run leaves files behind.
    drop(file);
    DeviceLoop::new(dev)
}

fn drives() -> &'static Mutex<Drives> {
    static DRIVES: OnceLock<Mutex<Drives>> = OnceLock::new();
    DRIVES.get_or_init(|| {
        Mutex::new(Drives {
            writable: drive(false, IoEngine::Sync),
            read_only: drive(true, IoEngine::Sync),
            io_uring: drive(false, IoEngine::Async),
        })
    })
}

pub fn run(data: &[u8]) {
    serve(data);
}

/// Serves the input; returns the guest memory afterwards (for the seeds' tests).
fn serve(data: &[u8]) -> crate::guest::Mem {
    let scenario = Scenario::parse(data);
    let mem = scenario.memory();
    let features = scenario.features(&FLAG_FEATURES);
    let mut drives = crate::guest::lock_recovering(drives());
    let drive = if scenario.flags & FLAG_READ_ONLY != 0 {
        &mut drives.read_only
    } else if scenario.flags & FLAG_ASYNC != 0 {
        &mut drives.io_uring
    } else {
        &mut drives.writable
    };
    drive.session(&mem, features, vec![scenario.queue()]);
    scenario.check_completions(&mem);
    mem
}

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const ALL_FEATURES: u8 = 1 | 2 | 4 | 8;

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = Vec::with_capacity(16);
    s.extend_from_slice(&sector.to_le_bytes());
    s.extend_from_slice(&sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

/// Seeds: one well-formed request of every kind, several in one queue, and buffers that
/// cross the boundary between the two back-to-back memory regions.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hdr = DATA;
    let buf = DATA + 0x100;
    let status = DATA + 0x1000;
    let one = |flags: u8, kind: u32, sector: u64, data: &[(u64, u32, bool)]| {
        let mut b = ScenarioBuilder::new(4, flags);
        b.write(hdr, &header(kind, sector));
        let mut bufs = vec![(hdr, 16, false)];
        bufs.extend_from_slice(data);
        bufs.push((status, 1, true));
        b.chain(&bufs);
        b
    };
    let mut seeds = vec![
        (
            "read",
            one(ALL_FEATURES, T_IN, 2, &[(buf, 1024, true)]).build(),
        ),
        (
            "read-io-uring",
            one(ALL_FEATURES | FLAG_ASYNC, T_IN, 2, &[(buf, 1024, true)]).build(),
        ),
        ("write-io-uring", {
            let mut b = one(ALL_FEATURES | FLAG_ASYNC, T_OUT, 8, &[(buf, 4096, false)]);
            b.write(buf, &[0x5a; 4096]);
            b.build()
        }),
        (
            "flush-io-uring",
            one(ALL_FEATURES | FLAG_ASYNC, T_FLUSH, 0, &[]).build(),
        ),
        ("write", {
            let mut b = one(
                ALL_FEATURES,
                T_OUT,
                60,
                &[(buf, 512, false), (buf + 0x400, 1536, false)],
            );
            b.write(buf, &[0xa5; 512]);
            b.build()
        }),
        ("flush", one(ALL_FEATURES, T_FLUSH, 0, &[]).build()),
        (
            "get-id",
            one(ALL_FEATURES, T_GET_ID, 0, &[(buf, 20, true)]).build(),
        ),
        ("discard", {
            let mut b = one(ALL_FEATURES, T_DISCARD, 0, &[(buf, 16, false)]);
            b.write(buf, &segment(8, 8, 0));
            b.build()
        }),
        ("write-zeroes-unmap", {
            let mut b = one(ALL_FEATURES, T_WRITE_ZEROES, 0, &[(buf, 16, false)]);
            b.write(buf, &segment(0, 16, 1));
            b.build()
        }),
        (
            "read-only-write",
            one(
                ALL_FEATURES | FLAG_READ_ONLY,
                T_OUT,
                0,
                &[(buf, 512, false)],
            )
            .build(),
        ),
        (
            "event-idx-off-read",
            one(2, T_IN, 0, &[(buf, 512, true)]).build(),
        ),
        (
            // 0x7f00..0x8100 spans the two host mappings of guest RAM.
            "read-across-regions",
            one(ALL_FEATURES, T_IN, 0, &[(0x7f00, 512, true)]).build(),
        ),
    ];
    let mut many = ScenarioBuilder::new(4, ALL_FEATURES);
    for i in 0..4u64 {
        let h = DATA + i * 0x800;
        many.write(h, &header(if i % 2 == 0 { T_IN } else { T_OUT }, i * 4));
        many.chain(&[
            (h, 16, false),
            (h + 0x100, 2048, i % 2 == 0),
            (h + 0x7ff, 1, true),
        ]);
    }
    seeds.push(("four-requests", many.build()));
    let mut indirect = ScenarioBuilder::new(2, ALL_FEATURES | 16);
    // An indirect table at 0x6000 holding header, data and status descriptors.
    let table = 0x6000u64;
    let mut t = Vec::new();
    for (i, (addr, len, flags)) in [(hdr, 16u32, 1u16), (buf, 512, 1 | 2), (status, 1, 2)]
        .iter()
        .enumerate()
    {
        t.extend_from_slice(&addr.to_le_bytes());
        t.extend_from_slice(&len.to_le_bytes());
        t.extend_from_slice(&flags.to_le_bytes());
        t.extend_from_slice(&(i as u16 + 1).to_le_bytes());
    }
    indirect
        .write(hdr, &header(T_IN, 1))
        .write(table, &t)
        .desc(0, table, 48, crate::guest::F_INDIRECT, 0)
        .avail(0);
    seeds.push(("indirect-read", indirect.build()));
    seeds
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::guest::USED_RING;
    use vm_memory::{Bytes, GuestAddress};

    /// Every single-request seed is served: one used entry and the status it should get.
    #[test]
    fn seeds_reach_the_disk() {
        let status_addr = GuestAddress(DATA + 0x1000);
        for (name, input) in seeds() {
            let mem = serve(&input);
            let used: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
            let want_used = match name {
                "four-requests" => 4,
                _ => 1,
            };
            assert_eq!(used, want_used, "seed {name}: used entries");
            if name == "four-requests" || name == "indirect-read" {
                continue;
            }
            let status: u8 = mem.read_obj(status_addr).unwrap();
            let ok = !matches!(name, "read-only-write");
            assert_eq!(status == 0, ok, "seed {name}: status {status}");
        }
    }
}
