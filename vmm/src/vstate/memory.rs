//! Guest RAM: anonymous mappings laid out by the architecture.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::arch_memory_regions;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("machine-config.mem_size_mib: {mib} MiB does not fit in this host's address space")]
    TooLarge { mib: u64 },
    #[error("machine-config.mem_size_mib: cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `mem_size` bytes of guest RAM (one or two regions, see [`arch_memory_regions`]).
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mib = mem_size >> 20;
    let ranges = arch_memory_regions(mem_size)
        .into_iter()
        .map(|(addr, len)| {
            Ok((
                addr,
                usize::try_from(len).map_err(|_| MemoryError::TooLarge { mib })?,
            ))
        })
        .collect::<Result<Vec<(GuestAddress, usize)>, MemoryError>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map { mib, source })
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryBackend;

    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        let mem = create_guest_memory(32 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((32 << 20) - 1));
    }
}
