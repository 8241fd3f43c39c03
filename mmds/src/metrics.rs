//! MMDS counters, process-wide (one VM per process), under Firecracker's `mmds` metric names
//! where it has one. Bumped on the `io` thread; the VMM's metrics line reads them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The `mmds` section of a metrics line.
#[derive(Debug, Default)]
pub struct MmdsMetrics {
    /// Frames from the guest taken by the MMDS endpoint (ARP for its address, IPv4 to it).
    pub rx_accepted: Counter,
    /// Intercepted frames that were not usable: not TCP, malformed, too large.
    pub rx_accepted_unusual: Counter,
    /// HTTP requests answered.
    pub rx_count: Counter,
    /// Requests answered with a 4xx or 5xx status (bad requests included).
    pub rx_errors: Counter,
    /// V2 GETs without a token / with an invalid or expired one.
    pub rx_no_token: Counter,
    pub rx_invalid_token: Counter,
    /// Frames sent to the guest and their bytes (Ethernet headers included).
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    /// Frames for the guest dropped because its queue toward the guest was full (a guest
    /// that does not take its receive buffers): TCP retransmits what matters.
    pub tx_dropped_frames: Counter,
    pub connections_created: Counter,
    pub connections_destroyed: Counter,
    /// Connections reset to make room for a new one (the cap was reached).
    pub connections_evicted: Counter,
}

impl MmdsMetrics {
    const fn new() -> Self {
        Self {
            rx_accepted: Counter::new(),
            rx_accepted_unusual: Counter::new(),
            rx_count: Counter::new(),
            rx_errors: Counter::new(),
            rx_no_token: Counter::new(),
            rx_invalid_token: Counter::new(),
            tx_frames: Counter::new(),
            tx_bytes: Counter::new(),
            tx_dropped_frames: Counter::new(),
            connections_created: Counter::new(),
            connections_destroyed: Counter::new(),
            connections_evicted: Counter::new(),
        }
    }

    /// The counters as a JSON object.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "rx_accepted": self.rx_accepted.get(),
            "rx_accepted_unusual": self.rx_accepted_unusual.get(),
            "rx_count": self.rx_count.get(),
            "rx_errors": self.rx_errors.get(),
            "rx_no_token": self.rx_no_token.get(),
            "rx_invalid_token": self.rx_invalid_token.get(),
            "tx_frames": self.tx_frames.get(),
            "tx_bytes": self.tx_bytes.get(),
            "tx_dropped_frames": self.tx_dropped_frames.get(),
            "connections_created": self.connections_created.get(),
            "connections_destroyed": self.connections_destroyed.get(),
            "connections_evicted": self.connections_evicted.get(),
        })
    }
}

/// The process's MMDS counters.
pub static METRICS: MmdsMetrics = MmdsMetrics::new();
