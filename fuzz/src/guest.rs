//! Guest memory and one split virtqueue laid out from fuzz input bytes, for the virtio
//! device targets.
//!
//! Input layout (little endian):
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 0 | queue size: `1 << (b % 9)`, 1 to 256 |
//! | 1 | target-specific flags (features the driver acks, device options) |
//! | 2..4 | `avail.idx`, written into the available ring |
//! | 4..6 | the device's next available index (where it starts reading the ring) |
//! | 6..8 | the device's next used index |
//! | 8.. | writes into guest memory, each `addr: u32, len: u16` then `len` bytes, in order |
//!
//! The rings sit at fixed addresses ([`DESC_TABLE`], [`AVAIL_RING`], [`USED_RING`]); the
//! writes put descriptors, ring entries and buffer contents anywhere, the rings included.
//! Guest RAM has three regions: two host mappings back to back, so that a buffer can be
//! inside guest memory and still span two mappings, and a third one after a hole.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::input::Input;

pub type Mem = virtio::GuestMemoryMmap;

pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
/// Where seeds put their buffers; nothing special for the device.
pub const DATA: u64 = 0x3000;
/// Guest RAM as (start, size).
pub const RAM: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x1000), (0x1_0000, 0x1000)];
/// The largest queue the targets set up (and the largest the devices accept).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;
/// Feature bit: the driver may use indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;

const HEADER_LEN: usize = 8;

/// A decoded input: the queue's registers, the flags byte and the memory writes.
#[derive(Debug, Clone)]
pub struct Scenario<'a> {
    pub size: u16,
    pub flags: u8,
    pub avail_idx: u16,
    pub next_avail: u16,
    pub next_used: u16,
    writes: &'a [u8],
}

impl<'a> Scenario<'a> {
    pub fn parse(data: &'a [u8]) -> Scenario<'a> {
        let mut input = Input::new(data);
        Scenario {
            size: 1 << (input.u8() % 9),
            flags: input.u8(),
            avail_idx: input.u16(),
            next_avail: input.u16(),
            next_used: input.u16(),
            writes: input.rest(),
        }
    }

    /// Fresh guest memory with the input's writes applied. Writes (or their parts) that
    /// fall outside guest memory are dropped, as a guest could not make them either.
    pub fn memory(&self) -> Mem {
        let ranges: Vec<(GuestAddress, usize)> =
            RAM.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
        let mem = match Mem::from_ranges(&ranges) {
            Ok(mem) => mem,
            // The layout is a constant: failing here is a bug of the harness, not a finding.
            Err(e) => panic!("cannot map the fuzz guest memory: {e}"),
        };
        let _ = mem.write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2));
        let mut input = Input::new(self.writes);
        while !input.is_empty() {
            let addr = u64::from(input.u32());
            let len = usize::from(input.u16());
            let bytes = input.bytes(len);
            if mem.write_slice(bytes, GuestAddress(addr)).is_err() {
                // Partly outside guest memory: keep the bytes that land inside.
                for (i, b) in bytes.iter().enumerate() {
                    let _ = mem.write_obj(*b, GuestAddress(addr.wrapping_add(i as u64)));
                }
            }
        }
        // The device only writes `used.idx` (from its own next used index); starting it in
        // step lets `check_completions` count what the device added.
        let _ = mem.write_obj(self.next_used, GuestAddress(USED_RING + 2));
        mem
    }

    /// VERSION_1 plus the features whose flag bit (`(flag bit, feature bit)` pairs) the
    /// input set.
    pub fn features(&self, flag_features: &[(u8, u32)]) -> u64 {
        flag_features
            .iter()
            .filter(|(flag, _)| self.flags & flag != 0)
            .fold(
                1u64 << virtio::features::VIRTIO_F_VERSION_1,
                |f, (_, bit)| f | 1u64 << bit,
            )
    }

    /// The queue as the transport hands it to the device: ready, at the fixed addresses.
    pub fn queue(&self) -> Queue {
        let mut q = match Queue::new(MAX_QUEUE_SIZE) {
            Ok(q) => q,
            Err(e) => panic!("cannot create a queue of {MAX_QUEUE_SIZE}: {e:?}"),
        };
        q.set_size(self.size);
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_next_avail(self.next_avail);
        q.set_next_used(self.next_used);
        q.set_ready(true);
        q
    }

    /// Checks what the device wrote to the used ring: it completed only chains the driver
    /// made available (heads from slots `next_avail..avail.idx`), each at most as often as
    /// it was offered. Checked only when the device cannot have overwritten the rings with
    /// data: no device-writable or indirect descriptor in the table touches a ring.
    pub fn check_completions(&self, mem: &Mem) {
        let size = u64::from(self.size);
        let avail_end = AVAIL_RING + 6 + 2 * size;
        let used_end = USED_RING + 6 + 8 * size;
        for i in 0..size {
            let at = GuestAddress(DESC_TABLE + 16 * i);
            let (Ok(addr), Ok(len), Ok(flags)) = (
                mem.read_obj::<u64>(at),
                mem.read_obj::<u32>(at.unchecked_add(8)),
                mem.read_obj::<u16>(at.unchecked_add(12)),
            ) else {
                return;
            };
            let end = addr.saturating_add(u64::from(len));
            let touches = |start: u64, stop: u64| addr < stop && end > start;
            if flags & F_INDIRECT != 0
                || (flags & F_WRITE != 0
                    && (touches(AVAIL_RING, avail_end)
                        || touches(USED_RING, used_end)
                        || touches(DESC_TABLE, DESC_TABLE + 16 * size)))
            {
                return;
            }
        }
        let read_u16 = |a: u64| mem.read_obj::<u16>(GuestAddress(a)).unwrap_or(0);
        let avail_idx = read_u16(AVAIL_RING + 2);
        let offered = avail_idx.wrapping_sub(self.next_avail);
        if offered > self.size {
            // The device must refuse such a ring; nothing it completes can be matched.
            return;
        }
        let mut heads: Vec<u16> = (0..offered)
            .map(|k| {
                let slot = u64::from(self.next_avail.wrapping_add(k)) % size;
                read_u16(AVAIL_RING + 4 + 2 * slot)
            })
            .collect();
        let used = read_u16(USED_RING + 2).wrapping_sub(self.next_used);
        assert!(
            used <= offered,
            "the device completed {used} chains but only {offered} were available"
        );
        for k in 0..used {
            let slot = u64::from(self.next_used.wrapping_add(k)) % size;
            let id = mem
                .read_obj::<u32>(GuestAddress(USED_RING + 4 + 8 * slot))
                .unwrap_or(u32::MAX);
            match heads.iter().position(|&h| u32::from(h) == id) {
                Some(i) => {
                    heads.swap_remove(i);
                }
                None => panic!(
                    "used entry {k} names chain {id}, which was not available (or completed twice)"
                ),
            }
        }
    }

    /// An empty ready queue at other addresses (e.g. a receive queue the target leaves
    /// alone), inside the first region.
    pub fn idle_queue(base: u64) -> Queue {
        let mut q = match Queue::new(MAX_QUEUE_SIZE) {
            Ok(q) => q,
            Err(e) => panic!("cannot create a queue of {MAX_QUEUE_SIZE}: {e:?}"),
        };
        q.set_size(16);
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
        q.set_ready(true);
        q
    }
}

/// Builds inputs in the [`Scenario`] layout, for seeds and tests.
#[derive(Debug, Clone)]
pub struct ScenarioBuilder {
    size_log2: u8,
    flags: u8,
    next_desc: u16,
    next_slot: u16,
    writes: Vec<u8>,
}

impl ScenarioBuilder {
    pub fn new(size_log2: u8, flags: u8) -> Self {
        ScenarioBuilder {
            size_log2,
            flags,
            next_desc: 0,
            next_slot: 0,
            writes: Vec::new(),
        }
    }

    /// Writes `bytes` at guest address `addr`.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        for (i, chunk) in bytes.chunks(usize::from(u16::MAX)).enumerate() {
            let at = addr + (i * usize::from(u16::MAX)) as u64;
            self.writes.extend_from_slice(&(at as u32).to_le_bytes());
            self.writes
                .extend_from_slice(&(chunk.len() as u16).to_le_bytes());
            self.writes.extend_from_slice(chunk);
        }
        self
    }

    /// Writes descriptor `index`.
    pub fn desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) -> &mut Self {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.write(DESC_TABLE + 16 * u64::from(index), &d)
    }

    /// Makes a chain of `(addr, len, device-writable)` buffers from the next free
    /// descriptors and puts its head in the next available ring slot.
    pub fn chain(&mut self, bufs: &[(u64, u32, bool)]) -> &mut Self {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let index = head + i as u16;
            let last = i + 1 == bufs.len();
            let mut flags = if write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.desc(index, addr, len, flags, index + 1);
        }
        self.next_desc += bufs.len() as u16;
        self.avail(head)
    }

    /// Puts `head` in the next available ring slot.
    pub fn avail(&mut self, head: u16) -> &mut Self {
        let slot = self.next_slot % (1 << (self.size_log2 % 9));
        self.next_slot += 1;
        self.write(AVAIL_RING + 4 + 2 * u64::from(slot), &head.to_le_bytes())
    }

    /// The input: `avail.idx` covers every chain added; the device starts at 0.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.writes.len());
        out.push(self.size_log2);
        out.push(self.flags);
        out.extend_from_slice(&self.next_slot.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.writes);
        out
    }
}

/// Locks a target's shared device, recovering it when an earlier input panicked while
/// holding it (the panic was the finding; later inputs still need the device).
pub fn lock_recovering<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use virtio_queue::QueueOwnedT;

    #[test]
    fn a_built_chain_reads_back_through_the_queue() {
        let mut b = ScenarioBuilder::new(4, 0);
        b.write(DATA, b"hello")
            .chain(&[(DATA, 5, false), (DATA + 0x100, 1, true)]);
        let input = b.build();
        let s = Scenario::parse(&input);
        assert_eq!((s.size, s.avail_idx), (16, 1));
        let mem = s.memory();
        let mut q = s.queue();
        assert!(q.is_valid(&mem));
        let chain = q.iter(&mem).unwrap().next().unwrap();
        let descs: Vec<_> = chain.collect();
        assert_eq!(descs.len(), 2);
        assert_eq!((descs[0].addr().0, descs[0].len()), (DATA, 5));
        assert!(descs[1].is_write_only());
        let mut got = [0u8; 5];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got, b"hello");
    }

    #[test]
    #[should_panic(expected = "not available")]
    fn a_completion_of_a_chain_never_offered_is_caught() {
        let mut b = ScenarioBuilder::new(2, 0);
        b.chain(&[(DATA, 16, false)]);
        let input = b.build();
        let s = Scenario::parse(&input);
        let mem = s.memory();
        // As if the device said chain 3 completed; only chain 0 was offered.
        mem.write_obj(1u16, GuestAddress(USED_RING + 2)).unwrap();
        mem.write_obj(3u32, GuestAddress(USED_RING + 4)).unwrap();
        s.check_completions(&mem);
    }

    #[test]
    fn writes_outside_memory_are_dropped_and_short_inputs_parse() {
        let mut b = ScenarioBuilder::new(0, 0);
        b.write(0x7ffe, &[1, 2, 3, 4]).write(0xfffe, &[5, 6, 7]);
        let input = b.build();
        let mem = Scenario::parse(&input).memory();
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x7ffe)).unwrap();
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1_0000)).unwrap(), 7);
        for len in 0..HEADER_LEN + 3 {
            let s = Scenario::parse(&input[..len]);
            let _ = s.memory();
            let _ = s.queue();
        }
    }
}
