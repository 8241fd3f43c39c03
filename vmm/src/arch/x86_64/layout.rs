//! The guest-physical layout xenia gives every x86_64 guest.

use vm_memory::GuestAddress;

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (an empty one: the guest installs its own).
pub const IDT_START: u64 = 0x520;
/// `hvm_start_info` for the PVH entry.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map, right after `hvm_start_info` in its own page.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`boot_params`); RSI points here at the 64-bit entry, as Linux VMMs do.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack for the 64-bit entry (grows down towards the zero page).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT and one PD mapping the first GiB with 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's COMMAND_LINE_SIZE on x86.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: the MP table lives at its start, where Linux scans for it.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole; kernels are loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (virtio-mmio windows, IOAPIC, LAPIC).
pub const MMIO_HOLE_START: u64 = 0xD000_0000;
/// End of the 32-bit MMIO hole; RAM that did not fit below the hole continues here.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// Local APIC and IOAPIC register windows.
pub const APIC_BASE: u64 = 0xfee0_0000;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// TSS and identity-map pages KVM needs on Intel (inside the hole, below the IOAPIC).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// A memory-map entry, shared by the zero page's E820 table and the PVH memmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// RAM regions for `mem_size` bytes: one below the MMIO hole, and a second from 4 GiB when
/// RAM does not fit below it. Two regions at most keep `KVM_SET_USER_MEMORY_REGION` calls few.
pub fn arch_memory_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), mem_size - MMIO_HOLE_START),
        ]
    }
}

/// The guest's memory map: base memory up to the EBDA, then RAM from 1 MiB, split around the
/// MMIO hole when RAM is larger than it.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820Kind::Ram,
    }];
    let low_end = mem_size.min(MMIO_HOLE_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820Kind::Ram,
        });
    }
    if mem_size > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: mem_size - MMIO_HOLE_START,
            kind: E820Kind::Ram,
        });
    }
    map
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_memory_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_has_one_region_and_two_e820_entries() {
        assert_eq!(
            arch_memory_regions(128 * MIB),
            vec![(GuestAddress(0), 128 * MIB)]
        );
        let map = e820_map(128 * MIB);
        assert_eq!(map.len(), 2);
        assert_eq!((map[0].addr, map[0].size), (0, EBDA_START));
        assert_eq!((map[1].addr, map[1].size), (HIMEM_START, 127 * MIB));
        assert!(map.iter().all(|e| e.kind == E820Kind::Ram));
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let mem = 4096 * MIB;
        let regions = arch_memory_regions(mem);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(
            regions[1],
            (GuestAddress(MMIO_HOLE_END), mem - MMIO_HOLE_START)
        );
        let map = e820_map(mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_HOLE_START);
        assert_eq!(map[2].addr, MMIO_HOLE_END);
        let ram: u64 = map.iter().map(|e| e.size).sum();
        // Everything but the legacy hole [EBDA, 1 MiB) is RAM.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
        for e in &map {
            assert!(e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END);
        }
    }

    #[test]
    fn exactly_hole_sized_memory_needs_no_high_region() {
        assert_eq!(arch_memory_regions(MMIO_HOLE_START).len(), 1);
        assert_eq!(e820_map(MMIO_HOLE_START).len(), 2);
    }
}
