//! The usage counters as plain data: the body of every usage record and what a snapshot
//! carries so that a restored VM continues its counts instead of starting from zero.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cpu::CpuTime;

/// Wall-clock time since the VM was created, by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WallTime {
    pub running_ms: u64,
    pub paused_ms: u64,
}

/// CPU time of xenia's own threads (the provider's overhead, not the guest's).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmThreads {
    /// The VMM (main) thread: control loop, API actions, metrics, usage sampling.
    pub vmm: CpuTime,
    /// The API server thread.
    pub api: CpuTime,
    /// The `io` thread: every virtio device's data path.
    pub io: CpuTime,
}

/// Guest memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryUsage {
    /// Guest RAM as configured (a gauge, not a counter).
    pub configured_mib: u64,
    /// Guest RAM backed by host pages at the last sample (a gauge).
    pub resident_bytes: u64,
    /// The largest `resident_bytes` seen.
    pub resident_high_water_bytes: u64,
    /// ∫ resident dt since the VM was created, MiB·s.
    pub resident_mib_seconds: f64,
}

/// One drive's traffic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUsage {
    pub read_bytes: u64,
    pub read_ops: u64,
    pub write_bytes: u64,
    pub write_ops: u64,
    pub flush_ops: u64,
    pub discard_bytes: u64,
    pub discard_ops: u64,
}

/// One network interface's traffic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetUsage {
    /// Frames (and their bytes, virtio header excluded) delivered to the guest.
    pub rx_bytes: u64,
    pub rx_frames: u64,
    /// Frames (and bytes) the guest sent out through the tap.
    pub tx_bytes: u64,
    pub tx_frames: u64,
    /// Frames the guest sent with a source MAC other than its `guest_mac` (anti-spoofing).
    pub tx_dropped_spoofed_frames: u64,
    /// Received frames larger than the guest's buffers.
    pub rx_dropped_oversized_frames: u64,
    /// Times a rate limiter made rx or tx wait. xenia's limiters defer frames, they never
    /// drop them: this is the count of throttling events, not of lost frames.
    pub rate_limited_events: u64,
}

/// The vsock device's traffic (payload bytes; headers excluded).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockUsage {
    /// Stream bytes (and packets of any kind) delivered to the guest.
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// Stream bytes (and packets) the guest sent.
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Connections opened, either direction.
    pub connections: u64,
}

impl VsockUsage {
    pub fn add(&self, b: &VsockUsage) -> VsockUsage {
        VsockUsage {
            rx_bytes: self.rx_bytes + b.rx_bytes,
            rx_packets: self.rx_packets + b.rx_packets,
            tx_bytes: self.tx_bytes + b.tx_bytes,
            tx_packets: self.tx_packets + b.tx_packets,
            connections: self.connections + b.connections,
        }
    }
}

/// Every usage counter of one VM. Each is cumulative since the VM was created (across
/// snapshot restores) and never decreases; gauges say so.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageCounters {
    pub wall: WallTime,
    /// Per vCPU, by index.
    pub vcpus: Vec<CpuTime>,
    /// The sum over `vcpus`: the guest's CPU time.
    pub vcpu_total: CpuTime,
    pub vmm_threads: VmmThreads,
    pub memory: MemoryUsage,
    /// By `drive_id`.
    pub drives: BTreeMap<String, DriveUsage>,
    /// By `iface_id`.
    pub interfaces: BTreeMap<String, NetUsage>,
    /// The vsock device, when the VM has one.
    #[serde(default)]
    pub vsock: Option<VsockUsage>,
}

/// What a snapshot carries: the counters at the moment of the snapshot and the identity of
/// the VM that produced them. Plain data, no fds; validated by [`UsageState::validate`].
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageState {
    pub usage_id: String,
    pub usage_epoch: u64,
    pub counters: UsageCounters,
}

/// Why a carried-over usage state is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageStateError {
    #[error("usage state: usage_id must be 32 lowercase hex digits, got {0:?}")]
    BadId(String),
    #[error("usage state: {what} has {got} entries, at most {max} allowed")]
    TooMany {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error("usage state: resident_mib_seconds is not a finite non-negative number")]
    BadIntegral,
}

/// Bounds for untrusted state: no more entries than a VM can have devices or vCPUs.
const MAX_ENTRIES: usize = 1024;

impl UsageState {
    /// Checks a state read from a snapshot file (untrusted input).
    pub fn validate(&self) -> Result<(), UsageStateError> {
        let id_ok = self.usage_id.len() == 32
            && self
                .usage_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !id_ok {
            return Err(UsageStateError::BadId(
                self.usage_id.chars().take(64).collect(),
            ));
        }
        let c = &self.counters;
        for (what, got) in [
            ("vcpus", c.vcpus.len()),
            ("drives", c.drives.len()),
            ("interfaces", c.interfaces.len()),
        ] {
            if got > MAX_ENTRIES {
                return Err(UsageStateError::TooMany {
                    what,
                    got,
                    max: MAX_ENTRIES,
                });
            }
        }
        let m = c.memory.resident_mib_seconds;
        if !m.is_finite() || m < 0.0 {
            return Err(UsageStateError::BadIntegral);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> UsageState {
        UsageState {
            usage_id: "0123456789abcdef0123456789abcdef".into(),
            usage_epoch: 2,
            counters: UsageCounters {
                vcpus: vec![CpuTime::default(); 2],
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_state_round_trips_and_validates() {
        let s = state();
        let text = serde_json::to_string(&s).unwrap();
        let back: UsageState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        back.validate().unwrap();
    }

    #[test]
    fn hostile_states_are_refused() {
        let mut s = state();
        s.usage_id = "../../etc".into();
        assert!(matches!(s.validate(), Err(UsageStateError::BadId(_))));
        let mut s = state();
        s.counters.vcpus = vec![CpuTime::default(); 5000];
        assert!(matches!(s.validate(), Err(UsageStateError::TooMany { .. })));
        let mut s = state();
        s.counters.memory.resident_mib_seconds = -1.0;
        assert_eq!(s.validate(), Err(UsageStateError::BadIntegral));
        assert!(serde_json::from_str::<UsageState>(
            r#"{"usage_id":"x","usage_epoch":0,"counters":{},"extra":1}"#
        )
        .is_err());
    }
}
