//! Memory the devices read and write: one bump arena of free RAM above the
//! image (from the e820 map), handed out page-aligned and reset before each
//! command. Devices are reset at the end of every command that used them, so
//! nothing from a previous command can still be written by a device.

use crate::bootinfo;
use crate::e820::find_free;
use crate::mem::MAPPED_LIMIT;
use crate::sync::BootCell;

extern "C" {
    static __image_end: u8;
}

/// Arena sizes tried, largest first (the probe may run in a small VM).
const ARENA_SIZES: [u64; 6] = [64 << 20, 32 << 20, 16 << 20, 8 << 20, 4 << 20, 2 << 20];

#[derive(Clone, Copy)]
struct Arena {
    start: u64,
    end: u64,
    next: u64,
}

static ARENA: BootCell<Option<Arena>> = BootCell::new(None);

fn find_arena() -> Option<Arena> {
    let boot = bootinfo::get();
    if boot.e820_missing.is_some() {
        return None;
    }
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let initrd = boot.initrd.map(|(a, s)| (a, a.saturating_add(s)));
    let map = &boot.e820[..boot.e820_len];
    ARENA_SIZES.iter().find_map(|&len| {
        let start = find_free(map, len, image_end, MAPPED_LIMIT, initrd.as_slice())?;
        Some(Arena {
            start,
            end: start + len,
            next: start,
        })
    })
}

/// Forgets every allocation (call only when no device is running).
pub fn reset() {
    ARENA.with(|a| {
        if let Some(a) = a {
            a.next = a.start;
        }
    });
}

/// `len` bytes aligned to `align` (a power of two), not zeroed. `None` when
/// there is no free RAM left.
pub fn alloc(len: u64, align: u64) -> Option<u64> {
    ARENA.with(|slot| {
        if slot.is_none() {
            *slot = find_arena();
        }
        let a = slot.as_mut()?;
        let start = a.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(len)?;
        if end > a.end {
            return None;
        }
        a.next = end;
        Some(start)
    })
}

/// Like `alloc`, zero-filled.
pub fn alloc_zeroed(len: u64, align: u64) -> Option<u64> {
    let addr = alloc(len, align)?;
    // SAFETY: [addr, addr + len) is free RAM inside the arena, identity-mapped.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len as usize) };
    Some(addr)
}

/// The first address past the arena (finding it if needed): RAM above it is not the
/// devices' and may be used by commands that own pages (the balloon).
pub fn arena_end() -> Option<u64> {
    ARENA.with(|slot| {
        if slot.is_none() {
            *slot = find_arena();
        }
        slot.map(|a| a.end)
    })
}

/// Bytes still free in the arena.
pub fn remaining() -> u64 {
    ARENA.with(|slot| {
        if slot.is_none() {
            *slot = find_arena();
        }
        slot.map_or(0, |a| a.end - a.next)
    })
}

/// First address past the top of RAM (and past 4 GiB) plus 1 GiB: an address
/// no VMM backs with guest memory, for the hostile commands.
pub fn outside_memory() -> u64 {
    let boot = bootinfo::get();
    let top = boot.e820[..boot.e820_len]
        .iter()
        .map(|e| e.end())
        .max()
        .unwrap_or(0)
        .max(4 << 30);
    (top + (1 << 30) + (1 << 30) - 1) & !((1 << 30) - 1)
}

/// Volatile accessors for device-shared memory at a physical address.
pub fn write<T: Copy>(addr: u64, v: T) {
    // SAFETY: callers pass addresses inside arena allocations (identity-mapped
    // RAM the probe owns); volatile so the device sees every store.
    unsafe { core::ptr::write_volatile(addr as *mut T, v) }
}

pub fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: as for `write`.
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// A byte slice over arena memory.
///
/// # Safety
/// `[addr, addr + len)` must be an arena allocation not aliased by another
/// live slice, and no device may write it while the slice lives.
pub unsafe fn bytes_mut<'a>(addr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: per the caller.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}
