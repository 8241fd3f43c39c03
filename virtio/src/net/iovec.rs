//! Preallocated iovec lists pointing straight into guest memory, for readv/writev on the tap.
//!
//! [`IoVecStorage`] keeps the allocation between frames (no allocation on the hot path);
//! [`IoVecs`] borrows it for one frame and ties the raw pointers to the guest-memory borrow
//! they come from, so the tap can pass them to the kernel without further checks.

use std::marker::PhantomData;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// The kernel's `UIO_MAXIOV`: readv/writev refuse longer lists.
pub const MAX_IOVECS: usize = 1024;

/// An empty, reusable iovec allocation.
pub struct IoVecStorage {
    iovs: Vec<libc::iovec>,
}

// SAFETY: the storage holds raw pointers only while an `IoVecs` borrows it (which clears it on
// drop), and those pointers refer to guest memory that is itself shared between threads; an
// idle `IoVecStorage` is an empty vector.
unsafe impl Send for IoVecStorage {}

impl std::fmt::Debug for IoVecStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoVecStorage")
            .field("capacity", &self.iovs.capacity())
            .finish()
    }
}

impl IoVecStorage {
    pub fn with_capacity(n: usize) -> Self {
        IoVecStorage {
            iovs: Vec::with_capacity(n.min(MAX_IOVECS)),
        }
    }

    /// Borrows the allocation for one frame whose buffers live at least as long as `'m`.
    pub fn borrow<'m>(&mut self) -> IoVecs<'_, 'm> {
        self.iovs.clear();
        IoVecs {
            iovs: &mut self.iovs,
            bytes: 0,
            reserved: 0,
            _mem: PhantomData,
        }
    }

    /// Like [`borrow`](Self::borrow), keeping one slot free for [`IoVecs::push_tail`].
    pub fn borrow_with_tail<'m>(&mut self) -> IoVecs<'_, 'm> {
        let mut iovs = self.borrow();
        iovs.reserved = 1;
        iovs
    }
}

/// The iovecs of one frame. Pushing never allocates: it fails once the preallocated capacity
/// (at most [`MAX_IOVECS`]) is used up.
pub struct IoVecs<'a, 'm> {
    iovs: &'a mut Vec<libc::iovec>,
    bytes: usize,
    /// Slots kept free for `push_tail`.
    reserved: usize,
    _mem: PhantomData<&'m [u8]>,
}

impl<'m> IoVecs<'_, 'm> {
    /// Appends a guest-memory slice; `false` when the list is full. The slice is marked dirty
    /// in the memory's bitmap: the tap writes rx frames through the raw pointer, which
    /// vm-memory cannot see (tx slices are marked too: a few pages too many in a Diff
    /// snapshot, never one too few).
    #[must_use]
    pub fn push_slice<B: BitmapSlice>(&mut self, s: &VolatileSlice<'m, B>) -> bool {
        s.bitmap().mark_dirty(0, s.len());
        let guard = s.ptr_guard_mut();
        self.push_raw(guard.as_ptr(), s.len())
    }

    /// Appends a host buffer (a copy the device owns, e.g. checked tx headers); `false`
    /// when the list is full. Only ever used for writev: the kernel only reads it.
    #[must_use]
    pub fn push_bytes(&mut self, b: &'m [u8]) -> bool {
        self.push_raw(b.as_ptr().cast_mut(), b.len())
    }

    /// Appends a writable host buffer (tests, or a bounce buffer).
    #[cfg(test)]
    pub fn push_bytes_mut(&mut self, b: &'m mut [u8]) {
        let ok = self.push_raw(b.as_mut_ptr(), b.len());
        assert!(ok, "iovec list full");
    }

    /// Appends a host buffer after everything else, in the slot kept by
    /// [`IoVecStorage::borrow_with_tail`]: rx reads one byte past the guest's buffers into it
    /// to learn that a frame did not fit. `false` if there is no free slot.
    #[must_use]
    pub fn push_tail(&mut self, b: &'m mut [u8]) -> bool {
        self.reserved = 0;
        self.push_raw(b.as_mut_ptr(), b.len())
    }

    fn push_raw(&mut self, ptr: *mut u8, len: usize) -> bool {
        if len == 0 {
            return true;
        }
        let limit = self.iovs.capacity().min(MAX_IOVECS) - self.reserved;
        if self.iovs.len() >= limit {
            return false;
        }
        self.iovs.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        });
        self.bytes += len;
        true
    }

    /// Total bytes the list covers.
    pub fn total_len(&self) -> usize {
        self.bytes
    }

    /// Pointer and count for readv/writev.
    pub(super) fn as_raw(&self) -> (*const libc::iovec, libc::c_int) {
        // The count is bounded by MAX_IOVECS, so it fits.
        (self.iovs.as_ptr(), self.iovs.len() as libc::c_int)
    }
}

impl Drop for IoVecs<'_, '_> {
    fn drop(&mut self) {
        // Leave no dangling pointers in the storage.
        self.iovs.clear();
    }
}
