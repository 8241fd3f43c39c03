//! virtio-rng (virtio 1.2 section 5.4): one queue of device-writable buffers the device fills
//! with bytes from the host's `getrandom(2)`.
//!
//! At most [`MAX_REQUEST_BYTES`] are written per chain (the rest of a larger chain is left
//! untouched and the used length says how much was written). Requests pass the shared rate
//! limiter (one operation and the bytes written); a throttled chain is put back and served
//! when the limiter's timer fires. Runs on the `io` thread like every device backend.

mod persist;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::QueueOwnedT;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::active::{watch_fds, ActiveQueues, QueueWatch};
use crate::device::{read_config_space, ActivateContext, ActivateError, VirtioDevice};
use crate::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::GuestMemoryMmap;
use devices::log_limiter::{LogLimiter, GUEST_LOG_PERIOD};

pub use persist::{RngState, RngStateError};

/// virtio device id of an entropy source.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Descriptors in the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes written for one chain (Firecracker's limit too).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

crate::device_counters!(RngMetrics, RngMetricsSnapshot, {
    activate_fails: "Activations refused (queue not ready).",
    queue_event_count: "Queue notifications received.",
    entropy_event_count: "Requests served with random bytes.",
    entropy_bytes: "Random bytes written to the guest.",
    host_rng_fails: "Requests answered empty because getrandom failed.",
    invalid_requests: "Chains refused: read-only or out-of-memory buffers, indirect tables.",
    queue_errors: "Times the queue broke (the device then needs a reset).",
    entropy_rate_limiter_throttled: "Times a request waited for the rate limiter.",
});

/// Errors from building the device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("entropy: cannot create the control EventFd: {0}")]
    EventFd(std::io::Error),
    #[error("entropy: rate limiter: {0}")]
    RateLimiter(#[from] RateLimiterError),
}

/// Fills `buf` from the host's random source; `EINTR` is retried.
fn host_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// The virtio entropy device. Shared as `Arc<Mutex<Rng>>` by the transport (vCPU threads)
/// and the `io` loop.
pub struct Rng {
    acked_features: u64,
    queue_sizes: [u16; 1],
    ctrl_evt: EventFd,
    active: Option<ActiveQueues>,
    watch: QueueWatch,
    broken: bool,
    rate_limiter: RateLimiter,
    metrics: Arc<RngMetrics>,
    /// Reused for every request: at most [`MAX_REQUEST_BYTES`].
    buf: Vec<u8>,
    guest_log: LogLimiter,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .field("broken", &self.broken)
            .finish()
    }
}

const CTRL: u32 = 0;
const LIMITER: u32 = 1;
const QUEUE: u32 = 2;

/// Why a chain is refused (answered with a used length of 0).
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    ReadOnly,
    OutsideMemory,
    Indirect,
    /// No descriptor could be read (e.g. a head index past the table).
    Empty,
}

impl Rng {
    pub fn new(rate_limiter: Option<&RateLimiterConfig>) -> Result<Self, RngError> {
        let rate_limiter = RateLimiter::new(&rate_limiter.copied().unwrap_or_default())?;
        Ok(Rng {
            acked_features: 0,
            queue_sizes: [RNG_QUEUE_SIZE],
            ctrl_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(RngError::EventFd)?,
            active: None,
            watch: QueueWatch::default(),
            broken: false,
            rate_limiter,
            metrics: Arc::new(RngMetrics::default()),
            buf: Vec::new(),
            guest_log: LogLimiter::new(GUEST_LOG_PERIOD),
        })
    }

    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    /// Replaces the rate limiter (tests inject a manual clock).
    pub fn set_rate_limiter(&mut self, rl: RateLimiter) {
        self.rate_limiter = rl;
    }

    fn queue_broken(&mut self, why: &str) {
        if let Some(suppressed) = self.guest_log.check() {
            log::error!("virtio-rng: queue broken: {why} ({suppressed} more suppressed)");
        }
        RngMetrics::inc(&self.metrics.queue_errors);
        self.broken = true;
        if let Some(a) = &self.active {
            a.interrupt.signal_needs_reset();
        }
    }

    /// Serves every available request (on the `io` thread).
    pub(crate) fn process_queue(&mut self) {
        if self.broken || self.active.is_none() {
            return;
        }
        let mut used_any = false;
        let result = self.process_available(&mut used_any);
        if let Err(why) = result {
            self.queue_broken(&why);
            return;
        }
        if used_any {
            if let Some(a) = self.active.as_mut() {
                if let Err(why) = a.signal_used(0) {
                    self.queue_broken(&why);
                }
            }
        }
    }

    /// The writable buffers of the chain at `head`, cut to [`MAX_REQUEST_BYTES`].
    fn parse_chain(
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        table: GuestAddress,
        size: u16,
    ) -> Result<Vec<(GuestAddress, usize)>, Refusal> {
        if crate::indirect::chain_uses_indirect(mem, table, size, chain.head_index()) {
            return Err(Refusal::Indirect);
        }
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut descs = 0usize;
        for desc in chain {
            descs += 1;
            if !desc.is_write_only() {
                return Err(Refusal::ReadOnly);
            }
            let len = desc.len() as usize;
            if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
                return Err(Refusal::OutsideMemory);
            }
            let take = len.min(MAX_REQUEST_BYTES - total);
            if take > 0 {
                out.push((desc.addr(), take));
                total += take;
            }
        }
        if descs == 0 {
            return Err(Refusal::Empty);
        }
        Ok(out)
    }

    fn process_available(&mut self, used_any: &mut bool) -> Result<(), String> {
        loop {
            let Some(a) = self.active.as_mut() else {
                return Ok(());
            };
            let mem = a.mem.clone();
            a.queues[0]
                .disable_notification(&mem)
                .map_err(|e| format!("cannot disable notifications: {e}"))?;
            loop {
                if self.rate_limiter.is_blocked() {
                    return Ok(());
                }
                let Some(a) = self.active.as_mut() else {
                    return Ok(());
                };
                let q = &mut a.queues[0];
                let (table, size) = (GuestAddress(q.desc_table()), q.size());
                let chain = match q.iter(&mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => return Err(format!("available ring unusable: {e}")),
                };
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                let written = match Self::parse_chain(&mem, chain, table, size) {
                    Ok(bufs) => {
                        let bytes: usize = bufs.iter().map(|b| b.1).sum();
                        if !self.rate_limiter.is_unlimited()
                            && !self.rate_limiter.consume_request(bytes as u64)
                        {
                            RngMetrics::inc(&self.metrics.entropy_rate_limiter_throttled);
                            if let Some(a) = self.active.as_mut() {
                                a.queues[0].go_to_previous_position();
                            }
                            return Ok(());
                        }
                        self.fill(&mem, &bufs)
                    }
                    Err(why) => {
                        log::debug!("virtio-rng: chain {head} refused: {why:?}");
                        RngMetrics::inc(&self.metrics.invalid_requests);
                        0
                    }
                };
                let Some(a) = self.active.as_mut() else {
                    return Ok(());
                };
                a.queues[0]
                    .add_used(&mem, head, written)
                    .map_err(|e| format!("cannot add used entry {head}: {e}"))?;
                *used_any = true;
            }
            let Some(a) = self.active.as_mut() else {
                return Ok(());
            };
            let more = a.queues[0]
                .enable_notification(&mem)
                .map_err(|e| format!("cannot enable notifications: {e}"))?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Writes random bytes into `bufs` (already checked to lie in memory); returns the count.
    fn fill(&mut self, mem: &GuestMemoryMmap, bufs: &[(GuestAddress, usize)]) -> u32 {
        let total: usize = bufs.iter().map(|b| b.1).sum();
        self.buf.resize(total, 0);
        if let Err(e) = host_random(&mut self.buf) {
            log::warn!("virtio-rng: getrandom failed: {e}");
            RngMetrics::inc(&self.metrics.host_rng_fails);
            return 0;
        }
        let mut off = 0usize;
        for &(addr, len) in bufs {
            if mem.write_slice(&self.buf[off..off + len], addr).is_err() {
                // Checked just before; memory cannot shrink under a running guest.
                break;
            }
            off += len;
        }
        RngMetrics::inc(&self.metrics.entropy_event_count);
        RngMetrics::add(&self.metrics.entropy_bytes, off as u64);
        // off <= MAX_REQUEST_BYTES.
        off as u32
    }

    fn wake_loop(&self) {
        if let Err(e) = self.ctrl_evt.write(1) {
            log::error!("virtio-rng: cannot wake the io loop: {e}");
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        read_config_space(&[], offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("virtio-rng: ignored config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let active = ActiveQueues::activate(&self.active, ctx, 1, &self.metrics.activate_fails)?;
        self.active = Some(active);
        self.broken = false;
        self.ctrl_evt.write(1).map_err(ActivateError::Notify)
    }

    fn reset(&mut self) {
        self.watch.deactivate(&mut self.active);
        self.acked_features = 0;
        self.broken = false;
        self.wake_loop();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        watch_fds(
            ops,
            &[
                (self.ctrl_evt.as_raw_fd(), CTRL),
                (self.rate_limiter.as_raw_fd(), LIMITER),
            ],
            "virtio-rng",
        );
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CTRL => {
                let _ = self.ctrl_evt.read();
                if let Err(why) = self
                    .watch
                    .sync(ops, self.active.as_ref(), QUEUE, "virtio-rng")
                {
                    self.queue_broken(&why);
                }
                self.process_queue();
            }
            LIMITER => {
                self.rate_limiter.event_handler();
                self.process_queue();
            }
            QUEUE => {
                if let Some(a) = &self.active {
                    let _ = a.evts[0].read();
                }
                RngMetrics::inc(&self.metrics.queue_event_count);
                self.process_queue();
            }
            other => log::warn!("virtio-rng: unexpected event data {other}"),
        }
    }
}
