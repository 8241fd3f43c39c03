//! The virtio-net device: construction, feature negotiation, config space, activation.

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::chain::Segment;
use super::iovec::{IoVecStorage, MAX_IOVECS};
use super::metrics::NetMetrics;
use super::mmds::FrameEndpoint;
use super::tap::{offload, Tap, TapError};
use super::{MAX_BUFFER_LEN, VNET_HDR_LEN};
use crate::device::{
    read_config_space, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
};
use crate::features::{has, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};
use crate::GuestMemoryMmap;
use devices::log_limiter::{LogLimiter, GUEST_LOG_PERIOD};

/// Descriptors per queue.
pub const NET_QUEUE_SIZE: u16 = 256;
const RX_INDEX: usize = 0;
const TX_INDEX: usize = 1;
const VIRTIO_ID_NET: u32 = 1;
/// mac[6], status u16, max_virtqueue_pairs u16, mtu u16.
const CONFIG_SPACE_LEN: usize = 12;
/// Segments one frame may span (the rx side gathers several chains for one frame).
const MAX_SEGMENTS: usize = 512;
/// Ethernet header plus one VLAN tag.
const ETH_OVERHEAD: usize = 14 + 4;
const DEFAULT_MTU: usize = 1500;

/// What the VMM gives to build one interface (from `network-interfaces`).
#[derive(Debug, Clone, Default)]
pub struct NetConfig {
    /// `iface_id`: names the device in logs and metrics.
    pub iface_id: String,
    /// The existing host tap to attach to.
    pub host_dev_name: String,
    /// Shown to the guest (`VIRTIO_NET_F_MAC`) and enforced on tx unless spoofing is allowed.
    pub guest_mac: Option<[u8; 6]>,
    /// Offered as `VIRTIO_NET_F_MTU` when set.
    pub mtu: Option<u16>,
    /// Let the guest send frames whose source MAC is not `guest_mac`.
    pub allow_mac_spoofing: bool,
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Errors from building a virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network interface `{iface_id}`: {source}")]
    Tap { iface_id: String, source: TapError },
    #[error("network interface `{iface_id}`: cannot create the control EventFd: {source}")]
    EventFd {
        iface_id: String,
        source: std::io::Error,
    },
    #[error("network interface `{iface_id}`: {which} rate limiter: {source}")]
    RateLimiter {
        iface_id: String,
        which: &'static str,
        source: RateLimiterError,
    },
}

pub(super) struct ActiveState {
    /// Shared, not cloned per notification: cloning a `GuestMemoryMmap` copies its region
    /// list (an allocation), an `Arc` only counts.
    pub(super) mem: Arc<GuestMemoryMmap>,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) rx_queue: Queue,
    pub(super) tx_queue: Queue,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
}

/// One rx chain gathered for the frame being received.
#[derive(Debug, Clone, Copy)]
pub(super) struct RxChain {
    pub(super) head: u16,
    pub(super) len: u32,
    pub(super) segs_end: usize,
    /// Bytes of the current frame placed in this chain.
    pub(super) used: u32,
}

/// rx progress that survives between events.
#[derive(Debug, Default)]
pub(super) struct RxState {
    /// Chains at the front of `rx_chains` holding a received frame that waits for the rate
    /// limiter before it is published.
    pub(super) pending_chains: usize,
    pub(super) pending_bytes: u64,
    /// The guest has too few rx buffers: the tap is not read until it posts more.
    pub(super) stalled: bool,
    /// The tap fd failed for good (e.g. the interface was deleted).
    pub(super) tap_dead: bool,
}

/// What the `io` loop has registered for this device. Only the loop's thread writes it (in
/// `event_handler.rs`): activation and reset run on a vCPU thread and must not guess what
/// the loop watches, or the two disagree after a reset and re-activation between two turns
/// of the loop.
#[derive(Debug, Default)]
pub(super) struct LoopState {
    /// Whether the loop watches the tap fd right now.
    pub(super) tap_watched: bool,
    /// Queue EventFds the loop watches.
    pub(super) registered: Vec<RawFd>,
}

/// A virtio-net device backed by a tap. Shared (behind a mutex) by the virtio-mmio transport
/// on the vCPU threads and the `io` loop, which drives it as a `MutEventSubscriber`.
pub struct Net {
    pub(super) id: String,
    pub(super) tap: Tap,
    avail_features: u64,
    acked_features: u64,
    /// Offloads the host kernel accepted when probed at construction.
    kernel_offloads: u32,
    config_space: [u8; CONFIG_SPACE_LEN],
    queue_sizes: [u16; 2],
    pub(super) guest_mac: Option<[u8; 6]>,
    pub(super) allow_mac_spoofing: bool,
    pub(super) mtu: Option<u16>,
    pub(super) ctrl_evt: EventFd,
    pub(super) active: Option<ActiveState>,
    pub(super) broken: bool,
    /// Written by the io loop only.
    pub(super) lp: LoopState,
    /// EventFds of a previous activation, kept open until the loop stops watching them.
    pub(super) retired: Vec<EventFd>,
    pub(super) rx_limiter: RateLimiter,
    pub(super) tx_limiter: RateLimiter,
    pub(super) metrics: Arc<NetMetrics>,
    /// Whether frames may span several rx chains (`VIRTIO_NET_F_MRG_RXBUF` acked).
    pub(super) mergeable_rx: bool,
    /// Buffer space (header included) the guest must offer before a frame is read.
    pub(super) rx_frame_capacity: usize,
    pub(super) rx: RxState,
    pub(super) segs: Vec<Segment>,
    pub(super) rx_chains: Vec<RxChain>,
    pub(super) iovs: IoVecStorage,
    pub(super) read_err_log: LogLimiter,
    pub(super) write_err_log: LogLimiter,
    pub(super) guest_err_log: LogLimiter,
    /// The metadata-service endpoint, when this interface serves it (see `mmds.rs`).
    pub(super) mmds: Option<Box<dyn FrameEndpoint>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("id", &self.id)
            .field("tap", &self.tap.name())
            .field("active", &self.active.is_some())
            .field("broken", &self.broken)
            .finish()
    }
}

impl Net {
    /// Attaches to the existing tap `cfg.host_dev_name` and prepares the device. Offers
    /// checksum and TSO offloads (UFO when the host kernel takes it), mergeable rx buffers,
    /// link status, event-index suppression, and MAC / MTU when configured.
    pub fn new(cfg: &NetConfig) -> Result<Net, NetError> {
        let iface_id = cfg.iface_id.clone();
        let tap_err = |source| NetError::Tap {
            iface_id: iface_id.clone(),
            source,
        };
        let tap = Tap::open(&cfg.host_dev_name).map_err(tap_err)?;
        tap.set_vnet_hdr_size(VNET_HDR_LEN as i32)
            .map_err(tap_err)?;
        // Learn what the kernel takes, then receive nothing offloaded until the guest acks.
        let kernel_offloads =
            tap.negotiate_offload(offload::CSUM | offload::TSO4 | offload::TSO6 | offload::UFO);
        tap.negotiate_offload(0);

        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_NET_F_MRG_RXBUF)
            | (1u64 << VIRTIO_NET_F_STATUS)
            // The tap accepts partially checksummed and GSO frames from us.
            | (1u64 << VIRTIO_NET_F_CSUM)
            | (1u64 << VIRTIO_NET_F_HOST_TSO4)
            | (1u64 << VIRTIO_NET_F_HOST_TSO6)
            | (1u64 << VIRTIO_NET_F_HOST_UFO);
        if kernel_offloads & offload::CSUM != 0 {
            avail_features |= 1u64 << VIRTIO_NET_F_GUEST_CSUM;
            if kernel_offloads & offload::TSO4 != 0 {
                avail_features |= 1u64 << VIRTIO_NET_F_GUEST_TSO4;
            }
            if kernel_offloads & offload::TSO6 != 0 {
                avail_features |= 1u64 << VIRTIO_NET_F_GUEST_TSO6;
            }
            if kernel_offloads & offload::UFO != 0 {
                avail_features |= 1u64 << VIRTIO_NET_F_GUEST_UFO;
            }
        }
        if cfg.guest_mac.is_some() {
            avail_features |= 1u64 << VIRTIO_NET_F_MAC;
        }
        if cfg.mtu.is_some() {
            avail_features |= 1u64 << VIRTIO_NET_F_MTU;
        }

        let limiter = |c: &Option<RateLimiterConfig>, which| {
            RateLimiter::new(&c.unwrap_or_default()).map_err(|source| NetError::RateLimiter {
                iface_id: iface_id.clone(),
                which,
                source,
            })
        };
        let rx_limiter = limiter(&cfg.rx_rate_limiter, "rx")?;
        let tx_limiter = limiter(&cfg.tx_rate_limiter, "tx")?;
        let ctrl_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| NetError::EventFd {
            iface_id: iface_id.clone(),
            source,
        })?;

        let mut dev = Net {
            id: iface_id,
            tap,
            avail_features,
            acked_features: 0,
            kernel_offloads,
            config_space: [0; CONFIG_SPACE_LEN],
            queue_sizes: [NET_QUEUE_SIZE; 2],
            guest_mac: cfg.guest_mac,
            allow_mac_spoofing: cfg.allow_mac_spoofing,
            mtu: cfg.mtu,
            ctrl_evt,
            active: None,
            broken: false,
            lp: LoopState {
                tap_watched: false,
                registered: Vec::with_capacity(2),
            },
            retired: Vec::new(),
            rx_limiter,
            tx_limiter,
            metrics: Arc::new(NetMetrics::default()),
            mergeable_rx: false,
            rx_frame_capacity: MAX_BUFFER_LEN,
            rx: RxState::default(),
            segs: Vec::with_capacity(MAX_SEGMENTS),
            rx_chains: Vec::with_capacity(usize::from(NET_QUEUE_SIZE)),
            iovs: IoVecStorage::with_capacity(MAX_IOVECS),
            read_err_log: LogLimiter::new(GUEST_LOG_PERIOD),
            write_err_log: LogLimiter::new(GUEST_LOG_PERIOD),
            guest_err_log: LogLimiter::new(GUEST_LOG_PERIOD),
            mmds: None,
        };
        dev.build_config_space();
        Ok(dev)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Makes this interface serve the metadata service: guest frames `endpoint` wants go to
    /// it instead of the tap, and its frames reach the guest. Set before activation.
    pub fn set_frame_endpoint(&mut self, endpoint: Box<dyn FrameEndpoint>) {
        self.mmds = Some(endpoint);
    }

    /// Counters of this interface, to register with the VMM's metrics.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Offload flags (`tap::offload`) the host kernel accepted on this tap.
    pub fn kernel_offloads(&self) -> u32 {
        self.kernel_offloads
    }

    /// `PATCH /network-interfaces/{id}`: replaces the buckets given (`None` for a limiter,
    /// or for one of its buckets, keeps the current one; size 0 disables a bucket). Applies
    /// at once, also to traffic waiting on the old limits.
    pub fn update_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) {
        if let Some(c) = rx {
            self.rx_limiter.update(c.bandwidth, c.ops);
        }
        if let Some(c) = tx {
            self.tx_limiter.update(c.bandwidth, c.ops);
        }
        if let Err(e) = self.ctrl_evt.write(1) {
            log::warn!("virtio-net {}: cannot wake the io loop: {e}", self.id);
        }
    }

    fn build_config_space(&mut self) {
        let c = &mut self.config_space;
        c.fill(0);
        if let Some(mac) = self.guest_mac {
            c[0..6].copy_from_slice(&mac);
        }
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        if let Some(mtu) = self.mtu {
            c[10..12].copy_from_slice(&mtu.to_le_bytes());
        }
    }

    /// Offloads to enable on the tap for what the guest accepts in received frames.
    fn tap_offloads_for(acked: u64) -> u32 {
        let mut flags = 0;
        if has(acked, VIRTIO_NET_F_GUEST_CSUM) {
            flags |= offload::CSUM;
            if has(acked, VIRTIO_NET_F_GUEST_TSO4) {
                flags |= offload::TSO4;
            }
            if has(acked, VIRTIO_NET_F_GUEST_TSO6) {
                flags |= offload::TSO6;
            }
            if has(acked, VIRTIO_NET_F_GUEST_UFO) {
                flags |= offload::UFO;
            }
        }
        flags
    }

    fn rx_capacity_for(&self, acked: u64) -> usize {
        let gso = [
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
        ];
        if gso.iter().any(|&f| has(acked, f)) {
            MAX_BUFFER_LEN
        } else {
            let mtu = self.mtu.map_or(DEFAULT_MTU, usize::from).max(DEFAULT_MTU);
            VNET_HDR_LEN + ETH_OVERHEAD + mtu
        }
    }

    pub(super) fn queue_broken(&mut self, why: &str) {
        // The guest can break its queues, reset and break them again at will.
        if let Some(suppressed) = self.guest_err_log.check() {
            log::error!(
                "virtio-net {}: queue broken, device needs reset: {why} \
                 ({suppressed} more guest errors suppressed)",
                self.id
            );
        }
        NetMetrics::inc(&self.metrics.queue_errors);
        self.broken = true;
        if let Some(active) = &self.active {
            active.interrupt.signal_needs_reset();
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
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
        // The MAC is read-only in virtio 1.x (no VIRTIO_NET_F_CTRL_MAC_ADDR offered).
        log::debug!(
            "virtio-net {}: ignored config write at {offset:#x}",
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
        let mut queues = queues.into_iter();
        let mut evts = queue_evts.into_iter();
        let (Some(rx_queue), Some(tx_queue), Some(rx_evt), Some(tx_evt)) =
            (queues.next(), queues.next(), evts.next(), evts.next())
        else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        for (index, q) in [(RX_INDEX, &rx_queue), (TX_INDEX, &tx_queue)] {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady { index });
            }
        }
        let acked = self.acked_features;
        let wanted = Self::tap_offloads_for(acked);
        let got_offloads = self.tap.negotiate_offload(wanted);
        if got_offloads != wanted {
            // Harmless: the kernel then sends the guest fewer offloaded frames, never more.
            // The guest can re-activate at will: rate-limited.
            if let Some(suppressed) = self.guest_err_log.check() {
                log::warn!(
                    "virtio-net {}: tap `{}` took offloads {got_offloads:#x} instead of \
                     {wanted:#x} ({suppressed} more guest errors suppressed)",
                    self.id,
                    self.tap.name()
                );
            }
        }
        self.mergeable_rx = has(acked, VIRTIO_NET_F_MRG_RXBUF);
        self.rx_frame_capacity = self.rx_capacity_for(acked);
        self.rx = RxState::default();
        self.broken = false;
        self.active = Some(ActiveState {
            mem: Arc::new(mem),
            interrupt,
            rx_queue,
            tx_queue,
            rx_evt,
            tx_evt,
        });
        self.ctrl_evt.write(1).map_err(ActivateError::Notify)
    }

    fn reset(&mut self) {
        if let Some(active) = self.active.take() {
            self.retired.push(active.rx_evt);
            self.retired.push(active.tx_evt);
        }
        self.rx_chains.clear();
        self.rx.pending_chains = 0;
        self.rx.pending_bytes = 0;
        self.rx.stalled = false;
        self.acked_features = 0;
        self.broken = false;
        if let Err(e) = self.ctrl_evt.write(1) {
            log::error!(
                "virtio-net {}: cannot signal reset to the io loop: {e}",
                self.id
            );
        }
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
