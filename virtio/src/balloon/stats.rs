//! The statistics the guest reports (virtio 1.2 section 5.5.6.3): a buffer of packed
//! `{tag: le16, val: le64}` entries. Firecracker's field names.

use serde::Serialize;

use super::PAGES_PER_MIB;

/// Tags the spec defines (0..16).
const NUM_TAGS: u16 = 16;
/// Size of one entry.
pub const STAT_ENTRY_LEN: usize = 10;
/// Most entries read from one buffer: the spec defines 16 tags; more is not a valid buffer
/// and is refused rather than read without bound.
pub const MAX_STAT_ENTRIES: usize = 32;

/// What `GET /balloon/statistics` answers. Fields the guest never sent are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
    pub(crate) fn set_sizes(&mut self, target_pages: u32, actual_pages: u32) {
        self.target_pages = target_pages;
        self.actual_pages = actual_pages;
        let mib = |pages: u32| u32::try_from(u64::from(pages) / PAGES_PER_MIB).unwrap_or(0);
        self.target_mib = mib(target_pages);
        self.actual_mib = mib(actual_pages);
    }

    /// The statistics the guest sent, as (tag, value): the snapshot encoding, which cannot
    /// skip absent fields as the API's JSON does.
    pub(crate) fn entries(&self) -> Vec<(u16, u64)> {
        let mut copy = *self;
        (0..NUM_TAGS)
            .filter_map(|tag| copy.slot(tag).and_then(|v| v.map(|v| (tag, v))))
            .collect()
    }

    /// Statistics from [`Self::entries`]; `None` for an unknown or repeated tag.
    pub(crate) fn from_entries(entries: &[(u16, u64)]) -> Option<BalloonStats> {
        let mut s = BalloonStats::default();
        for &(tag, val) in entries {
            let slot = s.slot(tag)?;
            if slot.is_some() {
                return None;
            }
            *slot = Some(val);
        }
        Some(s)
    }

    /// Records one entry; unknown tags are ignored (a newer guest may send more).
    fn set(&mut self, tag: u16, val: u64) {
        if let Some(slot) = self.slot(tag) {
            *slot = Some(val);
        }
    }

    fn slot(&mut self, tag: u16) -> Option<&mut Option<u64>> {
        Some(match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return None,
        })
    }

    /// Parses a whole buffer (its length a multiple of the entry size, at most
    /// [`MAX_STAT_ENTRIES`] entries); `None` when it is not a valid buffer.
    pub(crate) fn parse(bytes: &[u8]) -> Option<BalloonStats> {
        if !bytes.len().is_multiple_of(STAT_ENTRY_LEN)
            || bytes.len() / STAT_ENTRY_LEN > MAX_STAT_ENTRIES
        {
            return None;
        }
        let mut s = BalloonStats::default();
        for e in bytes.chunks_exact(STAT_ENTRY_LEN) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..10]);
            s.set(tag, u64::from_le_bytes(v));
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, val: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&val.to_le_bytes());
        e
    }

    #[test]
    fn parses_known_tags_ignores_unknown_and_refuses_bad_shapes() {
        let mut buf = entry(4, 1 << 20);
        buf.extend(entry(5, 8 << 20));
        buf.extend(entry(99, 7));
        let mut s = BalloonStats::parse(&buf).unwrap();
        assert_eq!(
            (s.free_memory, s.total_memory),
            (Some(1 << 20), Some(8 << 20))
        );
        assert_eq!(s.swap_in, None);
        s.set_sizes(512, 256);
        let v = serde_json::to_value(s).unwrap();
        assert_eq!(v["target_mib"], 2);
        assert_eq!(v["actual_mib"], 1);
        assert!(v.get("swap_in").is_none(), "{v}");
        assert!(BalloonStats::parse(&buf[..11]).is_none());
        assert!(BalloonStats::parse(&vec![0u8; STAT_ENTRY_LEN * 33]).is_none());
        assert_eq!(BalloonStats::parse(&[]), Some(BalloonStats::default()));
    }
}
