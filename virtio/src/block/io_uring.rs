//! The async engine: IN/OUT/FLUSH go to an io_uring; the ring signals completions on an
//! eventfd that the `io` loop watches, so completions are handled on the same thread.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::request::{Request, RequestKind};
use crate::GuestMemoryMmap;

/// Errors from the async engine.
#[derive(Debug, thiserror::Error)]
pub enum AsyncError {
    #[error("cannot set up io_uring: {0}")]
    Setup(std::io::Error),
    #[error("guest buffer {addr:#x}+{len:#x} is not contiguous host memory")]
    Buffer { addr: u64, len: u32 },
    #[error("io_uring submission failed: {0}")]
    Submit(std::io::Error),
    #[error("io_uring submission queue is full")]
    Full,
}

/// An operation in flight.
#[derive(Debug)]
pub struct Pending {
    pub head: u16,
    pub status_addr: GuestAddress,
    pub kind: RequestKind,
    pub len: u64,
    /// Keeps the iovec array alive (and at a stable address) until completion.
    _iovecs: IoVecs,
}

/// iovecs pointing into guest memory.
#[derive(Debug)]
struct IoVecs {
    _iovecs: Vec<libc::iovec>,
}
// SAFETY: the pointers are only handed to the kernel, never dereferenced by Rust code; the
// memory they point to (guest RAM) is mapped for the whole process, whatever thread owns this.
unsafe impl Send for IoVecs {}

/// A completed operation: `result` is the byte count or a negative errno.
#[derive(Debug)]
pub struct Finished {
    pub pending: Pending,
    pub result: i32,
}

impl Finished {
    /// Whether the whole operation succeeded.
    pub fn ok(&self) -> bool {
        match self.pending.kind {
            RequestKind::Flush => self.result >= 0,
            _ => u64::try_from(self.result).is_ok_and(|n| n == self.pending.len),
        }
    }
}

pub struct AsyncEngine {
    ring: IoUring,
    evt: EventFd,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    capacity: usize,
    /// Keeps guest memory mapped while the kernel may still touch it.
    mem: Option<GuestMemoryMmap>,
}

impl std::fmt::Debug for AsyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEngine")
            .field("in_flight", &self.pending.len())
            .finish()
    }
}

impl AsyncEngine {
    pub fn new(entries: u32) -> Result<Self, AsyncError> {
        let ring = IoUring::new(entries).map_err(AsyncError::Setup)?;
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(AsyncError::Setup)?;
        ring.submitter()
            .register_eventfd(evt.as_raw_fd())
            .map_err(AsyncError::Setup)?;
        Ok(AsyncEngine {
            ring,
            evt,
            pending: HashMap::new(),
            next_id: 0,
            capacity: entries as usize,
            mem: None,
        })
    }

    /// The completion eventfd to watch on the I/O loop.
    pub fn completion_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether another operation can be queued.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.capacity
    }

    /// Queues IN, OUT or FLUSH on `fd` and submits it.
    pub fn submit(
        &mut self,
        fd: RawFd,
        mem: &GuestMemoryMmap,
        req: &Request,
        head: u16,
    ) -> Result<(), AsyncError> {
        if !self.has_room() {
            return Err(AsyncError::Full);
        }
        let mut iovecs = Vec::with_capacity(req.data.len());
        for &(addr, len) in &req.data {
            let slice = GuestMemoryBackend::get_slice(mem, addr, len as usize)
                .map_err(|_| AsyncError::Buffer { addr: addr.0, len })?;
            if req.kind == RequestKind::In {
                // io_uring fills the buffer through the raw pointer, unseen by vm-memory's
                // dirty bitmap (Diff snapshots rely on it).
                vm_memory::bitmap::Bitmap::mark_dirty(slice.bitmap(), 0, len as usize);
            }
            iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: len as usize,
            });
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let iov_len = u32::try_from(iovecs.len()).map_err(|_| AsyncError::Full)?;
        let entry = match req.kind {
            RequestKind::In => opcode::Readv::new(types::Fd(fd), iovecs.as_ptr(), iov_len)
                .offset(req.offset())
                .build(),
            RequestKind::Out => opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), iov_len)
                .offset(req.offset())
                .build(),
            _ => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(id);
        // SAFETY: the entry points at `iovecs` (moved into `self.pending` below; a Vec's heap
        // buffer does not move) and at guest memory kept mapped by `self.mem`; both live until
        // the completion is reaped in `reap` or `drain`, and Drop drains every operation.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            return Err(AsyncError::Full);
        }
        self.mem.get_or_insert_with(|| mem.clone());
        self.pending.insert(
            id,
            Pending {
                head,
                status_addr: req.status_addr,
                kind: req.kind,
                len: req.data_len,
                _iovecs: IoVecs { _iovecs: iovecs },
            },
        );
        self.ring.submit().map_err(AsyncError::Submit)?;
        Ok(())
    }

    /// Collects finished operations (call when the completion fd is readable).
    pub fn reap(&mut self) -> Vec<Finished> {
        // The counter value is irrelevant; EAGAIN means nothing new.
        let _ = self.evt.read();
        let mut done = Vec::new();
        for cqe in self.ring.completion() {
            if let Some(pending) = self.pending.remove(&cqe.user_data()) {
                done.push(Finished {
                    pending,
                    result: cqe.result(),
                });
            }
        }
        if self.pending.is_empty() {
            self.mem = None;
        }
        done
    }

    /// Waits for every operation in flight (before a reset or a file swap).
    pub fn drain(&mut self) -> Vec<Finished> {
        let mut done = Vec::new();
        while !self.pending.is_empty() {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("virtio-blk: io_uring wait failed: {e}");
                    break;
                }
            }
            done.extend(self.reap());
        }
        done
    }
}

impl Drop for AsyncEngine {
    fn drop(&mut self) {
        // The kernel must not write into guest memory after it is unmapped.
        self.drain();
    }
}
