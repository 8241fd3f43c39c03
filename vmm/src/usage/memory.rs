//! Resident guest memory: how much of the guest's RAM mapping is backed by host pages now,
//! its high-water mark and its integral over time.
//!
//! `mincore(2)` over the guest mappings answers exactly that question for the guest's RAM
//! and nothing else (`/proc/self/smaps_rollup` would add the VMM's own heap; `smaps` needs
//! a file read and a text parse per mapping). It costs one call per memory region and one
//! byte per 4 KiB page of a reused buffer (32 KiB for 128 MiB of guest), and runs on the VMM
//! thread only, at the usage sampling interval and on `GET /usage`.

use std::time::Instant;

use virtio::GuestMemoryMmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

const PAGE_SIZE: usize = 4096;
const MIB: f64 = 1024.0 * 1024.0;

/// Counts the resident pages of one mapping.
fn resident_pages(addr: *mut u8, len: usize, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let pages = len.div_ceil(PAGE_SIZE);
    buf.resize(pages, 0);
    // SAFETY: `addr`/`len` describe a live, page-aligned guest mapping owned by the VM (it
    // outlives this call); `buf` holds one byte per page of it as mincore requires.
    let ret = unsafe { libc::mincore(addr.cast(), len, buf.as_mut_ptr()) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(count_resident(buf))
}

/// Counts the bytes of `vec` with bit 0 set (mincore's "resident"), eight at a time.
fn count_resident(vec: &[u8]) -> u64 {
    const LOW_BITS: u64 = 0x0101_0101_0101_0101;
    let mut chunks = vec.chunks_exact(8);
    let mut n: u64 = chunks
        .by_ref()
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from((u64::from_ne_bytes(w) & LOW_BITS).count_ones())
        })
        .sum();
    n += chunks.remainder().iter().filter(|b| **b & 1 != 0).count() as u64;
    n
}

/// Bytes of `memory` resident now.
pub fn resident_bytes(memory: &GuestMemoryMmap, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let mut pages = 0;
    for region in memory.iter() {
        let len = usize::try_from(region.len()).unwrap_or(usize::MAX);
        pages += resident_pages(region.as_ptr(), len, buf)?;
    }
    Ok(pages * PAGE_SIZE as u64)
}

/// Resident memory over time.
#[derive(Debug, Default, Clone)]
pub struct ResidentTracker {
    last: Option<(Instant, u64)>,
    /// Resident bytes at the last sample.
    pub resident_bytes: u64,
    pub high_water_bytes: u64,
    /// ∫ resident dt, in MiB·s.
    pub mib_seconds: f64,
    buf: Vec<u8>,
}

impl ResidentTracker {
    /// Continues from values carried over (a restored snapshot).
    pub fn resume_from(high_water_bytes: u64, mib_seconds: f64) -> Self {
        Self {
            high_water_bytes,
            mib_seconds,
            ..Self::default()
        }
    }

    /// Records `bytes` resident at `now`: the integral grows by the trapezoid since the
    /// last sample.
    pub fn record(&mut self, now: Instant, bytes: u64) {
        if let Some((then, prev)) = self.last {
            let dt = now.saturating_duration_since(then).as_secs_f64();
            self.mib_seconds += (prev as f64 + bytes as f64) / 2.0 / MIB * dt;
        }
        self.last = Some((now, bytes));
        self.resident_bytes = bytes;
        self.high_water_bytes = self.high_water_bytes.max(bytes);
    }

    /// Samples `memory` now.
    pub fn sample(&mut self, memory: &GuestMemoryMmap) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let got = resident_bytes(memory, &mut buf);
        self.buf = buf;
        self.record(Instant::now(), got?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HugePages;
    use crate::vstate::memory::create_guest_memory;
    use std::time::Duration;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn touching_pages_makes_them_resident() {
        let mem = create_guest_memory(16 << 20, HugePages::None).unwrap();
        let mut buf = Vec::new();
        let before = resident_bytes(&mem, &mut buf).unwrap();
        for page in 0..1024u64 {
            mem.write_obj(1u8, GuestAddress(page * 4096)).unwrap();
        }
        let after = resident_bytes(&mem, &mut buf).unwrap();
        assert!(
            after >= before + (4 << 20) - 4096 * 8,
            "{before} -> {after}"
        );
        assert!(after <= 16 << 20);
    }

    #[test]
    fn resident_bytes_are_counted_by_bit_zero_only() {
        let mut v = vec![0u8; 21];
        for i in [0, 7, 8, 15, 20] {
            v[i] = 1;
        }
        v[3] = 0xfe; // other bits are reserved: not resident
        assert_eq!(count_resident(&v), 5);
    }

    #[test]
    fn the_integral_is_a_trapezoid_and_the_high_water_mark_stays() {
        let mut t = ResidentTracker::default();
        let t0 = Instant::now();
        t.record(t0, 0);
        t.record(t0 + Duration::from_secs(2), 4 << 20);
        assert!((t.mib_seconds - 4.0).abs() < 1e-9, "{}", t.mib_seconds);
        t.record(t0 + Duration::from_secs(3), 2 << 20);
        assert!((t.mib_seconds - 7.0).abs() < 1e-9, "{}", t.mib_seconds);
        assert_eq!((t.resident_bytes, t.high_water_bytes), (2 << 20, 4 << 20));
    }
}
