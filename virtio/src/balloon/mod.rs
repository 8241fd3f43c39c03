//! virtio-balloon (virtio 1.2 section 5.5): the host asks for a number of 4 KiB pages
//! (`num_pages` in config space), the guest inflates by handing page frame numbers over on
//! the inflate queue and the device gives those pages back to the host kernel
//! (`madvise(MADV_DONTNEED)`); deflate returns them to the guest (they fault back in as
//! zeroes). With statistics the device holds the guest's stats buffer and hands it back every
//! polling interval to receive fresh numbers. With free page reporting the guest hands over
//! ranges of free memory, released the same way.
//!
//! - `mod.rs`: configuration, features, config space, the transport side.
//! - `queues.rs`: what runs on the `io` thread for each queue, PFN validation and release.
//! - `stats.rs`: the statistics buffer and its tags.

mod persist;
mod queues;
mod stats;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::active::{watch_fds, ActiveQueues, QueueWatch};
use crate::device::{
    read_config_space, ActivateContext, ActivateError, InterruptType, VirtioDevice,
};
use crate::features::{has, VIRTIO_F_VERSION_1};
use devices::log_limiter::{LogLimiter, GUEST_LOG_PERIOD};

pub use persist::{BalloonState, BalloonStateError};
pub use stats::BalloonStats;

/// virtio device id of a memory balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;
/// Descriptors per queue.
pub const BALLOON_QUEUE_SIZE: u16 = 256;
/// The balloon's page size: PFNs count 4 KiB pages whatever the guest's page size.
pub const BALLOON_PAGE_SIZE: u64 = 4096;
/// Pages in one MiB.
pub const PAGES_PER_MIB: u64 = (1 << 20) / BALLOON_PAGE_SIZE;

/// Feature bits (virtio 1.2 section 5.5.3).
pub mod feature {
    pub const STATS_VQ: u32 = 1;
    pub const DEFLATE_ON_OOM: u32 = 2;
    pub const PAGE_REPORTING: u32 = 5;
}

crate::device_counters!(BalloonMetrics, BalloonMetricsSnapshot, {
    activate_fails: "Activations refused (a required queue not ready).",
    inflate_count: "Inflate chains served.",
    deflate_count: "Deflate chains served.",
    reporting_count: "Free page reporting chains served.",
    stats_updates_count: "Statistics buffers received from the guest.",
    stats_update_fails: "Statistics buffers refused (bad shape, outside memory).",
    pages_released: "4 KiB pages given back to the host (inflate and reporting).",
    invalid_pfns: "PFNs (or reported ranges) outside guest memory, refused.",
    invalid_requests: "Chains refused: wrong direction, bad length, too many PFNs, indirect.",
    madvise_fails: "madvise(MADV_DONTNEED) calls that failed.",
    queue_errors: "Times a queue broke (the device then needs a reset).",
    event_fails: "Interrupts that could not be raised.",
});

/// What the VMM gives to build the device (from the `balloon` section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    /// 0: statistics off (no stats queue).
    pub stats_polling_interval_s: u16,
    pub free_page_reporting: bool,
}

/// Errors from building or updating the device.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("balloon: cannot create the control EventFd: {0}")]
    Fd(std::io::Error),
    #[error("balloon: cannot create the statistics timerfd: {0}")]
    Timer(vmm_sys_util::errno::Error),
    #[error("balloon: statistics were not enabled when the device was configured")]
    StatsDisabled,
    #[error("balloon: statistics cannot be switched on or off after boot")]
    StatsToggle,
    #[error("balloon: cannot notify the guest: {0}")]
    Interrupt(std::io::Error),
}

/// Which queue index serves which purpose for the features the driver accepted: the driver
/// numbers only the queues of features it accepted, in spec order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLayout {
    pub(crate) stats: Option<usize>,
    pub(crate) reporting: Option<usize>,
}

impl QueueLayout {
    pub(crate) const INFLATE: usize = 0;
    pub(crate) const DEFLATE: usize = 1;

    fn for_features(acked: u64) -> Self {
        let mut next = 2;
        let mut take = |on: bool| {
            on.then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(has(acked, feature::STATS_VQ));
        let reporting = take(has(acked, feature::PAGE_REPORTING));
        QueueLayout { stats, reporting }
    }
}

/// The memory balloon. Shared as `Arc<Mutex<Balloon>>` by the transport (vCPU threads), the
/// `io` loop and the VMM thread (API updates and statistics).
pub struct Balloon {
    config: BalloonConfig,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: Vec<u16>,
    /// Pages the host asks for (`num_pages`).
    target_pages: u32,
    /// Pages the driver says it holds (`actual`, written by the driver).
    actual_pages: u32,
    pub(crate) ctrl_evt: EventFd,
    pub(crate) stats_timer: TimerFd,
    pub(crate) active: Option<ActiveQueues>,
    pub(crate) layout: QueueLayout,
    watch: QueueWatch,
    pub(crate) broken: bool,
    /// The stats buffer the device holds until the next poll (its chain head).
    pub(crate) stats_head: Option<u16>,
    pub(crate) latest_stats: BalloonStats,
    /// The held statistics head of a restored device, taken over at its re-activation.
    restored_stats_head: Option<u16>,
    /// Whether the interval changed and the io thread must re-arm the timer.
    timer_dirty: bool,
    pub(crate) metrics: Arc<BalloonMetrics>,
    pub(crate) guest_log: LogLimiter,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("config", &self.config)
            .field("target_pages", &self.target_pages)
            .field("actual_pages", &self.actual_pages)
            .field("active", &self.active.is_some())
            .finish()
    }
}

const CTRL: u32 = 0;
const STATS_TIMER: u32 = 1;
/// Queue `i` is watched with data `QUEUE_BASE + i`.
const QUEUE_BASE: u32 = 8;
/// num_pages (le32), actual (le32), free_page_hint_cmd_id (le32), poison_val (le32).
const CONFIG_SPACE_LEN: usize = 16;

fn mib_to_pages(mib: u32) -> u32 {
    u32::try_from(u64::from(mib) * PAGES_PER_MIB).unwrap_or(u32::MAX)
}

impl Balloon {
    pub fn new(config: BalloonConfig) -> Result<Self, BalloonError> {
        let mut avail_features = 1u64 << VIRTIO_F_VERSION_1;
        let mut queue_sizes = vec![BALLOON_QUEUE_SIZE, BALLOON_QUEUE_SIZE];
        if config.stats_polling_interval_s > 0 {
            avail_features |= 1u64 << feature::STATS_VQ;
            queue_sizes.push(BALLOON_QUEUE_SIZE);
        }
        if config.deflate_on_oom {
            avail_features |= 1u64 << feature::DEFLATE_ON_OOM;
        }
        if config.free_page_reporting {
            avail_features |= 1u64 << feature::PAGE_REPORTING;
            queue_sizes.push(BALLOON_QUEUE_SIZE);
        }
        Ok(Balloon {
            config,
            avail_features,
            acked_features: 0,
            queue_sizes,
            target_pages: mib_to_pages(config.amount_mib),
            actual_pages: 0,
            ctrl_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(BalloonError::Fd)?,
            stats_timer: TimerFd::new().map_err(BalloonError::Timer)?,
            active: None,
            layout: QueueLayout::for_features(0),
            watch: QueueWatch::default(),
            broken: false,
            stats_head: None,
            latest_stats: BalloonStats::default(),
            restored_stats_head: None,
            timer_dirty: true,
            metrics: Arc::new(BalloonMetrics::default()),
            guest_log: LogLimiter::new(GUEST_LOG_PERIOD),
        })
    }

    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.metrics.clone()
    }

    pub fn config(&self) -> BalloonConfig {
        self.config
    }

    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// Sizes from a snapshot (the driver saw them before).
    fn restore_sizes(&mut self, target_pages: u32, actual_pages: u32) {
        self.target_pages = target_pages;
        self.actual_pages = actual_pages;
    }

    /// `PATCH /balloon`: a new target; the driver learns it through a config interrupt.
    pub fn update_target(&mut self, amount_mib: u32) -> Result<(), BalloonError> {
        self.config.amount_mib = amount_mib;
        self.target_pages = mib_to_pages(amount_mib);
        if let Some(a) = &self.active {
            a.interrupt
                .trigger(InterruptType::Config)
                .map_err(BalloonError::Interrupt)?;
        }
        Ok(())
    }

    /// `PATCH /balloon/statistics`: a new polling interval. Statistics cannot be switched on
    /// or off after construction (the queue exists or not).
    pub fn update_stats_interval(&mut self, seconds: u16) -> Result<(), BalloonError> {
        match (self.config.stats_polling_interval_s, seconds) {
            (0, 0) => return Ok(()),
            (0, _) | (_, 0) => return Err(BalloonError::StatsToggle),
            _ => {}
        }
        self.config.stats_polling_interval_s = seconds;
        self.timer_dirty = true;
        // The timer belongs to the io thread: it re-arms on its next turn.
        if let Err(e) = self.ctrl_evt.write(1) {
            log::warn!("balloon: cannot wake the io loop: {e}");
        }
        Ok(())
    }

    /// `GET /balloon/statistics`: the latest numbers the guest sent, plus the sizes.
    pub fn statistics(&self) -> Result<BalloonStats, BalloonError> {
        if self.config.stats_polling_interval_s == 0 {
            return Err(BalloonError::StatsDisabled);
        }
        let mut s = self.latest_stats;
        s.set_sizes(self.target_pages, self.actual_pages);
        Ok(s)
    }

    fn build_config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut c = [0u8; CONFIG_SPACE_LEN];
        c[0..4].copy_from_slice(&self.target_pages.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        c
    }

    pub(crate) fn queue_broken(&mut self, why: &str) {
        if let Some(suppressed) = self.guest_log.check() {
            log::error!("virtio-balloon: queue broken: {why} ({suppressed} more suppressed)");
        }
        BalloonMetrics::inc(&self.metrics.queue_errors);
        self.broken = true;
        if let Some(a) = &self.active {
            a.interrupt.signal_needs_reset();
        }
    }

    /// Arms (or disarms) the statistics timer for the current interval; on the io thread.
    fn arm_stats_timer(&mut self) {
        self.timer_dirty = false;
        let secs = self.config.stats_polling_interval_s;
        let result = if secs == 0 || self.layout.stats.is_none() || self.active.is_none() {
            self.stats_timer.clear()
        } else {
            let period = Duration::from_secs(u64::from(secs));
            self.stats_timer.reset(period, Some(period))
        };
        if let Err(e) = result {
            log::error!("virtio-balloon: cannot set the statistics timer: {e}");
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
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
        read_config_space(&self.build_config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write, and only as a whole.
        if offset == 4 && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.actual_pages = u32::from_le_bytes(b);
        } else {
            log::debug!(
                "virtio-balloon: ignored config write of {} bytes at {offset:#x}",
                data.len()
            );
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let layout = QueueLayout::for_features(self.acked_features);
        let required =
            2 + usize::from(layout.stats.is_some()) + usize::from(layout.reporting.is_some());
        let active =
            ActiveQueues::activate(&self.active, ctx, required, &self.metrics.activate_fails)?;
        self.layout = layout;
        self.active = Some(active);
        self.broken = false;
        self.stats_head = self.restored_stats_head.take();
        self.timer_dirty = true;
        self.ctrl_evt.write(1).map_err(ActivateError::Notify)
    }

    fn reset(&mut self) {
        self.watch.deactivate(&mut self.active);
        self.acked_features = 0;
        self.broken = false;
        self.stats_head = None;
        self.restored_stats_head = None;
        self.timer_dirty = true;
        if let Err(e) = self.ctrl_evt.write(1) {
            log::error!("virtio-balloon: cannot signal reset to the io loop: {e}");
        }
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        watch_fds(
            ops,
            &[
                (self.ctrl_evt.as_raw_fd(), CTRL),
                (self.stats_timer.as_raw_fd(), STATS_TIMER),
            ],
            "virtio-balloon",
        );
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CTRL => {
                let _ = self.ctrl_evt.read();
                let result =
                    self.watch
                        .sync(ops, self.active.as_ref(), QUEUE_BASE, "virtio-balloon");
                if let Err(why) = result {
                    self.queue_broken(&why);
                }
                if self.timer_dirty {
                    self.arm_stats_timer();
                }
                for q in 0..self.queue_sizes.len() {
                    self.process_queue(q);
                }
            }
            STATS_TIMER => {
                let _ = self.stats_timer.wait();
                self.request_stats();
            }
            data if data >= QUEUE_BASE => {
                let index = (data - QUEUE_BASE) as usize;
                if let Some(evt) = self.active.as_ref().and_then(|a| a.evts.get(index)) {
                    let _ = evt.read();
                }
                self.process_queue(index);
            }
            other => log::warn!("virtio-balloon: unexpected event data {other}"),
        }
    }
}

/// Whether `[addr, addr + len)` is guest RAM.
pub(crate) fn in_memory(mem: &crate::GuestMemoryMmap, addr: u64, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    GuestMemoryBackend::check_range(mem, vm_memory::GuestAddress(addr), len)
}
