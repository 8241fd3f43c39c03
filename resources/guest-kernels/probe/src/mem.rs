//! The memory functions the compiler expects. Written with rep-string
//! instructions (one emulated instruction per element under PVM, and LLVM
//! cannot turn them back into calls to themselves).

use core::arch::asm;

/// # Safety
/// Standard `memcpy` contract: valid, non-overlapping regions of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees both regions are valid for n bytes.
    unsafe {
        asm!("rep movsq", inout("rcx") n / 8 => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
        asm!("rep movsb", inout("rcx") n % 8 => _, inout("rdi") dest.add(n & !7) => _,
             inout("rsi") src.add(n & !7) => _, options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// Standard `memmove` contract: both regions valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when dest is below src or disjoint.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: overlapping with dest above src: copy backwards (DF=1), then clear DF.
    unsafe {
        asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _,
             inout("rsi") src.add(n - 1) => _, options(nostack));
    }
    dest
}

/// # Safety
/// Standard `memset` contract: `dest` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    let byte = c as u8 as u64;
    let pattern = byte * 0x0101_0101_0101_0101;
    // SAFETY: caller guarantees dest is valid for n bytes.
    unsafe {
        asm!("rep stosq", inout("rcx") n / 8 => _, inout("rdi") dest => _, in("rax") pattern,
             options(nostack, preserves_flags));
        asm!("rep stosb", inout("rcx") n % 8 => _, inout("rdi") dest.add(n & !7) => _, in("rax") pattern,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// Standard `memcmp` contract: both regions valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both regions are valid for n bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// Same as `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// `s` points to a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller guarantees a terminating NUL within the allocation.
    while unsafe { core::ptr::read_volatile(s.add(n)) } != 0 {
        n += 1;
    }
    n
}

#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Reads a plain value from a guest physical address (identity-mapped).
///
/// # Safety
/// `addr` must be mapped (below 4 GiB) and hold a `T`'s worth of bytes.
pub unsafe fn read_phys<T: Copy>(addr: u64) -> T {
    // SAFETY: per the caller; unaligned reads are fine on x86.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Highest physical address (exclusive) covered by the probe's identity map.
pub const MAPPED_LIMIT: u64 = 4 << 30;
