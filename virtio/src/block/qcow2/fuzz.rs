//! Entry point for fuzzing qcow2 opening and I/O with crafted images (the `fuzz/` crate's
//! target calls [`open_and_exercise`]; `tests.rs` runs it over mutated qemu-img images).
//!
//! Input layout: byte 0 picks the operations, the rest is the image file. A raw file
//! `base.raw` (64 KiB) sits beside the image so that backing chains naming it resolve.

use std::path::Path;

use vm_memory::GuestAddress;

use super::Qcow2Disk;
use crate::GuestMemoryMmap;

const MEM: usize = 1 << 20;

/// Writes `data[1..]` as `dir/fuzz.qcow2`, opens it (writable) and, if it opens, runs a few
/// reads, writes, discards and a flush at offsets derived from the input. Must never panic
/// nor allocate without bound, whatever the bytes.
pub fn open_and_exercise(data: &[u8], dir: &Path) {
    let Some((&ops, image)) = data.split_first() else {
        return;
    };
    let base = dir.join("base.raw");
    if std::fs::write(&base, [0x5au8; 65536]).is_err() {
        return;
    }
    let path = dir.join("fuzz.qcow2");
    if std::fs::write(&path, image).is_err() {
        return;
    }
    let Ok(mut disk) = Qcow2Disk::open(&path, ops & 0x80 != 0) else {
        return;
    };
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let size = disk.nsectors() << 9;
    if size == 0 {
        return;
    }
    // Offsets spread over the disk, from the image's own bytes (so they vary with it).
    let mut seed = image
        .iter()
        .take(64)
        .fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    for step in 0..8u32 {
        seed = seed.rotate_left(17).wrapping_mul(0x2545_f491_4f6c_dd1d);
        let len = (((seed >> 8) % 16 + 1) * 512).min(size);
        let off = ((seed >> 24) % (size - len + 1)) & !511;
        let buf = [(GuestAddress(4096), len as u32)];
        let _ = match (u32::from(ops) >> (step % 4)) & 3 {
            0 => disk.read_into(&mem, off, &buf),
            1 => disk.write_from(&mem, off, &buf),
            2 => disk.discard(off, len),
            _ => disk.write_zeroes(off, len, step & 1 == 0),
        };
    }
    let _ = disk.flush();
}
