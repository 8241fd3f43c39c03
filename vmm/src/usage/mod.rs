//! Usage metering for chargeback: what one VM consumed, as cumulative counters a billing
//! pipeline can sum (`GET /usage`, the `usage` object of every metrics line, and a final
//! line on every exit that can run code).
//!
//! Identity: every xenia process draws a random 128-bit `usage_id` when it starts. A cold
//! boot has `usage_epoch` 0 and no parent. A VM restored from a snapshot gets a new
//! `usage_id`, `usage_epoch` = the snapshot's + 1, `parent_usage_id` = the snapshot's id, and
//! its counters continue from the snapshot's values, which the record repeats under
//! `inherited`. A billing job bills each `usage_id` for `counters - inherited` (last record
//! of that id): the original and each of its clones are then billed once, and what happened
//! before the snapshot is billed to the original only.
//!
//! Sources, none of them on a hot path: the kernel's per-thread CPU clocks (`cpu.rs`),
//! `mincore` over guest RAM (`memory.rs`), the counters the devices keep anyway, and a
//! monotonic clock for the wall time.

pub mod cpu;
pub mod memory;
pub mod state;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use virtio::block::BlockMetrics;
use virtio::net::NetMetrics;
use virtio::vsock::VsockMetrics;
use virtio::GuestMemoryMmap;

pub use cpu::{register_current, CpuTime, ThreadCpu, ThreadRole};
pub use state::{
    DriveUsage, MemoryUsage, NetUsage, UsageCounters, UsageState, UsageStateError, VmmThreads,
    VsockUsage, WallTime,
};

use memory::ResidentTracker;

/// How often the VMM thread samples resident memory for the integral and the high-water
/// mark (the integral is a trapezoid between samples).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One usage record: identity, state and the counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    /// Random per process; a restored VM (a clone) has a new one.
    pub usage_id: String,
    /// The `usage_id` of the VM whose snapshot this one was restored from.
    pub parent_usage_id: Option<String>,
    /// 0 for a cold boot, +1 per restore along the chain of snapshots.
    pub usage_epoch: u64,
    /// The `--id` of this process.
    pub instance_id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: &'static str,
    /// True on the last record a process writes, with the reason in `exit_reason`.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub exit_reason: Option<String>,
    /// When the record was taken (wall clock, ms since the Unix epoch).
    pub utc_timestamp_ms: u64,
    /// Null before the VM exists (a failed start's final record says so by being empty).
    pub counters: Option<UsageCounters>,
    /// What the counters started from (the snapshot's values), null for a cold boot.
    pub inherited: Option<UsageCounters>,
}

/// The wall-clock part: time in the running and paused states.
#[derive(Debug, Clone, Copy)]
struct StateClock {
    since: Instant,
    paused: bool,
    running: Duration,
    paused_for: Duration,
}

impl StateClock {
    fn totals(&self, now: Instant) -> (Duration, Duration) {
        let current = now.saturating_duration_since(self.since);
        if self.paused {
            (self.running, self.paused_for + current)
        } else {
            (self.running + current, self.paused_for)
        }
    }

    fn set_paused(&mut self, paused: bool, now: Instant) {
        if paused == self.paused {
            return;
        }
        let (running, paused_for) = self.totals(now);
        *self = StateClock {
            since: now,
            paused,
            running,
            paused_for,
        };
    }
}

/// A running VM's sources.
#[derive(Debug)]
struct Sources {
    memory: GuestMemoryMmap,
    configured_mib: u64,
    drives: Vec<(String, Arc<BlockMetrics>)>,
    nets: Vec<(String, Arc<NetMetrics>)>,
    vsock: Option<Arc<VsockMetrics>>,
}

/// The usage meter of one VMM process (owned by the VMM thread).
pub struct UsageMeter {
    usage_id: String,
    parent_usage_id: Option<String>,
    usage_epoch: u64,
    instance_id: String,
    clock: Option<StateClock>,
    resident: ResidentTracker,
    sources: Option<Sources>,
    inherited: Option<UsageCounters>,
}

impl std::fmt::Debug for UsageMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageMeter")
            .field("usage_id", &self.usage_id)
            .field("usage_epoch", &self.usage_epoch)
            .finish_non_exhaustive()
    }
}

/// 128 random bits as 32 hex digits. std's `RandomState` keys come from the OS's random
/// source (getrandom) once per thread; this runs on the VMM thread before its filter.
fn random_id() -> String {
    let mut out = String::with_capacity(32);
    for salt in [0x7573_6167_6531u64, 0x7573_6167_6532] {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

fn utc_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn drive_usage(m: &BlockMetrics) -> DriveUsage {
    let s = m.snapshot();
    DriveUsage {
        read_bytes: s.read_bytes,
        read_ops: s.read_count,
        write_bytes: s.write_bytes,
        write_ops: s.write_count,
        flush_ops: s.flush_count,
        discard_bytes: s.discard_bytes,
        discard_ops: s.discard_count,
    }
}

fn net_usage(m: &NetMetrics) -> NetUsage {
    let s = m.snapshot();
    NetUsage {
        rx_bytes: s.rx_bytes,
        rx_frames: s.rx_packets,
        tx_bytes: s.tx_bytes,
        tx_frames: s.tx_packets,
        tx_dropped_spoofed_frames: s.tx_spoofed_dropped,
        rx_dropped_oversized_frames: s.rx_oversized_dropped,
        rate_limited_events: s.rx_rate_limited + s.tx_rate_limited,
    }
}

fn add_drive(a: &DriveUsage, b: &DriveUsage) -> DriveUsage {
    DriveUsage {
        read_bytes: a.read_bytes + b.read_bytes,
        read_ops: a.read_ops + b.read_ops,
        write_bytes: a.write_bytes + b.write_bytes,
        write_ops: a.write_ops + b.write_ops,
        flush_ops: a.flush_ops + b.flush_ops,
        discard_bytes: a.discard_bytes + b.discard_bytes,
        discard_ops: a.discard_ops + b.discard_ops,
    }
}

/// The inherited vsock counters plus the live device's (either may be missing).
fn vsock_usage(base: Option<&VsockUsage>, live: Option<&VsockMetrics>) -> Option<VsockUsage> {
    let live = live.map(|m| {
        let s = m.snapshot();
        VsockUsage {
            rx_bytes: s.rx_bytes_count,
            rx_packets: s.rx_packets_count,
            tx_bytes: s.tx_bytes_count,
            tx_packets: s.tx_packets_count,
            connections: s.conns_added,
        }
    });
    match (base, live) {
        (Some(b), Some(l)) => Some(b.add(&l)),
        (b, l) => b.copied().or(l),
    }
}

fn add_net(a: &NetUsage, b: &NetUsage) -> NetUsage {
    NetUsage {
        rx_bytes: a.rx_bytes + b.rx_bytes,
        rx_frames: a.rx_frames + b.rx_frames,
        tx_bytes: a.tx_bytes + b.tx_bytes,
        tx_frames: a.tx_frames + b.tx_frames,
        tx_dropped_spoofed_frames: a.tx_dropped_spoofed_frames + b.tx_dropped_spoofed_frames,
        rx_dropped_oversized_frames: a.rx_dropped_oversized_frames + b.rx_dropped_oversized_frames,
        rate_limited_events: a.rate_limited_events + b.rate_limited_events,
    }
}

/// Adds map `live` onto `base` by key (an id only in one side keeps its value).
fn merge<T: Clone>(
    base: &BTreeMap<String, T>,
    live: Vec<(String, T)>,
    add: fn(&T, &T) -> T,
) -> BTreeMap<String, T> {
    let mut out = base.clone();
    for (id, v) in live {
        let sum = match out.get(&id) {
            Some(b) => add(b, &v),
            None => v,
        };
        out.insert(id, sum);
    }
    out
}

impl UsageMeter {
    /// A meter for a process with `--id` `instance_id`; the identity is drawn now.
    pub fn new(instance_id: impl Into<String>) -> Self {
        Self {
            usage_id: random_id(),
            parent_usage_id: None,
            usage_epoch: 0,
            instance_id: instance_id.into(),
            clock: None,
            resident: ResidentTracker::default(),
            sources: None,
            inherited: None,
        }
    }

    pub fn usage_id(&self) -> &str {
        &self.usage_id
    }

    /// The hook for snapshot restore: continue from `state` (validated first) under a new
    /// identity whose parent is the snapshot's. Call before [`UsageMeter::vm_started`].
    pub fn continue_from(&mut self, state: &UsageState) -> Result<(), UsageStateError> {
        state.validate()?;
        self.parent_usage_id = Some(state.usage_id.clone());
        self.usage_epoch = state.usage_epoch.saturating_add(1);
        let m = &state.counters.memory;
        self.resident =
            ResidentTracker::resume_from(m.resident_high_water_bytes, m.resident_mib_seconds);
        self.inherited = Some(state.counters.clone());
        Ok(())
    }

    /// The hook for snapshot create: the state to save (the VM should be paused).
    pub fn save_state(&mut self) -> Option<UsageState> {
        let counters = self.counters()?;
        Some(UsageState {
            usage_id: self.usage_id.clone(),
            usage_epoch: self.usage_epoch,
            counters,
        })
    }

    /// The VM exists and runs from now on.
    pub fn vm_started(
        &mut self,
        memory: GuestMemoryMmap,
        configured_bytes: u64,
        drives: Vec<(String, Arc<BlockMetrics>)>,
        nets: Vec<(String, Arc<NetMetrics>)>,
    ) {
        let now = Instant::now();
        self.clock = Some(StateClock {
            since: now,
            paused: false,
            running: Duration::ZERO,
            paused_for: Duration::ZERO,
        });
        self.sources = Some(Sources {
            memory,
            configured_mib: configured_bytes >> 20,
            drives,
            nets,
            vsock: None,
        });
        self.sample();
    }

    /// The running VM has a vsock device with these counters (call after `vm_started`).
    pub fn set_vsock_source(&mut self, counters: Arc<VsockMetrics>) {
        if let Some(s) = self.sources.as_mut() {
            s.vsock = Some(counters);
        }
    }

    /// The VM was paused (true) or resumed (false).
    pub fn set_paused(&mut self, paused: bool) {
        if let Some(c) = self.clock.as_mut() {
            c.set_paused(paused, Instant::now());
        }
    }

    /// Samples resident memory (the periodic timer, and before each record).
    pub fn sample(&mut self) {
        if let Some(s) = &self.sources {
            if let Err(e) = self.resident.sample(&s.memory) {
                log::warn!("usage: cannot read resident guest memory: {e}");
            }
        }
    }

    /// The counters now (inherited + since this process started the VM); None before boot.
    pub fn counters(&mut self) -> Option<UsageCounters> {
        let clock = self.clock?;
        self.sample();
        let sources = self.sources.as_ref()?;
        let base = self.inherited.clone().unwrap_or_default();
        let (running, paused) = clock.totals(Instant::now());

        let mut vcpus = base.vcpus.clone();
        let mut threads = base.vmm_threads;
        let mut live_threads = VmmThreads::default();
        for (role, t) in cpu::sample_all() {
            match role {
                ThreadRole::Vcpu(i) => {
                    let i = usize::from(i);
                    if vcpus.len() <= i {
                        vcpus.resize(i + 1, CpuTime::default());
                    }
                    vcpus[i] = base.vcpus.get(i).copied().unwrap_or_default().add(&t);
                }
                ThreadRole::Vmm => live_threads.vmm = t,
                ThreadRole::Api => live_threads.api = t,
                ThreadRole::Io => live_threads.io = t,
            }
        }
        threads.vmm = threads.vmm.add(&live_threads.vmm);
        threads.api = threads.api.add(&live_threads.api);
        threads.io = threads.io.add(&live_threads.io);
        let vcpu_total = vcpus.iter().fold(CpuTime::default(), |acc, t| acc.add(t));

        let drives = merge(
            &base.drives,
            sources
                .drives
                .iter()
                .map(|(id, m)| (id.clone(), drive_usage(m)))
                .collect(),
            add_drive,
        );
        let interfaces = merge(
            &base.interfaces,
            sources
                .nets
                .iter()
                .map(|(id, m)| (id.clone(), net_usage(m)))
                .collect(),
            add_net,
        );
        Some(UsageCounters {
            wall: WallTime {
                running_ms: base.wall.running_ms + ms(running),
                paused_ms: base.wall.paused_ms + ms(paused),
            },
            vcpus,
            vcpu_total,
            vmm_threads: threads,
            memory: MemoryUsage {
                configured_mib: sources.configured_mib,
                resident_bytes: self.resident.resident_bytes,
                resident_high_water_bytes: self.resident.high_water_bytes,
                resident_mib_seconds: self.resident.mib_seconds,
            },
            drives,
            interfaces,
            vsock: vsock_usage(base.vsock.as_ref(), sources.vsock.as_deref()),
        })
    }

    /// A record for `GET /usage` or a metrics line; `exit_reason` makes it the final one.
    pub fn record(&mut self, state: &'static str, exit_reason: Option<&str>) -> UsageRecord {
        UsageRecord {
            usage_id: self.usage_id.clone(),
            parent_usage_id: self.parent_usage_id.clone(),
            usage_epoch: self.usage_epoch,
            instance_id: self.instance_id.clone(),
            state,
            is_final: exit_reason.is_some(),
            exit_reason: exit_reason.map(str::to_owned),
            utc_timestamp_ms: utc_ms(),
            counters: self.counters(),
            inherited: self.inherited.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
