//! Before a writable image is handed to imago: the clusters that hold its metadata (the
//! header, the refcount table, the L1 table, and every refcount block the table names) must
//! have a non-zero refcount. imago's cluster allocator trusts the refcounts; on an image
//! whose refcount table is empty it allocated refcount blocks for refcount blocks without end
//! and overflowed the stack (found by the `qcow2` fuzz target). Such an image is corrupt; it
//! is refused with the repair command instead.

use std::fs::File;

use super::chain::read_at;
use super::header::{HeaderError, HeaderInfo};

/// Most metadata clusters checked (a 32 MiB L1 and an 8 MiB refcount table with 4 KiB clusters
/// are 10,240): beyond it the image is refused rather than read at length.
const MAX_CHECKED: u64 = 16 * 1024;

struct Refcounts<'a> {
    file: &'a File,
    file_len: u64,
    info: &'a HeaderInfo,
}

impl Refcounts<'_> {
    fn be64_at(&self, offset: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        (read_at(self.file, &mut b, offset).ok()? == 8).then(|| u64::from_be_bytes(b))
    }

    /// The refcount block holding cluster `cluster`'s count (its offset), if there is one.
    fn block_of(&self, cluster: u64) -> Result<Option<u64>, HeaderError> {
        let cluster_bits = self.info.cluster_bits;
        // Entries per block: cluster size in bits / refcount width in bits.
        let entry_bits = cluster_bits + 3 - self.info.refcount_order;
        let index = cluster >> entry_bits;
        if index.saturating_mul(8) >= self.info.refcount_table_bytes {
            return Ok(None);
        }
        let entry = self
            .be64_at(self.info.refcount_table_offset + index * 8)
            .unwrap_or(0);
        let block = entry & 0x00ff_ffff_ffff_fe00;
        if block == 0 {
            return Ok(None);
        }
        let cluster_size = 1u64 << cluster_bits;
        if !block.is_multiple_of(cluster_size) || block.saturating_add(cluster_size) > self.file_len
        {
            return Err(HeaderError::BadRefBlock(block));
        }
        Ok(Some(block))
    }

    /// Cluster `cluster`'s refcount (0 when no block covers it).
    fn count(&self, cluster: u64) -> Result<u64, HeaderError> {
        let Some(block) = self.block_of(cluster)? else {
            return Ok(0);
        };
        let order = self.info.refcount_order;
        let width = 1u64 << order;
        let entry_bits = self.info.cluster_bits + 3 - order;
        let slot = cluster & ((1u64 << entry_bits) - 1);
        let bit = slot * width;
        if width < 8 {
            // Sub-byte widths are packed from the least significant bit of each byte.
            let mut b = [0u8; 1];
            if read_at(self.file, &mut b, block + bit / 8).ok() != Some(1) {
                return Ok(0);
            }
            return Ok(u64::from(b[0] >> (bit % 8)) & ((1 << width) - 1));
        }
        // Wider refcounts are big-endian: within a big-endian 64-bit word, slot `i` of width
        // `w` sits at bits [64 - (i + 1) * w, 64 - i * w).
        let word = self.be64_at(block + (bit / 64) * 8).unwrap_or(0);
        let shift = 64 - bit % 64 - width;
        let mask = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        Ok((word >> shift) & mask)
    }

    fn require(&self, what: &'static str, cluster: u64) -> Result<(), HeaderError> {
        if self.count(cluster)? == 0 {
            return Err(HeaderError::Unreferenced { what, cluster });
        }
        Ok(())
    }
}

/// Checks the refcounts of the image's metadata clusters (see the module doc).
pub fn check(file: &File, file_len: u64, info: &HeaderInfo) -> Result<(), HeaderError> {
    let r = Refcounts {
        file,
        file_len,
        info,
    };
    let cluster_bits = info.cluster_bits;
    let cluster_size = 1u64 << cluster_bits;
    let clusters_of = |offset: u64, len: u64| {
        let first = offset >> cluster_bits;
        first..(offset + len).div_ceil(cluster_size).max(first + 1)
    };
    let rt = clusters_of(info.refcount_table_offset, info.refcount_table_bytes);
    let l1 = clusters_of(info.l1_offset, info.l1_bytes.max(1));
    if (rt.end - rt.start) + (l1.end - l1.start) > MAX_CHECKED {
        return Err(HeaderError::RefTableTooBig(info.refcount_table_bytes));
    }
    r.require("header", 0)?;
    for c in rt {
        r.require("refcount table", c)?;
    }
    if info.l1_bytes > 0 {
        for c in l1 {
            r.require("L1 table", c)?;
        }
    }
    // Every refcount block the table names must count itself (or be counted elsewhere).
    let entries = (info.refcount_table_bytes / 8).min(MAX_CHECKED);
    for i in 0..entries {
        let entry = r.be64_at(info.refcount_table_offset + i * 8).unwrap_or(0);
        let block = entry & 0x00ff_ffff_ffff_fe00;
        if block != 0 {
            r.require("refcount block", block >> cluster_bits)?;
        }
    }
    Ok(())
}
