//! xenia's own check of a qcow2 header, run before the image reaches imago.
//!
//! imago validates what it needs to be correct; this adds xenia's resource limits (virtual
//! size, L1 and refcount table sizes), refuses features a tenant disk must not use (external
//! data files, encryption, a dirty or corrupt image) with messages an operator can act on, and
//! reads the backing file name and format so that the chain is resolved by xenia's policy
//! (`chain.rs`), never by imago's implicit opening. Pure function over bytes: fuzzed directly.

/// `QFI\xfb`.
pub const QCOW2_MAGIC: u32 = 0x5146_49fb;
/// Largest virtual disk accepted (64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Largest L1 table read into memory at open (QEMU's limit too).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table (QEMU's limit too).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Cluster sizes accepted: 4 KiB to 2 MiB. The specification allows 512 B, but with clusters
/// that small imago's cluster allocator recursed without bound growing the refcount
/// structures (found by the `qcow2` fuzz target: a guest write into a qemu-img overlay with
/// 512-byte clusters overflowed the io thread's stack); real images use 64 KiB.
pub const MIN_CLUSTER_BITS: u32 = 12;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Longest backing file name the format allows.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Bytes of the file a header check needs at most: the first cluster.
pub const MAX_HEADER_READ: u64 = 1 << MAX_CLUSTER_BITS;

const V2_HEADER_LEN: usize = 72;
const V3_HEADER_MIN: usize = 104;
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Maximum header extensions walked (the first cluster bounds them anyway).
const MAX_EXTENSIONS: usize = 1024;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;

/// Why a header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("file is {0} bytes, too short for a qcow2 header")]
    Truncated(u64),
    #[error("not a qcow2 image (magic {0:#010x}); the drive's image_format says Qcow2")]
    Magic(u32),
    #[error("qcow2 version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("cluster_bits {0} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}")]
    ClusterBits(u32),
    #[error("v3 header_length {0} is invalid")]
    HeaderLength(u32),
    #[error("virtual size {0} bytes exceeds xenia's limit of {MAX_VIRTUAL_SIZE}")]
    VirtualSize(u64),
    #[error("encrypted images are not supported (crypt_method {0})")]
    Encrypted(u32),
    #[error("image is marked corrupt; repair it with `qemu-img check -r all`")]
    Corrupt,
    #[error("image is dirty (lazy refcounts, not closed cleanly); repair it with `qemu-img check -r all`")]
    Dirty,
    #[error(
        "image has {0} internal snapshots; xenia writes only images without any (use overlays)"
    )]
    InternalSnapshots(u32),
    #[error("external data files are not supported")]
    ExternalDataFile,
    #[error(
        "unsupported incompatible feature bits {0:#x} (compression type, extended L2 or unknown)"
    )]
    IncompatibleFeatures(u64),
    #[error("refcount_order {0} is invalid (0..=6)")]
    RefcountOrder(u32),
    #[error("L1 table of {entries} entries is smaller than the virtual size needs ({needed})")]
    L1TooSmall { entries: u32, needed: u64 },
    #[error("L1 table of {0} bytes exceeds the limit of {MAX_L1_BYTES}")]
    L1TooBig(u64),
    #[error("refcount table of {0} bytes exceeds the limit of {MAX_REFTABLE_BYTES}")]
    RefTableTooBig(u64),
    #[error("{what} offset {offset:#x} is not cluster-aligned")]
    Unaligned { what: &'static str, offset: u64 },
    #[error("{what} at {offset:#x}+{len:#x} lies past the end of the {file_len}-byte file")]
    PastEnd {
        what: &'static str,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    #[error("backing file name at {offset:#x}+{len} is not inside the first cluster or too long")]
    BackingName { offset: u64, len: u32 },
    #[error("backing file name is empty, not UTF-8 or contains NUL")]
    BackingNameInvalid,
    #[error("header extension at {0:#x} runs past the first cluster")]
    Extension(u64),
    #[error("backing format extension is not UTF-8")]
    BackingFormatInvalid,
    #[error(
        "the {what} (cluster {cluster}) has refcount 0: the image's refcounts are corrupt; \
         repair it with `qemu-img check -r all`"
    )]
    Unreferenced { what: &'static str, cluster: u64 },
    #[error("refcount block at {0:#x} is not cluster-aligned or lies past the end of the file")]
    BadRefBlock(u64),
}

/// What xenia needs from a valid header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInfo {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub backing_file: Option<String>,
    /// The backing format recorded in the image (`-F` of `qemu-img create`), if any.
    pub backing_format: Option<String>,
    /// Where the metadata lives, for the refcount consistency check of a writable image.
    pub l1_offset: u64,
    pub l1_bytes: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_bytes: u64,
    /// log2 of the refcount width in bits (4 for version 2).
    pub refcount_order: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_be_bytes(x)
}

/// Checks a table `[offset, offset + len)` is cluster-aligned and inside the file.
fn check_table(
    what: &'static str,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), HeaderError> {
    if !offset.is_multiple_of(cluster_size) || offset == 0 {
        return Err(HeaderError::Unaligned { what, offset });
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(HeaderError::PastEnd {
            what,
            offset,
            len,
            file_len,
        }),
    }
}

/// Validates the header in `buf` (the file's first bytes, up to one cluster) of a file of
/// `file_len` bytes. `writable`: the image will be written (a dirty image is refused then).
pub fn parse(buf: &[u8], file_len: u64, writable: bool) -> Result<HeaderInfo, HeaderError> {
    if buf.len() < V2_HEADER_LEN || file_len < V2_HEADER_LEN as u64 {
        return Err(HeaderError::Truncated(file_len.min(buf.len() as u64)));
    }
    let magic = be32(buf, 0);
    if magic != QCOW2_MAGIC {
        return Err(HeaderError::Magic(magic));
    }
    let version = be32(buf, 4);
    if version != 2 && version != 3 {
        return Err(HeaderError::Version(version));
    }
    let cluster_bits = be32(buf, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(HeaderError::ClusterBits(cluster_bits));
    }
    let cluster_size = 1u64 << cluster_bits;
    // Everything the header points at in the first cluster must be inside `buf`.
    let first_cluster = cluster_size.min(buf.len() as u64) as usize;
    let virtual_size = be64(buf, 24);
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(HeaderError::VirtualSize(virtual_size));
    }
    let crypt = be32(buf, 32);
    if crypt != 0 {
        return Err(HeaderError::Encrypted(crypt));
    }

    // imago does not track internal snapshots: a write could change clusters they share.
    let snapshots = be32(buf, 60);
    if snapshots != 0 && writable {
        return Err(HeaderError::InternalSnapshots(snapshots));
    }
    let mut header_len = V2_HEADER_LEN;
    // Version 2 has 16-bit refcounts and no field for it.
    let mut refcount_order = 4;
    if version == 3 {
        if buf.len() < V3_HEADER_MIN {
            return Err(HeaderError::Truncated(buf.len() as u64));
        }
        let incompat = be64(buf, 72);
        if incompat & INCOMPAT_CORRUPT != 0 {
            return Err(HeaderError::Corrupt);
        }
        if incompat & INCOMPAT_DIRTY != 0 && writable {
            return Err(HeaderError::Dirty);
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(HeaderError::ExternalDataFile);
        }
        let other = incompat & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE);
        if other != 0 {
            // Bit 3 (zstd compression) and 4 (extended L2) are not read by imago either.
            return Err(HeaderError::IncompatibleFeatures(other));
        }
        refcount_order = be32(buf, 96);
        if refcount_order > 6 {
            return Err(HeaderError::RefcountOrder(refcount_order));
        }
        let hl = be32(buf, 100);
        if (hl as usize) < V3_HEADER_MIN || u64::from(hl) > cluster_size || hl as usize > buf.len()
        {
            return Err(HeaderError::HeaderLength(hl));
        }
        header_len = hl as usize;
    }

    // L1: large enough for the virtual size, small enough for memory.
    let l2_bits = cluster_bits - 3;
    let bytes_per_l1 = 1u64 << (cluster_bits + l2_bits);
    let needed = virtual_size.div_ceil(bytes_per_l1);
    let l1_entries = be32(buf, 36);
    let l1_bytes = u64::from(l1_entries) * 8;
    if u64::from(l1_entries) < needed {
        return Err(HeaderError::L1TooSmall {
            entries: l1_entries,
            needed,
        });
    }
    if l1_bytes > MAX_L1_BYTES {
        return Err(HeaderError::L1TooBig(l1_bytes));
    }
    if l1_entries > 0 {
        check_table("L1 table", be64(buf, 40), l1_bytes, cluster_size, file_len)?;
    }
    let rt_bytes = u64::from(be32(buf, 56)) * cluster_size;
    if rt_bytes > MAX_REFTABLE_BYTES {
        return Err(HeaderError::RefTableTooBig(rt_bytes));
    }
    check_table(
        "refcount table",
        be64(buf, 48),
        rt_bytes,
        cluster_size,
        file_len,
    )?;

    let backing_file = backing_name(buf, first_cluster)?;
    // Extensions (v2 images written by qemu carry them too) end before the backing name.
    let name_at = be64(buf, 8) as usize;
    let ext_limit = if backing_file.is_some() {
        name_at.min(first_cluster)
    } else {
        first_cluster
    };
    let backing_format = walk_extensions(buf, header_len, ext_limit)?;
    Ok(HeaderInfo {
        version,
        cluster_bits,
        virtual_size,
        backing_file,
        backing_format,
        l1_offset: be64(buf, 40),
        l1_bytes,
        refcount_table_offset: be64(buf, 48),
        refcount_table_bytes: rt_bytes,
        refcount_order,
    })
}

fn backing_name(buf: &[u8], first_cluster: usize) -> Result<Option<String>, HeaderError> {
    let offset = be64(buf, 8);
    let len = be32(buf, 16);
    if offset == 0 {
        return Ok(None);
    }
    let bad = HeaderError::BackingName { offset, len };
    if len == 0 || len > MAX_BACKING_NAME {
        return Err(bad);
    }
    let end = offset.checked_add(u64::from(len)).ok_or(bad.clone())?;
    if end > first_cluster as u64 {
        return Err(bad);
    }
    let bytes = &buf[offset as usize..end as usize];
    if bytes.contains(&0) {
        return Err(HeaderError::BackingNameInvalid);
    }
    let name = std::str::from_utf8(bytes).map_err(|_| HeaderError::BackingNameInvalid)?;
    Ok(Some(name.to_owned()))
}

/// Walks the header extensions; returns the backing format if one is recorded.
fn walk_extensions(
    buf: &[u8],
    start: usize,
    first_cluster: usize,
) -> Result<Option<String>, HeaderError> {
    let mut at = start.next_multiple_of(8);
    let mut format = None;
    for _ in 0..MAX_EXTENSIONS {
        if at + 8 > first_cluster {
            // No end marker before the cluster ends (v2 images may have none at all).
            return Ok(format);
        }
        let kind = be32(buf, at);
        let len = be32(buf, at + 4) as usize;
        if kind == EXT_END {
            return Ok(format);
        }
        let data = at + 8;
        let end = data
            .checked_add(len)
            .filter(|&e| e <= first_cluster)
            .ok_or(HeaderError::Extension(at as u64))?;
        match kind {
            EXT_BACKING_FORMAT => {
                let s = std::str::from_utf8(&buf[data..end])
                    .map_err(|_| HeaderError::BackingFormatInvalid)?;
                format = Some(s.to_owned());
            }
            EXT_DATA_FILE => return Err(HeaderError::ExternalDataFile),
            _ => {}
        }
        at = end.next_multiple_of(8);
    }
    Err(HeaderError::Extension(at as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 header with 64 KiB clusters, tables at clusters 1 (L1) and 2 (refcounts).
    pub(crate) fn v3(size: u64) -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        b[0..4].copy_from_slice(&QCOW2_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&size.to_be_bytes());
        let l1 = size.div_ceil(1 << 29).max(1) as u32;
        b[36..40].copy_from_slice(&l1.to_be_bytes());
        b[40..48].copy_from_slice(&65536u64.to_be_bytes());
        b[48..56].copy_from_slice(&131072u64.to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    const LEN: u64 = 4 * 65536;

    fn with_backing(mut b: Vec<u8>, name: &str, fmt: Option<&str>) -> Vec<u8> {
        let mut at = 112;
        if let Some(f) = fmt {
            b[at..at + 4].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&(f.len() as u32).to_be_bytes());
            b[at + 8..at + 8 + f.len()].copy_from_slice(f.as_bytes());
            at = (at + 8 + f.len()).next_multiple_of(8);
        }
        at += 8; // end marker (zeroes)
        b[8..16].copy_from_slice(&(at as u64).to_be_bytes());
        b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        b[at..at + name.len()].copy_from_slice(name.as_bytes());
        b
    }

    #[test]
    fn a_plain_v3_header_parses() {
        let h = parse(&v3(1 << 30), LEN, true).unwrap();
        assert_eq!((h.version, h.cluster_bits), (3, 16));
        assert_eq!(h.virtual_size, 1 << 30);
        assert_eq!(h.backing_file, None);
    }

    #[test]
    fn backing_name_and_format_are_read() {
        let b = with_backing(v3(1 << 20), "base.raw", Some("raw"));
        let h = parse(&b, LEN, true).unwrap();
        assert_eq!(h.backing_file.as_deref(), Some("base.raw"));
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        let b = with_backing(v3(1 << 20), "base.raw", None);
        assert_eq!(parse(&b, LEN, true).unwrap().backing_format, None);
    }

    #[test]
    fn limits_and_bad_fields_are_refused() {
        let e = |b: &[u8]| parse(b, LEN, true).unwrap_err();
        assert!(matches!(e(&[0u8; 10]), HeaderError::Truncated(_)));
        assert!(matches!(e(&[0u8; 200]), HeaderError::Magic(0)));
        let mut b = v3(1 << 20);
        b[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(e(&b), HeaderError::VirtualSize(_)));
        let mut b = v3(1 << 20);
        b[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(matches!(e(&b), HeaderError::ClusterBits(40)));
        let mut b = v3(1 << 20);
        b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(e(&b), HeaderError::L1TooBig(_)));
        let mut b = v3(8 << 30);
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(e(&b), HeaderError::L1TooSmall { .. }));
        let mut b = v3(1 << 20);
        b[56..60].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(e(&b), HeaderError::RefTableTooBig(_)));
        let mut b = v3(1 << 20);
        b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(e(&b), HeaderError::PastEnd { .. }));
        let mut b = v3(1 << 20);
        b[40..48].copy_from_slice(&65537u64.to_be_bytes());
        assert!(matches!(e(&b), HeaderError::Unaligned { .. }));
        let mut b = v3(1 << 20);
        b[72..80].copy_from_slice(&2u64.to_be_bytes());
        assert_eq!(e(&b), HeaderError::Corrupt);
        let mut b = v3(1 << 20);
        b[72..80].copy_from_slice(&1u64.to_be_bytes());
        assert_eq!(e(&b), HeaderError::Dirty);
        assert!(
            parse(&b, LEN, false).is_ok(),
            "a dirty backing file is read"
        );
        let mut b = v3(1 << 20);
        b[72..80].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(e(&b), HeaderError::IncompatibleFeatures(_)));
        let mut b = v3(1 << 20);
        b[60..64].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(e(&b), HeaderError::InternalSnapshots(2));
        assert!(parse(&b, LEN, false).is_ok(), "read-only is fine");
        let mut b = v3(1 << 20);
        b[32..36].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(e(&b), HeaderError::Encrypted(1)));
        // Backing name outside the first cluster.
        let mut b = v3(1 << 20);
        b[8..16].copy_from_slice(&65530u64.to_be_bytes());
        b[16..20].copy_from_slice(&100u32.to_be_bytes());
        assert!(matches!(e(&b), HeaderError::BackingName { .. }));
        // An extension whose length runs past the cluster.
        let mut b = v3(1 << 20);
        b[112..116].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        b[8..16].copy_from_slice(&60000u64.to_be_bytes());
        b[16..20].copy_from_slice(&4u32.to_be_bytes());
        b[60000..60004].copy_from_slice(b"base");
        assert!(matches!(e(&b), HeaderError::Extension(_)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap in-tree stand-in for the fuzz target: every prefix and a few corruptions.
        let base = with_backing(v3(1 << 30), "b.qcow2", Some("qcow2"));
        for cut in [0, 1, 71, 72, 103, 104, 111, 112, 200, 4096] {
            let _ = parse(&base[..cut], cut as u64, true);
        }
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut b = base.clone();
            for _ in 0..4 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = (x as usize >> 4) % 256;
                b[at] = (x >> 24) as u8;
            }
            let _ = parse(&b, LEN, x & 1 == 0);
        }
    }
}
