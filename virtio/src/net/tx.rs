//! Transmit path: guest tx chains → tap.
//!
//! The virtio-net and Ethernet headers are copied out of guest memory once; the source MAC
//! check runs on that copy and the copy is what reaches the tap, followed by the rest of the
//! frame straight from guest memory. A second vCPU rewriting the header while the device
//! works can therefore change what is sent only in bytes that are not checked.

use virtio_queue::{QueueOwnedT, QueueT};

use super::chain::{self, ChainError, Segment};
use super::device::Net;
use super::iovec::IoVecs;
use super::mac_filter::{self, ETH_SRC_OFFSET};
use super::metrics::NetMetrics;
use super::{Mem, MAX_BUFFER_LEN, MIN_TX_LEN, VNET_HDR_LEN};
use crate::device::InterruptType;

/// Bytes copied out of guest memory before a tx frame is checked: the virtio-net header and
/// the Ethernet header (destination, source, ethertype).
pub const TX_HEADER_COPY: usize = MIN_TX_LEN;

/// Why a tx frame is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxRefusal {
    /// Its source MAC (in the copy that would be sent) is not the guest's.
    Spoofed([u8; 6]),
    /// The segments could not be read or mapped (cannot happen for a chain `parse_chain`
    /// accepted with a minimum of [`MIN_TX_LEN`] bytes), or need too many iovecs.
    Malformed,
}

/// Prepares one tx frame of `len` bytes (virtio-net header included) held in `segs`:
/// copies its first [`TX_HEADER_COPY`] bytes into `hdr`, checks the source MAC of that copy
/// against `guest_mac` / `allow_spoofing`, and fills `iovs` with `hdr` followed by the
/// remaining bytes in guest memory. What is checked is exactly what is sent.
pub fn gather_checked_frame<'m>(
    mem: &'m Mem,
    segs: &[Segment],
    len: usize,
    hdr: &'m mut [u8; TX_HEADER_COPY],
    guest_mac: Option<[u8; 6]>,
    allow_spoofing: bool,
    iovs: &mut IoVecs<'_, 'm>,
) -> Result<(), TxRefusal> {
    if len < TX_HEADER_COPY || !chain::read_at(mem, segs, 0, &mut hdr[..]) {
        return Err(TxRefusal::Malformed);
    }
    let hdr: &'m [u8; TX_HEADER_COPY] = hdr;
    let mut src = [0u8; 6];
    let at = VNET_HDR_LEN + ETH_SRC_OFFSET;
    src.copy_from_slice(&hdr[at..at + 6]);
    if !mac_filter::source_allowed(&src, guest_mac, allow_spoofing) {
        return Err(TxRefusal::Spoofed(src));
    }
    if !iovs.push_bytes(hdr)
        || !chain::push_iovecs_after(mem, segs, TX_HEADER_COPY, len - TX_HEADER_COPY, iovs)
        || iovs.total_len() != len
    {
        return Err(TxRefusal::Malformed);
    }
    Ok(())
}

/// What became of one tx chain.
pub(super) enum TxOutcome {
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
                let parsed = chain::parse_queue_chain(
                    &self.active.as_ref().ok_or("device not active")?.tx_queue,
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
        if let Some(outcome) = self.mmds_tx(mem, len) {
            return outcome;
        }
        // Host-owned copy of the headers: checked, then sent in place of the guest's bytes.
        let mut hdr = [0u8; TX_HEADER_COPY];
        let written = {
            let mut iovs = self.iovs.borrow();
            match gather_checked_frame(
                mem,
                &self.segs,
                len,
                &mut hdr,
                self.guest_mac,
                self.allow_mac_spoofing,
                &mut iovs,
            ) {
                Err(refusal) => Err(refusal),
                Ok(()) => {
                    let frame_bytes = (len - VNET_HDR_LEN) as u64;
                    if !self.tx_limiter.is_unlimited()
                        && !self.tx_limiter.consume_request(frame_bytes)
                    {
                        NetMetrics::inc(&self.metrics.tx_rate_limited);
                        return TxOutcome::Throttled;
                    }
                    Ok(self.tap.writev(&iovs))
                }
            }
        };
        let frame_bytes = (len - VNET_HDR_LEN) as u64;
        match written {
            Err(TxRefusal::Spoofed(src)) => {
                NetMetrics::inc(&self.metrics.tx_spoofed_dropped);
                if let Some(suppressed) = self.guest_err_log.check() {
                    log::warn!(
                        "virtio-net {}: dropped a tx frame with spoofed source MAC \
                         {src:02x?} ({suppressed} more guest errors suppressed)",
                        self.id
                    );
                }
                TxOutcome::Dropped
            }
            Err(TxRefusal::Malformed) => {
                NetMetrics::inc(&self.metrics.tx_malformed);
                TxOutcome::Dropped
            }
            Ok(Ok(_)) => {
                NetMetrics::inc(&self.metrics.tx_packets);
                NetMetrics::add(&self.metrics.tx_bytes, frame_bytes);
                TxOutcome::Sent
            }
            Ok(Err(e)) => {
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
