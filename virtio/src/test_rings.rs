//! Test helpers for snapshot tests: split rings written straight into guest memory (they
//! survive a device being rebuilt over the same memory, unlike a fresh mock queue) and a
//! driver bringing a transport up to DRIVER_OK.
#![allow(clippy::unwrap_used)]

use devices::BusDevice;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::mmio::status::*;
use crate::{GuestMemoryMmap, MmioTransport};

const F_NEXT: u16 = 1;

/// One split ring's placement.
#[derive(Debug, Clone, Copy)]
pub struct RawRing {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
}

impl RawRing {
    /// Rings of `size` entries laid out from `base` (desc table, avail ring, used ring).
    pub fn at(base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        RawRing {
            desc,
            avail,
            used,
            size,
        }
    }

    /// A ready queue over these rings, for a device activated by hand.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Writes a chain at descriptor `first` (NEXT links filled in) and publishes it.
    pub fn add_chain(&self, mem: &GuestMemoryMmap, first: u16, descs: &[(u64, u32, u16)]) {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = first + i as u16;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, idx + 1));
            mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(idx)))
                .unwrap();
        }
        let idx: u16 = mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
        let slot = u64::from(idx % self.size);
        mem.write_obj(first, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// (id, len) of used entry `i`.
    pub fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Drives `t` as a driver would: accepts `features`, sets up queue i at `rings[i]`, and
/// sets DRIVER_OK (which activates the device).
pub fn bring_up(t: &mut MmioTransport, features: u64, rings: &[RawRing]) {
    wr(t, 0x70, ACKNOWLEDGE);
    wr(t, 0x70, ACKNOWLEDGE | DRIVER);
    wr(t, 0x24, 0);
    wr(t, 0x20, features as u32);
    wr(t, 0x24, 1);
    wr(t, 0x20, (features >> 32) as u32);
    wr(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for (i, r) in rings.iter().enumerate() {
        wr(t, 0x30, i as u32);
        wr(t, 0x38, u32::from(r.size));
        for (off, addr) in [(0x80, r.desc), (0x90, r.avail), (0xa0, r.used)] {
            wr(t, off, addr as u32);
            wr(t, off + 4, (addr >> 32) as u32);
        }
        wr(t, 0x44, 1);
    }
    wr(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}
