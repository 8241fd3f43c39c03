//! Global state for a single-threaded kernel.

use core::cell::UnsafeCell;

/// A static that only the bootstrap processor touches. APs run a few lines of
/// assembly and never see these, and there are no interrupt handlers that
/// return, so there is never a second accessor.
pub struct BootCell<T>(UnsafeCell<T>);

// SAFETY: only the BSP accesses BootCells (see above), so no concurrent access.
unsafe impl<T> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// Runs `f` with exclusive access. Must not be nested on the same cell.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: single accessor (type docs); `with` is never re-entered for
        // one cell in this crate, so the &mut is unique while `f` runs.
        f(unsafe { &mut *self.0.get() })
    }

    pub fn as_ptr(&self) -> *mut T {
        self.0.get()
    }
}

impl<T: Copy> BootCell<T> {
    pub fn get(&self) -> T {
        self.with(|v| *v)
    }

    pub fn set(&self, value: T) {
        self.with(|v| *v = value)
    }
}
