//! The virtio-blk device: features, config space, activation and request execution.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::file::DiskError;
use super::io_uring::{AsyncEngine, AsyncError, EngineOps, Finished};
use super::metrics::BlockMetrics;
use super::request::{
    self, Request, RequestKind, DEVICE_ID_LEN, MAX_DISCARD_SECTORS, MAX_SEGMENTS, SEG_MAX,
};
use super::{BlockConfig, CacheType, ImageFormat, IoEngine};
use crate::device::{
    read_config_space, ActivateContext, ActivateError, InterruptType, VirtioDevice, VirtioInterrupt,
};
use crate::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::GuestMemoryMmap;
use devices::log_limiter::{LogLimiter, GUEST_LOG_PERIOD};

/// Maximum size of the request queue.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
const CONFIG_SPACE_LEN: usize = 60;
// seg_max counts what fits a full queue besides the header and status descriptors.
const _: () = assert!(SEG_MAX == BLOCK_QUEUE_SIZE as u32 - 2);
const VIRTIO_ID_BLOCK: u32 = 2;

/// Errors from building or updating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot create the device EventFd: {0}")]
    EventFd(std::io::Error),
    #[error("rate limiter: {0}")]
    RateLimiter(#[from] RateLimiterError),
    #[error("async engine: {0}")]
    Async(#[from] AsyncError),
    #[error("cannot notify the guest of the change: {0}")]
    Interrupt(std::io::Error),
}

pub(super) struct ActiveState {
    /// Shared, not cloned per notification: cloning a `GuestMemoryMmap` copies its region
    /// list (an allocation), an `Arc` only counts.
    pub(super) mem: Arc<GuestMemoryMmap>,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) queue: Queue,
    pub(super) queue_evt: EventFd,
}

/// A virtio-blk device. Share it as `Arc<Mutex<Block>>` between the transport (as
/// `dyn VirtioDevice`) and the `io` thread (as an event subscriber).
pub struct Block {
    pub(super) id: String,
    pub(super) disk: Disk,
    pub(super) engine: Option<AsyncEngine>,
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_LEN],
    queue_sizes: [u16; 1],
    /// Tells the `io` thread that activation or reset changed what it must watch.
    pub(super) ctrl_evt: EventFd,
    pub(super) active: Option<ActiveState>,
    /// A corrupt queue stops processing until the driver resets the device.
    pub(super) broken: bool,
    /// Fds the `io` loop currently watches for this device besides the permanent ones.
    pub(super) registered: Vec<RawFd>,
    /// EventFds of a previous activation, kept open until the loop stops watching them.
    pub(super) retired: Vec<EventFd>,
    pub(super) rate_limiter: RateLimiter,
    pub(super) metrics: Arc<BlockMetrics>,
    /// Per-request I/O failures (a full or failing host disk) are logged at most once a period.
    io_err_log: LogLimiter,
    /// Problems the guest causes (broken queues) are logged at most once a period.
    pub(super) guest_log: LogLimiter,
    /// Buffers reused from one request to the next, so the data path allocates nothing:
    /// the data buffers of the request being parsed (at most `seg_max`)...
    data_bufs: Vec<(GuestAddress, u32)>,
    /// ... and the async completions being handed back.
    pub(super) finished: Vec<Finished>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("id", &self.id)
            .field("disk", &self.disk.path())
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Block {
    pub fn new(cfg: &BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(
            &cfg.path_on_host,
            cfg.image_format,
            cfg.io_engine,
            cfg.is_read_only,
            &cfg.drive_id,
        )?;
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if cfg.cache_type == CacheType::Writeback {
            avail_features |= 1u64 << VIRTIO_BLK_F_FLUSH;
        }
        if cfg.is_read_only {
            avail_features |= 1u64 << VIRTIO_BLK_F_RO;
        } else {
            avail_features |= (1u64 << VIRTIO_BLK_F_DISCARD) | (1u64 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let entries = u32::from(BLOCK_QUEUE_SIZE);
        let fd = disk.file().as_raw_fd();
        let engine = match (cfg.io_engine, cfg.cache_type) {
            (IoEngine::Async, _) => Some(AsyncEngine::new(entries, fd, EngineOps::ReadWriteFlush)?),
            // Flushes go to a ring so a long fdatasync does not stall the io thread; without
            // io_uring they run inline, as reads and writes do. A qcow2 flush writes imago's
            // cached metadata back between two fdatasyncs: it always runs inline.
            (IoEngine::Sync, CacheType::Writeback) if cfg.image_format == ImageFormat::Raw => {
                match AsyncEngine::new(entries, fd, EngineOps::FlushOnly) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        log::warn!(
                            "virtio-blk {}: {e}; flushes will block the io thread",
                            cfg.drive_id
                        );
                        None
                    }
                }
            }
            (IoEngine::Sync, _) => None,
        };
        let rate_limiter = RateLimiter::new(&cfg.rate_limiter.unwrap_or_default())?;
        let mut dev = Block {
            id: cfg.drive_id.clone(),
            disk,
            engine,
            avail_features,
            acked_features: 0,
            config_space: [0; CONFIG_SPACE_LEN],
            queue_sizes: [BLOCK_QUEUE_SIZE],
            ctrl_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?,
            active: None,
            broken: false,
            registered: Vec::new(),
            retired: Vec::new(),
            rate_limiter,
            metrics: Arc::new(BlockMetrics::default()),
            io_err_log: LogLimiter::new(GUEST_LOG_PERIOD),
            guest_log: LogLimiter::new(GUEST_LOG_PERIOD),
            data_bufs: Vec::with_capacity(SEG_MAX as usize),
            finished: Vec::with_capacity(usize::from(BLOCK_QUEUE_SIZE)),
        };
        dev.build_config_space();
        Ok(dev)
    }

    /// Replaces the rate limiter's clock-driven state (tests inject a manual clock).
    pub fn set_rate_limiter(&mut self, rl: RateLimiter) {
        self.rate_limiter = rl;
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Disk size in sectors as the guest sees it.
    pub fn capacity(&self) -> u64 {
        self.disk.nsectors()
    }

    fn build_config_space(&mut self) {
        let c = &mut self.config_space;
        c.fill(0);
        c[0..8].copy_from_slice(&self.disk.nsectors().to_le_bytes());
        // seg_max: data descriptors per request (queue size minus header and status).
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_SEGMENTS.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_SEGMENTS.to_le_bytes());
        c[56] = 1; // write_zeroes_may_unmap
    }

    /// `PATCH /drives/{id}` with `path_on_host`: swaps the backing file, then tells the guest
    /// to re-read the capacity (config interrupt). In-flight async operations finish first.
    pub fn update_disk(&mut self, path: &Path) -> Result<(), BlockError> {
        // Same format as before; the engine argument only gates qcow2, whose drives never
        // have a ring, so Sync is right for both formats.
        let format = self.disk.format();
        let disk = Disk::open(
            path,
            format,
            IoEngine::Sync,
            self.disk.is_read_only(),
            &self.id,
        )?;
        self.drain_async();
        if let Some(engine) = self.engine.as_mut() {
            // The ring's fixed-file slot takes its own reference: update it before the old
            // file closes.
            engine.set_file(disk.file().as_raw_fd())?;
        }
        self.disk = disk;
        self.build_config_space();
        BlockMetrics::inc(&self.metrics.config_updates);
        if let Some(active) = &self.active {
            active
                .interrupt
                .trigger(InterruptType::Config)
                .map_err(BlockError::Interrupt)?;
        }
        Ok(())
    }

    /// Writes cached image metadata (qcow2) back before the process exits.
    pub fn write_back(&mut self) -> Result<(), BlockError> {
        Ok(self.disk.write_back()?)
    }

    /// `PATCH /drives/{id}` with `rate_limiter`: `None` buckets keep their current state.
    pub fn update_rate_limiter(&mut self, cfg: &RateLimiterConfig) {
        self.rate_limiter.update(cfg.bandwidth, cfg.ops);
        // Requests may have been waiting on the old limits.
        if self.ctrl_evt.write(1).is_err() {
            log::warn!("virtio-blk {}: cannot wake the io loop", self.id);
        }
    }

    pub(super) fn queue_broken(&mut self, why: &str) {
        // The guest can break its queue, reset and break it again at will.
        if let Some(suppressed) = self.guest_log.check() {
            log::error!(
                "virtio-blk {}: queue broken: {why} ({suppressed} more guest errors suppressed)",
                self.id
            );
        }
        BlockMetrics::inc(&self.metrics.queue_errors);
        self.broken = true;
        if let Some(active) = &self.active {
            active.interrupt.signal_needs_reset();
        }
    }

    /// Serves every available request (on the `io` thread).
    pub(crate) fn process_queue(&mut self) {
        if self.broken {
            return;
        }
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        let mut used_any = false;
        let result = self.process_available(&mem, &mut used_any);
        if let Err(why) = result {
            self.queue_broken(&why);
            return;
        }
        if used_any {
            self.signal_used(&mem);
        }
    }

    fn signal_used(&mut self, mem: &GuestMemoryMmap) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match active.queue.needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = active.interrupt.trigger(InterruptType::Vring) {
                    log::error!("virtio-blk {}: cannot raise interrupt: {e}", self.id);
                }
            }
            Ok(false) => {}
            Err(e) => self.queue_broken(&format!("used event unreadable: {e}")),
        }
    }

    fn process_available(
        &mut self,
        mem: &GuestMemoryMmap,
        used_any: &mut bool,
    ) -> Result<(), String> {
        loop {
            let Some(active) = self.active.as_mut() else {
                return Ok(());
            };
            active
                .queue
                .disable_notification(mem)
                .map_err(|e| format!("cannot disable notifications: {e}"))?;
            loop {
                if self.rate_limiter.is_blocked()
                    || self.engine.as_ref().is_some_and(|e| !e.has_room())
                {
                    // Resumed by the limiter's timer or by async completions.
                    return Ok(());
                }
                let Some(active) = self.active.as_mut() else {
                    return Ok(());
                };
                let chain = match active.queue.iter(mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => return Err(format!("available ring unusable: {e}")),
                };
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                let table = GuestAddress(active.queue.desc_table());
                let parsed = if crate::indirect::chain_uses_indirect(
                    mem,
                    table,
                    active.queue.size(),
                    head,
                ) {
                    Err(request::RequestError {
                        kind: request::RequestErrorKind::Indirect,
                        status_addr: None,
                    })
                } else {
                    request::parse_reusing(chain, mem, self.disk.nsectors(), &mut self.data_bufs)
                };
                match parsed {
                    Ok(req) => {
                        let bytes = match req.kind {
                            RequestKind::In | RequestKind::Out => req.data_len,
                            _ => 0,
                        };
                        if !self.rate_limiter.is_unlimited()
                            && !self.rate_limiter.consume_request(bytes)
                        {
                            BlockMetrics::inc(&self.metrics.rate_limiter_throttled_events);
                            if let Some(active) = self.active.as_mut() {
                                active.queue.go_to_previous_position();
                            }
                            return Ok(());
                        }
                        let executed = self.execute(mem, &req, head);
                        // The buffer list goes back for the next request.
                        self.data_bufs = req.data;
                        if let Some((status, len)) = executed {
                            self.complete(mem, head, req.status_addr, status, len)?;
                            *used_any = true;
                        }
                    }
                    Err(e) => {
                        log::debug!("virtio-blk {}: bad request: {e}", self.id);
                        match e.status_addr {
                            Some(addr) => {
                                BlockMetrics::inc(&self.metrics.invalid_requests);
                                self.complete(mem, head, addr, e.status(), 1)?;
                            }
                            None => {
                                BlockMetrics::inc(&self.metrics.dropped_requests);
                                self.add_used(mem, head, 0)?;
                            }
                        }
                        *used_any = true;
                    }
                }
            }
            let Some(active) = self.active.as_mut() else {
                return Ok(());
            };
            let more = active
                .queue
                .enable_notification(mem)
                .map_err(|e| format!("cannot enable notifications: {e}"))?;
            if !more {
                return Ok(());
            }
        }
    }

    fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) -> Result<(), String> {
        match self.active.as_mut() {
            Some(active) => active
                .queue
                .add_used(mem, head, len)
                .map_err(|e| format!("cannot add used entry {head}: {e}")),
            None => Ok(()),
        }
    }

    pub(super) fn complete(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        status_addr: GuestAddress,
        status: u8,
        len: u32,
    ) -> Result<(), String> {
        // The parser checked the status byte lies in memory; a failure here means the
        // memory map changed under us, which is a broken device, not a guest error.
        mem.write_obj(status, status_addr)
            .map_err(|e| format!("status byte at {:#x}: {e}", status_addr.0))?;
        self.add_used(mem, head, len)
    }

    /// Runs a request; `None` when it went to the async engine (completed later).
    fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request, head: u16) -> Option<(u8, u32)> {
        let ok = VIRTIO_BLK_S_OK as u8;
        let ioerr = VIRTIO_BLK_S_IOERR as u8;
        if req.kind.is_write() && self.disk.is_read_only() {
            BlockMetrics::inc(&self.metrics.read_only_violations);
            return Some((ioerr, 1));
        }
        let m = &self.metrics;
        if req.kind == RequestKind::Flush && self.acked_features & (1u64 << VIRTIO_BLK_F_FLUSH) == 0
        {
            // Unsafe cache mode: no flush was offered, so none is honoured, whatever the engine.
            return Some((VIRTIO_BLK_S_UNSUPP as u8, 1));
        }
        if let Some(engine) = self.engine.as_mut() {
            if engine.ops().serves(req.kind) {
                return match engine.submit(mem, req, head) {
                    Ok(()) => None,
                    Err(e) => {
                        if let Some(n) = self.io_err_log.check() {
                            log::warn!(
                                "virtio-blk {}: async submit failed: {e} ({n} similar errors suppressed before)",
                                self.id
                            );
                        }
                        BlockMetrics::inc(&m.io_errors);
                        Some((ioerr, 1))
                    }
                };
            }
        }
        let off = req.offset();
        let res: Result<u32, DiskError> = match req.kind {
            RequestKind::In => self.disk.read_into(mem, off, &req.data).map(|()| {
                BlockMetrics::inc(&m.read_count);
                BlockMetrics::add(&m.read_bytes, req.data_len);
                // data_len <= u32::MAX (the chain iterator caps it) and the status byte.
                u32::try_from(req.data_len)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1)
            }),
            RequestKind::Out => self.disk.write_from(mem, off, &req.data).map(|()| {
                BlockMetrics::inc(&m.write_count);
                BlockMetrics::add(&m.write_bytes, req.data_len);
                1
            }),
            RequestKind::Flush => self.disk.flush().map(|()| {
                BlockMetrics::inc(&m.flush_count);
                1
            }),
            RequestKind::GetId => {
                let written = write_device_id(mem, self.disk.device_id(), &req.data);
                BlockMetrics::inc(&m.get_id_count);
                Ok(written + 1)
            }
            RequestKind::Discard => self.disk.discard(off, req.data_len).map(|()| {
                BlockMetrics::inc(&m.discard_count);
                BlockMetrics::add(&m.discard_bytes, req.data_len);
                1
            }),
            RequestKind::WriteZeroes { unmap } => {
                self.disk.write_zeroes(off, req.data_len, unmap).map(|()| {
                    BlockMetrics::inc(&m.discard_count);
                    BlockMetrics::add(&m.discard_bytes, req.data_len);
                    1
                })
            }
        };
        Some(match res {
            Ok(len) => (ok, len),
            Err(e) => {
                if let Some(n) = self.io_err_log.check() {
                    log::warn!(
                        "virtio-blk {}: {e} ({n} similar errors suppressed before)",
                        self.id
                    );
                }
                BlockMetrics::inc(&m.io_errors);
                (ioerr, 1)
            }
        })
    }

    /// Completes finished async operations (on the `io` thread); returns `done` emptied, for
    /// reuse.
    pub(super) fn complete_async(&mut self, mut done: Vec<Finished>) -> Vec<Finished> {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            done.clear();
            return done;
        };
        if done.is_empty() {
            return done;
        }
        let m = self.metrics.clone();
        let mut broken = false;
        for f in done.drain(..) {
            let p = &f.pending;
            let (status, len) = if f.ok() {
                match p.kind {
                    RequestKind::In => {
                        BlockMetrics::inc(&m.read_count);
                        BlockMetrics::add(&m.read_bytes, p.len);
                        (
                            VIRTIO_BLK_S_OK as u8,
                            u32::try_from(p.len).unwrap_or(u32::MAX).saturating_add(1),
                        )
                    }
                    RequestKind::Out => {
                        BlockMetrics::inc(&m.write_count);
                        BlockMetrics::add(&m.write_bytes, p.len);
                        (VIRTIO_BLK_S_OK as u8, 1)
                    }
                    _ => {
                        BlockMetrics::inc(&m.flush_count);
                        (VIRTIO_BLK_S_OK as u8, 1)
                    }
                }
            } else {
                if let Some(n) = self.io_err_log.check() {
                    log::warn!(
                        "virtio-blk {}: async op failed: {} ({n} similar errors suppressed before)",
                        self.id,
                        f.result
                    );
                }
                BlockMetrics::inc(&m.io_errors);
                (VIRTIO_BLK_S_IOERR as u8, 1)
            };
            if let Err(why) = self.complete(&mem, p.head, p.status_addr, status, len) {
                self.queue_broken(&why);
                // Dropping the drain empties `done` of what is left.
                broken = true;
                break;
            }
        }
        if !broken {
            self.signal_used(&mem);
        }
        done
    }

    /// The completion fd fired: completes what finished (through the device's reused
    /// completion list), then serves the requests that waited for room in the ring.
    pub(super) fn on_async_completions(&mut self) {
        let mut done = std::mem::take(&mut self.finished);
        if let Some(engine) = self.engine.as_mut() {
            engine.reap_into(&mut done);
        }
        self.finished = self.complete_async(done);
        self.process_queue();
    }

    /// Completes every async operation in flight (before a file swap, a reset or a save).
    pub(super) fn drain_async(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            let done = engine.drain();
            self.finished = self.complete_async(done);
        }
    }
}

/// Copies the device id into the guest buffers; returns the bytes written.
fn write_device_id(
    mem: &GuestMemoryMmap,
    id: &[u8; DEVICE_ID_LEN],
    bufs: &[(GuestAddress, u32)],
) -> u32 {
    let mut written = 0usize;
    for &(addr, len) in bufs {
        let n = (len as usize).min(DEVICE_ID_LEN - written);
        if n == 0 {
            break;
        }
        // The parser checked each buffer lies in memory.
        if mem.write_slice(&id[written..written + n], addr).is_err() {
            break;
        }
        written += n;
    }
    written as u32
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Every field we expose is read-only (no VIRTIO_BLK_F_CONFIG_WCE).
        log::debug!(
            "virtio-blk {}: ignored config write at {offset:#x}",
            self.id
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateContext {
            mem,
            interrupt,
            queues,
            queue_evts,
        } = ctx;
        let got = queues.len();
        let (Some(queue), Some(queue_evt)) =
            (queues.into_iter().next(), queue_evts.into_iter().next())
        else {
            BlockMetrics::inc(&self.metrics.activate_fails);
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        if !queue.ready() {
            BlockMetrics::inc(&self.metrics.activate_fails);
            return Err(ActivateError::QueueNotReady { index: 0 });
        }
        self.active = Some(ActiveState {
            mem: Arc::new(mem),
            interrupt,
            queue,
            queue_evt,
        });
        self.broken = false;
        self.ctrl_evt.write(1).map_err(ActivateError::Notify)
    }

    fn reset(&mut self) {
        self.drain_async();
        if let Some(active) = self.active.take() {
            self.retired.push(active.queue_evt);
        }
        self.acked_features = 0;
        self.broken = false;
        if let Err(e) = self.ctrl_evt.write(1) {
            log::error!(
                "virtio-blk {}: cannot signal reset to the io loop: {e}",
                self.id
            );
        }
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
