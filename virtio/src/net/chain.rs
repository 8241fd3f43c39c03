//! Validation of guest descriptor chains, and byte access across their segments.
//!
//! A chain is accepted only if every descriptor has the direction the queue requires, lies
//! entirely inside guest memory, the chain terminates within the queue size (no loop, no bad
//! `next`), and its total length is within bounds. Anything else is a [`ChainError`]: the
//! caller drops the chain and counts it; nothing here panics on guest input.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::iovec::IoVecs;
use super::Mem;

/// One validated guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "chain {head}: descriptor {position} is device-writable where the device must only read"
    )]
    WriteOnlyInTx { head: u16, position: usize },
    #[error("chain {head}: descriptor {position} is device-readable where the device must write")]
    ReadOnlyInRx { head: u16, position: usize },
    #[error("chain {head}: buffer {addr:#x}+{len} lies outside guest memory")]
    OutOfMemory { head: u16, addr: u64, len: u32 },
    #[error(
        "chain {head} does not terminate (loop, bad next index, bad indirect table or over 4 GiB)"
    )]
    Unterminated { head: u16 },
    #[error("chain {head} holds {len} bytes, more than the {max} allowed")]
    TooLong { head: u16, len: u64, max: u32 },
    #[error("chain {head} holds {len} bytes, fewer than the {min} required")]
    TooShort { head: u16, len: u32, min: u32 },
    #[error("chain {head} has more segments than the device handles")]
    TooManySegments { head: u16 },
    #[error(
        "chain {head} uses an indirect table, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated"
    )]
    Indirect { head: u16 },
}

/// [`parse_chain`], after refusing a chain that reaches an indirect table (never negotiated).
/// `queue` is the queue the chain was popped from.
pub fn parse_queue_chain<M>(
    queue: &virtio_queue::Queue,
    chain: DescriptorChain<M>,
    mem: &Mem,
    device_writes: bool,
    min_len: u32,
    max_len: u32,
    segs: &mut Vec<Segment>,
) -> Result<u32, ChainError>
where
    M: Deref<Target = Mem>,
{
    use virtio_queue::QueueT;
    let head = chain.head_index();
    let table = GuestAddress(queue.desc_table());
    if crate::indirect::chain_uses_indirect(mem, table, queue.size(), head) {
        return Err(ChainError::Indirect { head });
    }
    parse_chain(chain, mem, device_writes, min_len, max_len, segs)
}

/// Walks `chain`, appending its segments to `segs` (which never grows past its capacity).
/// Returns the chain's total length. On error `segs` is left as it was.
pub fn parse_chain<M>(
    chain: DescriptorChain<M>,
    mem: &Mem,
    device_writes: bool,
    min_len: u32,
    max_len: u32,
    segs: &mut Vec<Segment>,
) -> Result<u32, ChainError>
where
    M: Deref<Target = Mem>,
{
    let start = segs.len();
    let r = walk(chain, mem, device_writes, min_len, max_len, segs);
    if r.is_err() {
        segs.truncate(start);
    }
    r
}

fn walk<M>(
    chain: DescriptorChain<M>,
    mem: &Mem,
    device_writes: bool,
    min_len: u32,
    max_len: u32,
    segs: &mut Vec<Segment>,
) -> Result<u32, ChainError>
where
    M: Deref<Target = Mem>,
{
    let head = chain.head_index();
    let mut total: u64 = 0;
    let mut last_has_next = true;
    for (position, desc) in chain.enumerate() {
        last_has_next = desc.has_next();
        if desc.is_write_only() != device_writes {
            return Err(if device_writes {
                ChainError::ReadOnlyInRx { head, position }
            } else {
                ChainError::WriteOnlyInTx { head, position }
            });
        }
        let len = desc.len();
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len as usize) {
            return Err(ChainError::OutOfMemory {
                head,
                addr: desc.addr().raw_value(),
                len,
            });
        }
        total += u64::from(len);
        if total > u64::from(max_len) {
            return Err(ChainError::TooLong {
                head,
                len: total,
                max: max_len,
            });
        }
        if segs.len() == segs.capacity() {
            return Err(ChainError::TooManySegments { head });
        }
        segs.push(Segment {
            addr: desc.addr(),
            len,
        });
    }
    // The iterator stops silently on a loop (after queue-size steps), a `next` out of the
    // table, an unreadable descriptor or a bad indirect table: all leave NEXT set on the last
    // descriptor seen (or yield nothing at all).
    if last_has_next {
        return Err(ChainError::Unterminated { head });
    }
    // `total <= max_len`, a u32.
    let total = total as u32;
    if total < min_len {
        return Err(ChainError::TooShort {
            head,
            len: total,
            min: min_len,
        });
    }
    Ok(total)
}

/// Copies `buf.len()` bytes starting `offset` bytes into the segments. `false` if the
/// segments are shorter or memory access fails.
pub fn read_at(mem: &Mem, segs: &[Segment], offset: usize, buf: &mut [u8]) -> bool {
    access_at(segs, offset, buf.len(), |addr, range| {
        mem.read_slice(&mut buf[range], addr).is_ok()
    })
}

/// Writes `data` starting `offset` bytes into the segments.
pub fn write_at(mem: &Mem, segs: &[Segment], offset: usize, data: &[u8]) -> bool {
    access_at(segs, offset, data.len(), |addr, range| {
        mem.write_slice(&data[range], addr).is_ok()
    })
}

fn access_at(
    segs: &[Segment],
    mut offset: usize,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut done = 0;
    for s in segs {
        if done == len {
            break;
        }
        let seg_len = s.len as usize;
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        let n = (seg_len - offset).min(len - done);
        // Segments were range-checked when parsed, so `offset` stays inside this one.
        let addr = s.addr.unchecked_add(offset as u64);
        if !f(addr, done..done + n) {
            return false;
        }
        done += n;
        offset = 0;
    }
    done == len
}

/// Appends iovecs covering the segments, at most `limit` bytes. `false` if the list is full
/// or memory cannot be mapped.
pub fn push_iovecs<'m>(
    mem: &'m Mem,
    segs: &[Segment],
    limit: usize,
    iovs: &mut IoVecs<'_, 'm>,
) -> bool {
    push_iovecs_after(mem, segs, 0, limit, iovs)
}

/// Like [`push_iovecs`], but leaves out the first `skip` bytes of the segments (the tx path
/// sends its own copy of the headers instead).
pub fn push_iovecs_after<'m>(
    mem: &'m Mem,
    segs: &[Segment],
    mut skip: usize,
    mut limit: usize,
    iovs: &mut IoVecs<'_, 'm>,
) -> bool {
    for s in segs {
        if limit == 0 {
            break;
        }
        let seg_len = s.len as usize;
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        // Segments were range-checked when parsed, so `skip` stays inside this one.
        let addr = s.addr.unchecked_add(skip as u64);
        let len = (seg_len - skip).min(limit);
        skip = 0;
        limit -= len;
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            match slice {
                Ok(slice) => {
                    if !iovs.push_slice(&slice) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestAddress;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn mem() -> Mem {
        Mem::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn parse(descs: &[RawDescriptor], writes: bool) -> (Result<u32, ChainError>, Vec<Segment>) {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();
        let mut segs = Vec::with_capacity(64);
        let r = parse_chain(chain, &m, writes, 12, 65562, &mut segs);
        (r, segs)
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    #[test]
    fn good_chains_parse() {
        let (r, segs) = parse(&[d(0x1000, 12, F_NEXT, 1), d(0x2000, 100, 0, 0)], false);
        assert_eq!(r, Ok(112));
        assert_eq!(segs.len(), 2);
        let (r, _) = parse(&[d(0x1000, 1526, F_WRITE, 0)], true);
        assert_eq!(r, Ok(1526));
    }

    #[test]
    fn malformed_chains_are_refused() {
        let (r, segs) = parse(
            &[d(0x1000, 12, F_NEXT, 1), d(0x2000, 100, F_WRITE, 0)],
            false,
        );
        assert!(matches!(
            r,
            Err(ChainError::WriteOnlyInTx { position: 1, .. })
        ));
        assert!(segs.is_empty());
        let (r, _) = parse(&[d(0x1000, 100, 0, 0)], true);
        assert!(matches!(r, Err(ChainError::ReadOnlyInRx { .. })));
        let (r, _) = parse(&[d(0x1f_ff00, 0x200, 0, 0)], false);
        assert!(matches!(r, Err(ChainError::OutOfMemory { .. })));
        let (r, _) = parse(&[d(u64::MAX - 4, 12, 0, 0)], false);
        assert!(matches!(r, Err(ChainError::OutOfMemory { .. })));
        // Two descriptors pointing at each other.
        let (r, _) = parse(&[d(0x1000, 12, F_NEXT, 1), d(0x2000, 12, F_NEXT, 0)], false);
        assert!(matches!(r, Err(ChainError::Unterminated { .. })), "{r:?}");
        // `next` beyond the table.
        let (r, _) = parse(&[d(0x1000, 12, F_NEXT, 200)], false);
        assert!(matches!(r, Err(ChainError::Unterminated { .. })));
        let (r, _) = parse(&[d(0x1000, 8, 0, 0)], false);
        assert!(matches!(r, Err(ChainError::TooShort { len: 8, .. })));
        let (r, _) = parse(&[d(0x1000, 65563, 0, 0)], false);
        assert!(matches!(r, Err(ChainError::TooLong { .. })));
    }

    #[test]
    fn byte_access_spans_segments() {
        let m = mem();
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 4,
            },
            Segment {
                addr: GuestAddress(0x3000),
                len: 8,
            },
        ];
        assert!(write_at(&m, &segs, 2, &[1, 2, 3, 4]));
        let mut b = [0u8; 4];
        assert!(read_at(&m, &segs, 2, &mut b));
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3001)).unwrap(), 4);
        assert!(!read_at(&m, &segs, 10, &mut b));
    }
}
