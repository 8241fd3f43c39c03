//! Transmit path: guest tx chains → tap, written straight from guest memory.

use virtio_queue::{QueueOwnedT, QueueT};

use super::chain::{self, ChainError};
use super::device::Net;
use super::mac_filter::{self, ETH_SRC_OFFSET};
use super::metrics::NetMetrics;
use super::{Mem, MAX_BUFFER_LEN, MIN_TX_LEN, VNET_HDR_LEN};
use crate::device::InterruptType;

/// What became of one tx chain.
enum TxOutcome {
    Sent,
    Dropped,
    /// The rate limiter refused it: it went back to the avail ring.
    Throttled,
}

impl Net {
    /// Sends every frame the guest queued, unless the rate limiter stops us.
    pub(super) fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        let mut used_any = false;
        if let Err(why) = self.tx_loop(&mem, &mut used_any) {
            self.queue_broken(&format!("tx: {why}"));
            return;
        }
        if used_any {
            self.signal_tx_used(&mem);
        }
    }

    fn tx_loop(&mut self, mem: &Mem, used_any: &mut bool) -> Result<(), String> {
        loop {
            self.tx_queue()?
                .disable_notification(mem)
                .map_err(|e| format!("cannot disable notifications: {e}"))?;
            loop {
                if self.tx_limiter.is_blocked() {
                    // Resumed by the limiter's timer.
                    return Ok(());
                }
                let chain = match self.tx_queue()?.iter(mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => return Err(format!("available ring unusable: {e}")),
                };
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                self.segs.clear();
                let parsed = chain::parse_chain(
                    chain,
                    mem,
                    false,
                    MIN_TX_LEN as u32,
                    MAX_BUFFER_LEN as u32,
                    &mut self.segs,
                );
                let outcome = match parsed {
                    Ok(len) => self.send_frame(mem, len as usize),
                    Err(e) => {
                        self.malformed_tx(&e);
                        TxOutcome::Dropped
                    }
                };
                match outcome {
                    TxOutcome::Throttled => {
                        self.tx_queue()?.go_to_previous_position();
                        return Ok(());
                    }
                    TxOutcome::Sent | TxOutcome::Dropped => {
                        self.tx_queue()?
                            .add_used(mem, head, 0)
                            .map_err(|e| format!("cannot add used entry {head}: {e}"))?;
                        *used_any = true;
                    }
                }
            }
            let more = self
                .tx_queue()?
                .enable_notification(mem)
                .map_err(|e| format!("cannot enable notifications: {e}"))?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Sends the frame described by `self.segs` (`len` bytes, header included).
    fn send_frame(&mut self, mem: &Mem, len: usize) -> TxOutcome {
        let mut src = [0u8; 6];
        if !chain::read_at(mem, &self.segs, VNET_HDR_LEN + ETH_SRC_OFFSET, &mut src) {
            // Cannot happen for a validated chain of at least MIN_TX_LEN bytes.
            NetMetrics::inc(&self.metrics.tx_malformed);
            return TxOutcome::Dropped;
        }
        if !mac_filter::source_allowed(&src, self.guest_mac, self.allow_mac_spoofing) {
            NetMetrics::inc(&self.metrics.tx_spoofed_dropped);
            if let Some(suppressed) = self.guest_err_log.check() {
                log::warn!(
                    "virtio-net {}: dropped a tx frame with spoofed source MAC \
                     {src:02x?} ({suppressed} more guest errors suppressed)",
                    self.id
                );
            }
            return TxOutcome::Dropped;
        }
        let frame_bytes = (len - VNET_HDR_LEN) as u64;
        if !self.tx_limiter.is_unlimited() && !self.tx_limiter.consume_request(frame_bytes) {
            NetMetrics::inc(&self.metrics.tx_rate_limited);
            return TxOutcome::Throttled;
        }
        let written = {
            let mut iovs = self.iovs.borrow();
            if !chain::push_iovecs(mem, &self.segs, len, &mut iovs) || iovs.total_len() != len {
                None
            } else {
                Some(self.tap.writev(&iovs))
            }
        };
        match written {
            None => {
                NetMetrics::inc(&self.metrics.tx_malformed);
                TxOutcome::Dropped
            }
            Some(Ok(_)) => {
                NetMetrics::inc(&self.metrics.tx_packets);
                NetMetrics::add(&self.metrics.tx_bytes, frame_bytes);
                TxOutcome::Sent
            }
            Some(Err(e)) => {
                NetMetrics::inc(&self.metrics.tap_write_errors);
                if let Some(suppressed) = self.write_err_log.check() {
                    log::error!(
                        "virtio-net {}: writing to tap `{}` failed, frame dropped: {e} \
                         ({suppressed} more suppressed)",
                        self.id,
                        self.tap.name()
                    );
                }
                TxOutcome::Dropped
            }
        }
    }

    fn malformed_tx(&mut self, e: &ChainError) {
        NetMetrics::inc(&self.metrics.tx_malformed);
        if let Some(suppressed) = self.guest_err_log.check() {
            log::warn!(
                "virtio-net {}: dropped tx chain: {e} ({suppressed} more guest errors suppressed)",
                self.id
            );
        }
    }

    fn tx_queue(&mut self) -> Result<&mut virtio_queue::Queue, String> {
        self.active
            .as_mut()
            .map(|a| &mut a.tx_queue)
            .ok_or_else(|| "device not active".to_string())
    }

    fn signal_tx_used(&mut self, mem: &Mem) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match active.tx_queue.needs_notification(mem) {
            Ok(true) => {
                if active.interrupt.trigger(InterruptType::Vring).is_err() {
                    NetMetrics::inc(&self.metrics.interrupt_errors);
                }
            }
            Ok(false) => {}
            Err(e) => self.queue_broken(&format!("tx used event unreadable: {e}")),
        }
    }
}
