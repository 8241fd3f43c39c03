//! Split virtqueue (virtio 1.2 section 2.7) in arena memory. The driver owns
//! descriptor numbering: callers write descriptors where they like and push
//! chain heads, so per-request paths can reuse fixed, pre-linked chains.

use core::sync::atomic::{compiler_fence, Ordering};

use super::dma;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// avail.flags: we poll, the device need not interrupt.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// used.flags: the device does not need notifications right now.
const USED_F_NO_NOTIFY: u16 = 1;

pub struct VirtQueue {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Next free slot in the available ring (published by `publish`).
    avail_idx: u16,
    /// Used entries consumed so far.
    last_used: u16,
}

/// Store-load barrier without SSE (`mfence` is an SSE2 instruction, which
/// PVM's ring-0 emulator rejects): a locked no-op on the stack.
pub fn full_fence() {
    // SAFETY: a locked OR of zero into the top of our own stack changes nothing.
    unsafe {
        core::arch::asm!(
            "lock or qword ptr [rsp], 0",
            options(nostack, preserves_flags)
        )
    };
}

impl VirtQueue {
    /// Allocates and zeroes the three rings for `size` entries.
    pub fn new(index: u16, size: u16) -> Option<Self> {
        let n = size as u64;
        let desc_len = 16 * n;
        let avail_len = 6 + 2 * n;
        let used_off = (desc_len + avail_len + 63) & !63;
        let used_len = 6 + 8 * n;
        let base = dma::alloc_zeroed(used_off + used_len, 4096)?;
        let q = VirtQueue {
            index,
            size,
            desc: base,
            avail: base + desc_len,
            used: base + used_off,
            avail_idx: 0,
            last_used: 0,
        };
        dma::write::<u16>(q.avail, AVAIL_F_NO_INTERRUPT);
        Some(q)
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * i as u64;
        dma::write(d, addr);
        dma::write(d + 8, len);
        dma::write(d + 12, flags);
        dma::write(d + 14, next);
    }

    pub fn set_desc_addr_len(&self, i: u16, addr: u64, len: u32) {
        let d = self.desc + 16 * i as u64;
        dma::write(d, addr);
        dma::write(d + 8, len);
    }

    /// Puts a chain head in the available ring, not yet visible to the device.
    pub fn push(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        dma::write::<u16>(self.avail + 4 + 2 * slot as u64, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Makes every pushed head visible (writes avail.idx).
    pub fn publish(&self) {
        compiler_fence(Ordering::SeqCst);
        dma::write::<u16>(self.avail + 2, self.avail_idx);
    }

    /// Writes avail.idx to an arbitrary value (hostile tests).
    pub fn publish_raw(&self, idx: u16) {
        compiler_fence(Ordering::SeqCst);
        dma::write::<u16>(self.avail + 2, idx);
    }

    /// After `publish`: whether the device asked not to be notified. Needs
    /// the store-load barrier so the flag is not read before idx is visible.
    pub fn device_wants_notify(&self) -> bool {
        full_fence();
        dma::read::<u16>(self.used) & USED_F_NO_NOTIFY == 0
    }

    pub fn used_idx(&self) -> u16 {
        dma::read::<u16>(self.used + 2)
    }

    /// The next used element (chain head id, bytes written), if any.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        let e = self.used + 4 + 8 * (self.last_used % self.size) as u64;
        let id = dma::read::<u32>(e);
        let len = dma::read::<u32>(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }

    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Heads pushed and published but not yet returned.
    pub fn outstanding(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }
}
