//! Per-interface counters, shared between the io thread (writer) and the metrics flusher.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! net_counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters; every field only grows.
        #[derive(Debug, Default)]
        pub struct NetMetrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`NetMetrics`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct NetMetricsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl NetMetrics {
            pub fn snapshot(&self) -> NetMetricsSnapshot {
                NetMetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

net_counters! {
    /// Frame bytes delivered to the guest (virtio-net header excluded).
    rx_bytes,
    /// Frames delivered to the guest.
    rx_packets,
    /// Times rx stopped because the guest had posted too few buffers.
    rx_no_buffer,
    /// Times rx waited for its rate limiter.
    rx_rate_limited,
    /// rx chains the guest posted malformed (dropped, returned with length 0).
    rx_malformed,
    /// Received frames larger than the buffers the guest offered: dropped, not truncated.
    rx_oversized_dropped,
    /// Frame bytes sent by the guest to the tap (header excluded).
    tx_bytes,
    /// Frames sent by the guest to the tap.
    tx_packets,
    /// Times tx waited for its rate limiter.
    tx_rate_limited,
    /// tx frames dropped because their source MAC was not the interface's `guest_mac`.
    tx_spoofed_dropped,
    /// tx chains dropped as malformed (bad header, direction, address, loop, size).
    tx_malformed,
    /// Failed reads from the tap (EAGAIN excluded).
    tap_read_errors,
    /// Failed writes to the tap; the frame is dropped.
    tap_write_errors,
    /// Queues found corrupt: the device asked the driver for a reset.
    queue_errors,
    /// Interrupts that could not be raised.
    interrupt_errors,
}

impl NetMetrics {
    pub(super) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_serializes_every_counter() {
        let m = NetMetrics::default();
        NetMetrics::add(&m.rx_bytes, 1500);
        NetMetrics::inc(&m.tx_spoofed_dropped);
        let s = m.snapshot();
        assert_eq!(s.rx_bytes, 1500);
        assert_eq!(s.tx_spoofed_dropped, 1);
        let v = serde_json::to_value(s).unwrap();
        assert_eq!(v["rx_bytes"], 1500);
        assert_eq!(v["tap_write_errors"], 0);
    }
}
