//! `VIRTIO_RING_F_INDIRECT_DESC` is never offered, so a chain that reaches an indirect
//! table is a driver error: refused before it is parsed. (The virtio-queue iterator follows
//! indirect tables whatever was negotiated, and hides that it did.)

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::GuestMemoryMmap;

/// Whether the chain starting at `head` in the descriptor table at `table` (of `size`
/// entries) has a descriptor flagged `VIRTQ_DESC_F_INDIRECT`. Walks the `next` links at most
/// `size` steps; anything the walk cannot follow (a loop, an index out of the table,
/// unreadable memory) is left to the parser, which reports it.
pub fn chain_uses_indirect(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> bool {
    let mut index = head;
    for _ in 0..size {
        if index >= size {
            return false;
        }
        let Some(addr) = table.checked_add(u64::from(index) * 16) else {
            return false;
        };
        let Ok(desc) = mem.read_obj::<Descriptor>(addr) else {
            return false;
        };
        if desc.refers_to_indirect_table() {
            return true;
        }
        if !desc.has_next() {
            return false;
        }
        index = desc.next();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn finds_an_indirect_descriptor_anywhere_in_the_chain() {
        let mem = crate::test_utils::guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let d = |flags, next| RawDescriptor::from(Descriptor::new(0x10_0000, 16, flags, next));
        // 0 -> 1 -> 2 (indirect), and 3 alone, and 4 -> 5 -> 4 (a loop).
        for (i, desc) in [d(1, 1), d(1, 2), d(4, 0), d(0, 0), d(1, 5), d(1, 4)]
            .into_iter()
            .enumerate()
        {
            vq.desc_table().store(i as u16, desc).unwrap();
        }
        let table = vq.desc_table_addr();
        assert!(chain_uses_indirect(&mem, table, 16, 0));
        assert!(chain_uses_indirect(&mem, table, 16, 2));
        assert!(!chain_uses_indirect(&mem, table, 16, 3));
        assert!(!chain_uses_indirect(&mem, table, 16, 4));
        assert!(!chain_uses_indirect(&mem, table, 16, 40));
    }
}
