//! The io_uring engine: requests go to a ring whose completions are signalled on an eventfd
//! that the `io` loop watches, so completions are handled on the same thread.
//!
//! With `io_engine: Async` the ring takes IN, OUT and FLUSH; with `Sync` and a writeback
//! cache a small ring takes only FLUSH, so that an `fdatasync` lasting seconds does not
//! stall the `io` thread (and the network devices it also serves).
//!
//! Ring operations bypass seccomp, so the ring is locked down before it is enabled
//! (`IORING_REGISTER_RESTRICTIONS`): only the opcodes the engine uses, only on the one
//! registered (fixed) file, and only `IORING_REGISTER_FILES_UPDATE` afterwards (to swap the
//! backing file). Anything else posts `-EACCES`.
//!
//! Buffers belong to the kernel from the moment an SQE is in the submission ring until its
//! completion is reaped: a failed `io_uring_enter` leaves the request in flight (the SQE is
//! still queued and is submitted again later), and `drain` keeps waiting; if the kernel stays
//! unusable, the buffers and the guest memory mapping are leaked rather than freed.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::register::Restriction;
use io_uring::squeue::Flags;
use io_uring::{opcode, types, IoUring};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::request::{Request, RequestKind};
use crate::GuestMemoryMmap;
use devices::log_limiter::{LogLimiter, GUEST_LOG_PERIOD};

/// `IORING_REGISTER_FILES_UPDATE` (not exported by the io-uring crate).
const IORING_REGISTER_FILES_UPDATE: u8 = 6;
/// Index of the backing file in the ring's fixed-file table.
const FILE_INDEX: u32 = 0;
/// `drain` gives up (and leaks) after this many consecutive failed waits. No pause between
/// them: drain runs on vCPU and VMM threads whose seccomp filters allow no sleeping call.
const DRAIN_MAX_FAILURES: u32 = 1000;
/// Consecutive failed submissions the engine retries on its own (see `push_to_kernel`).
const MAX_SELF_RETRIES: u32 = 1000;

/// Errors from the async engine.
#[derive(Debug, thiserror::Error)]
pub enum AsyncError {
    #[error("cannot set up io_uring: {0}")]
    Setup(io::Error),
    #[error("cannot restrict the io_uring: {0}")]
    Restrict(io::Error),
    #[error("cannot register the backing file with the io_uring: {0}")]
    RegisterFile(io::Error),
    #[error("guest buffer {addr:#x}+{len:#x} is not contiguous host memory")]
    Buffer { addr: u64, len: u32 },
    #[error("io_uring submission queue is full")]
    Full,
    #[error("the io_uring engine does not serve {0:?} requests")]
    NotServed(RequestKind),
}

/// Which requests a ring serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineOps {
    /// IN, OUT and FLUSH (`io_engine: Async`).
    ReadWriteFlush,
    /// FLUSH only (`io_engine: Sync` with a writeback cache).
    FlushOnly,
}

impl EngineOps {
    /// Whether requests of `kind` go to the ring.
    pub fn serves(self, kind: RequestKind) -> bool {
        match self {
            EngineOps::ReadWriteFlush => {
                matches!(
                    kind,
                    RequestKind::In | RequestKind::Out | RequestKind::Flush
                )
            }
            EngineOps::FlushOnly => kind == RequestKind::Flush,
        }
    }

    fn opcodes(self) -> &'static [u8] {
        match self {
            EngineOps::ReadWriteFlush => &[
                opcode::Readv::CODE,
                opcode::Writev::CODE,
                opcode::Fsync::CODE,
            ],
            EngineOps::FlushOnly => &[opcode::Fsync::CODE],
        }
    }
}

/// An operation in flight.
#[derive(Debug)]
pub struct Pending {
    pub head: u16,
    pub status_addr: GuestAddress,
    pub kind: RequestKind,
    pub len: u64,
}

/// iovecs pointing into guest memory.
#[derive(Debug, Default)]
struct IoVecs(Vec<libc::iovec>);
// SAFETY: the pointers are only handed to the kernel, never dereferenced by Rust code; the
// memory they point to (guest RAM) is mapped for the whole process, whatever thread owns this.
unsafe impl Send for IoVecs {}

/// An operation the kernel owns, with the iovec array it reads (alive and at a stable
/// address until completion).
#[derive(Debug)]
struct InFlight {
    pending: Pending,
    iovecs: IoVecs,
}

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
    ops: EngineOps,
    pending: HashMap<u64, InFlight>,
    /// iovec arrays of completed operations, reused by the next submissions: at most one
    /// per ring entry, so after the first `capacity` requests none allocates.
    spare_iovecs: Vec<IoVecs>,
    next_id: u64,
    capacity: usize,
    /// Keeps guest memory mapped while the kernel may still touch it.
    mem: Option<GuestMemoryMmap>,
    /// SQEs sit in the submission ring that the kernel has not taken yet.
    unsubmitted: bool,
    /// Operations abandoned by `drain` with their buffers leaked.
    leaked: usize,
    /// Consecutive failed submissions.
    enter_failures: u32,
    enter_err_log: LogLimiter,
    /// Test hook: how many coming `io_uring_enter` calls fail with EIO without a syscall.
    #[cfg(test)]
    pub(crate) fail_enters: u32,
}

impl std::fmt::Debug for AsyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEngine")
            .field("ops", &self.ops)
            .field("in_flight", &self.pending.len())
            .field("leaked", &self.leaked)
            .finish()
    }
}

impl AsyncEngine {
    /// A ring of `entries` serving `ops` on `file`, restricted to exactly that.
    pub fn new(entries: u32, file: RawFd, ops: EngineOps) -> Result<Self, AsyncError> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(entries)
            .map_err(AsyncError::Setup)?;
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(AsyncError::Setup)?;
        let submitter = ring.submitter();
        submitter
            .register_files(&[file])
            .map_err(AsyncError::RegisterFile)?;
        submitter
            .register_eventfd(evt.as_raw_fd())
            .map_err(AsyncError::Setup)?;
        let mut rules: Vec<Restriction> = ops
            .opcodes()
            .iter()
            .map(|&op| Restriction::sqe_op(op))
            .collect();
        // Every SQE must name the registered file, and may use no other flag.
        rules.push(Restriction::sqe_flags_required(Flags::FIXED_FILE.bits()));
        rules.push(Restriction::sqe_flags_allowed(0));
        rules.push(Restriction::register_op(IORING_REGISTER_FILES_UPDATE));
        submitter
            .register_restrictions(&mut rules)
            .map_err(AsyncError::Restrict)?;
        submitter
            .register_enable_rings()
            .map_err(AsyncError::Restrict)?;
        Ok(AsyncEngine {
            ring,
            evt,
            ops,
            // Sized for a full ring up front: an insert never grows it on the data path.
            pending: HashMap::with_capacity(entries as usize),
            spare_iovecs: Vec::with_capacity(entries as usize),
            next_id: 0,
            capacity: entries as usize,
            mem: None,
            unsubmitted: false,
            leaked: 0,
            enter_failures: 0,
            enter_err_log: LogLimiter::new(GUEST_LOG_PERIOD),
            #[cfg(test)]
            fail_enters: 0,
        })
    }

    /// Which requests this ring serves.
    pub fn ops(&self) -> EngineOps {
        self.ops
    }

    /// Points the ring at a new backing file (after `drain`, before the old file closes).
    pub fn set_file(&mut self, file: RawFd) -> Result<(), AsyncError> {
        self.ring
            .submitter()
            .register_files_update(FILE_INDEX, &[file])
            .map(drop)
            .map_err(AsyncError::RegisterFile)
    }

    /// The completion eventfd to watch on the I/O loop.
    pub fn completion_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Operations `drain` abandoned to the kernel (buffers leaked, never freed).
    pub fn leaked(&self) -> usize {
        self.leaked
    }

    /// Whether another operation can be queued.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.capacity
    }

    /// Queues `req` on the registered file. `Ok` means the request is in flight and will
    /// come back exactly once from `reap` or `drain`, even if the kernel refused to take the
    /// submission right now (it is retried). `Err` means nothing was queued.
    pub fn submit(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &Request,
        head: u16,
    ) -> Result<(), AsyncError> {
        if !self.ops.serves(req.kind) {
            return Err(AsyncError::NotServed(req.kind));
        }
        if !self.has_room() {
            return Err(AsyncError::Full);
        }
        let mut iovecs = self.spare_iovecs.pop().unwrap_or_default();
        iovecs.0.clear();
        if req.kind != RequestKind::Flush {
            for &(addr, len) in &req.data {
                let slice = match GuestMemoryBackend::get_slice(mem, addr, len as usize) {
                    Ok(s) => s,
                    Err(_) => {
                        self.spare_iovecs.push(iovecs);
                        return Err(AsyncError::Buffer { addr: addr.0, len });
                    }
                };
                if req.kind == RequestKind::In {
                    // io_uring fills the buffer through the raw pointer, unseen by vm-memory's
                    // dirty bitmap (Diff snapshots rely on it).
                    vm_memory::bitmap::Bitmap::mark_dirty(slice.bitmap(), 0, len as usize);
                }
                iovecs.0.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: len as usize,
                });
            }
        }
        // At most seg_max (254) entries: the parser bounds the buffers.
        let iov_len = u32::try_from(iovecs.0.len()).map_err(|_| AsyncError::Full)?;
        let id = self.next_id;
        let file = types::Fixed(FILE_INDEX);
        let entry = match req.kind {
            RequestKind::In => opcode::Readv::new(file, iovecs.0.as_ptr(), iov_len)
                .offset(req.offset())
                .build(),
            RequestKind::Out => opcode::Writev::new(file, iovecs.0.as_ptr(), iov_len)
                .offset(req.offset())
                .build(),
            _ => opcode::Fsync::new(file)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(id);
        // SAFETY: the entry points at `iovecs` (moved into `self.pending` below; a Vec's heap
        // buffer does not move) and at guest memory kept mapped by `self.mem`; both live until
        // the completion is reaped in `reap` or `drain`, which never frees them while the
        // kernel may still own them (Drop drains, and leaks what it cannot drain).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.spare_iovecs.push(iovecs);
            return Err(AsyncError::Full);
        }
        self.next_id = self.next_id.wrapping_add(1);
        self.mem.get_or_insert_with(|| mem.clone());
        self.pending.insert(
            id,
            InFlight {
                pending: Pending {
                    head,
                    status_addr: req.status_addr,
                    kind: req.kind,
                    len: req.data_len,
                },
                iovecs,
            },
        );
        self.unsubmitted = true;
        self.push_to_kernel();
        Ok(())
    }

    /// `io_uring_enter`, or the test hook's failure.
    fn enter(&mut self, want: usize) -> io::Result<usize> {
        #[cfg(test)]
        if self.fail_enters > 0 {
            self.fail_enters -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.ring.submit_and_wait(want)
    }

    /// Hands queued SQEs to the kernel. On failure they stay queued and the engine wakes its
    /// own loop (through the completion fd) to try again, up to `MAX_SELF_RETRIES` times in
    /// a row; after that only the next request or completion retries, so a kernel that keeps
    /// refusing cannot make the loop spin. Either way nothing is completed twice.
    fn push_to_kernel(&mut self) {
        if !self.unsubmitted {
            return;
        }
        match self.enter(0) {
            Ok(_) => {
                self.unsubmitted = !self.ring.submission().is_empty();
                self.enter_failures = 0;
            }
            Err(e) => {
                self.enter_failures = self.enter_failures.saturating_add(1);
                if let Some(n) = self.enter_err_log.check() {
                    log::warn!(
                        "virtio-blk: io_uring submission failed, will retry: {e} \
                         ({n} similar errors suppressed before)"
                    );
                }
                if self.enter_failures <= MAX_SELF_RETRIES {
                    let _ = self.evt.write(1);
                }
            }
        }
    }

    /// Collects finished operations (call when the completion fd is readable); first retries
    /// a submission the kernel refused earlier.
    pub fn reap(&mut self) -> Vec<Finished> {
        let mut done = Vec::new();
        self.reap_into(&mut done);
        done
    }

    /// [`reap`](Self::reap) appending to `done`: the `io` thread passes the same vector each
    /// time, so a completion allocates nothing.
    pub fn reap_into(&mut self, done: &mut Vec<Finished>) {
        // The counter value is irrelevant; EAGAIN means nothing new.
        let _ = self.evt.read();
        if self.ring.submission().is_empty() {
            self.unsubmitted = false;
        }
        self.push_to_kernel();
        for cqe in self.ring.completion() {
            if let Some(InFlight { pending, iovecs }) = self.pending.remove(&cqe.user_data()) {
                self.spare_iovecs.push(iovecs);
                done.push(Finished {
                    pending,
                    result: cqe.result(),
                });
            }
        }
        // `mem` stays while the device runs (its clone copies the region list: an allocation
        // per batch otherwise); `drain`, on a reset, a file swap or a save, lets it go.
    }

    /// Waits for every operation in flight (before a reset or a file swap). Never frees a
    /// buffer the kernel may still own: when waiting keeps failing, what is left is leaked.
    pub fn drain(&mut self) -> Vec<Finished> {
        let mut done = Vec::new();
        let mut failures = 0u32;
        while !self.pending.is_empty() {
            match self.enter(1) {
                Ok(_) => {
                    self.unsubmitted = !self.ring.submission().is_empty();
                    failures = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failures += 1;
                    if failures >= DRAIN_MAX_FAILURES {
                        log::error!(
                            "virtio-blk: io_uring wait keeps failing ({e}); leaking {} \
                             operations and their buffers",
                            self.pending.len()
                        );
                        self.leak_pending();
                        break;
                    }
                }
            }
            self.reap_into(&mut done);
        }
        if self.pending.is_empty() {
            self.mem = None;
        }
        done
    }

    /// Gives up on the operations in flight without freeing anything they point to.
    fn leak_pending(&mut self) {
        self.leaked += self.pending.len();
        for (_, p) in self.pending.drain() {
            std::mem::forget(p);
        }
        if let Some(mem) = self.mem.take() {
            // The kernel may still write into guest memory: keep it mapped for good.
            std::mem::forget(mem);
        }
    }

    /// The ring itself, to push raw entries in tests.
    #[cfg(test)]
    pub(crate) fn ring_mut(&mut self) -> &mut IoUring {
        &mut self.ring
    }
}

impl Drop for AsyncEngine {
    fn drop(&mut self) {
        // The kernel must not write into guest memory after it is unmapped.
        self.drain();
    }
}
