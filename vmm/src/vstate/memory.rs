//! Guest RAM: anonymous mappings laid out by the architecture, backed by the page size the
//! machine configuration asks for.

use virtio::{GuestMemoryMmap, GuestRegionMmap};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::mmap::NewBitmap;
use vm_memory::GuestAddress;

use crate::arch::arch_memory_regions;
use crate::config::HugePages;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("machine-config.mem_size_mib: {mib} MiB does not fit in this host's address space")]
    TooLarge { mib: u64 },
    #[error("machine-config.mem_size_mib: cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error(
        "machine-config.huge_pages: cannot reserve {mib} MiB of 2 MiB huge pages ({source}); \
         the host must have enough free ones (see /proc/sys/vm/nr_hugepages)"
    )]
    HugePages {
        mib: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory regions overlap or are out of order: {0}")]
    Layout(vm_memory::GuestRegionCollectionError),
}

/// Maps `mem_size` bytes of guest RAM (one or two regions, see [`arch_memory_regions`]).
pub fn create_guest_memory(
    mem_size: u64,
    huge_pages: HugePages,
) -> Result<GuestMemoryMmap, MemoryError> {
    let mib = mem_size >> 20;
    let regions = arch_memory_regions(mem_size)
        .into_iter()
        .map(|(addr, len)| {
            let len = usize::try_from(len).map_err(|_| MemoryError::TooLarge { mib })?;
            map_region(addr, len, huge_pages, mib)
        })
        .collect::<Result<Vec<_>, MemoryError>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
}

fn map_region(
    addr: GuestAddress,
    len: usize,
    huge_pages: HugePages,
    mib: u64,
) -> Result<GuestRegionMmap, MemoryError> {
    let base = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let (flags, hugetlb) = match huge_pages {
        // Reserve hugetlb pages at mmap time: with MAP_NORESERVE a shortage would surface as a
        // SIGBUS on the guest's first touch instead of an error at start-up.
        HugePages::Hugetlbfs2M => (base | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB, true),
        // Ordinary anonymous memory is only committed as the guest touches it.
        HugePages::None | HugePages::Transparent => (base | libc::MAP_NORESERVE, false),
    };
    let region = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_hugetlbfs(hugetlb)
        .build()
        .map_err(|source| match huge_pages {
            HugePages::Hugetlbfs2M => MemoryError::HugePages { mib, source },
            _ => MemoryError::Map { mib, source },
        })?;
    if huge_pages == HugePages::Transparent {
        // SAFETY: the range is exactly the mapping `region` owns; madvise with MADV_HUGEPAGE
        // only changes how the kernel backs it and never invalidates it.
        let ret = unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        if ret != 0 {
            // THP disabled on the host ("never") is not fatal: the guest gets 4 KiB pages.
            log::warn!(
                "machine-config.huge_pages: madvise(MADV_HUGEPAGE) failed: {}; using 4 KiB pages",
                std::io::Error::last_os_error()
            );
        }
    }
    GuestRegionMmap::new(region, addr).ok_or(MemoryError::TooLarge { mib })
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        let mem = create_guest_memory(32 << 20, HugePages::None).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((32 << 20) - 1));
    }

    /// The VMA flags of the mapping that holds `addr`, from /proc/self/smaps.
    fn vma_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((s, e)) = range.split_once('-') {
                    if let (Ok(s), Ok(e)) =
                        (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16))
                    {
                        inside = (s..e).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.trim().to_owned();
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn transparent_huge_pages_are_requested_from_the_kernel() {
        let mem = create_guest_memory(8 << 20, HugePages::Transparent).unwrap();
        mem.write_obj(1u64, GuestAddress(0)).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        // `hg` is the VMA flag MADV_HUGEPAGE sets.
        assert!(vma_flags(host).split(' ').any(|f| f == "hg"));
        let plain = create_guest_memory(8 << 20, HugePages::None).unwrap();
        let host = plain.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert!(!vma_flags(host).split(' ').any(|f| f == "hg"));
    }

    #[test]
    fn hugetlb_pages_are_reserved_up_front_or_refused_clearly() {
        match create_guest_memory(4 << 20, HugePages::Hugetlbfs2M) {
            Ok(mem) => {
                let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
                assert!(vma_flags(host).split(' ').any(|f| f == "ht"));
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("nr_hugepages"), "{text}");
                assert!(matches!(e, MemoryError::HugePages { mib: 4, .. }));
            }
        }
    }
}
