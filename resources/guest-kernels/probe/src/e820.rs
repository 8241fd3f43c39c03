//! The memory map, and finding free RAM in it.

/// Most entries we keep (the zero page holds 128).
pub const MAX_E820: usize = 128;
pub const E820_RAM: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl E820Entry {
    pub const EMPTY: E820Entry = E820Entry {
        addr: 0,
        size: 0,
        kind: 0,
    };

    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// Finds `len` bytes of RAM at or above `floor`, 4 KiB aligned, below
/// `limit`, avoiding the `avoid` ranges (start, end). Returns the start.
pub fn find_free(
    map: &[E820Entry],
    len: u64,
    floor: u64,
    limit: u64,
    avoid: &[(u64, u64)],
) -> Option<u64> {
    for e in map.iter().filter(|e| e.kind == E820_RAM) {
        let mut start = align_up(e.addr.max(floor));
        let end = e.end().min(limit);
        // Each retry moves past one obstacle, so this ends.
        'retry: while let Some(stop) = start.checked_add(len) {
            if stop > end {
                break;
            }
            for &(a, b) in avoid {
                if start < b && a < stop {
                    start = align_up(b);
                    continue 'retry;
                }
            }
            return Some(start);
        }
    }
    None
}

fn align_up(v: u64) -> u64 {
    v.saturating_add(0xfff) & !0xfff
}
