//! Per-device counters, updated on the I/O thread and read by the metrics flusher.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! block_metrics {
    ($($name:ident: $doc:literal),* $(,)?) => {
        /// Counters of one block device.
        #[derive(Debug, Default)]
        pub struct BlockMetrics {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`BlockMetrics`].
        #[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
        pub struct BlockMetricsSnapshot {
            $(#[doc = $doc] pub $name: u64,)*
        }

        impl BlockMetrics {
            pub fn snapshot(&self) -> BlockMetricsSnapshot {
                BlockMetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

block_metrics! {
    read_bytes: "Bytes read by the guest.",
    write_bytes: "Bytes written by the guest.",
    read_count: "Completed read requests.",
    write_count: "Completed write requests.",
    flush_count: "Completed flush requests.",
    get_id_count: "Completed GET_ID requests.",
    discard_count: "Completed discard and write-zeroes requests.",
    discard_bytes: "Bytes covered by completed discard and write-zeroes requests.",
    queue_event_count: "Queue notifications received.",
    rate_limiter_throttled_events: "Times a request was deferred by the rate limiter.",
    io_errors: "Requests that failed on the backing file.",
    invalid_requests: "Malformed requests completed with an error status.",
    dropped_requests: "Malformed requests without a usable status byte (dropped).",
    read_only_violations: "Writes refused on a read-only drive.",
    queue_errors: "Broken queues (device set to DEVICE_NEEDS_RESET).",
    activate_fails: "Failed activations.",
    config_updates: "Backing-file swaps (PATCH).",
}

impl BlockMetrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Ordering::Relaxed);
    }
}
