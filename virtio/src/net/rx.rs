//! Receive path: tap → guest rx buffers, read straight into guest memory.
//!
//! Before reading a frame, enough guest buffer space for the largest frame the tap may
//! deliver is gathered (several chains with `VIRTIO_NET_F_MRG_RXBUF`); one readv fills them,
//! the chains actually used are published and the rest go back to the avail ring. Without
//! enough buffers the tap is not read (the loop stops watching it) until the guest posts more.
//! A frame larger than the buffers gathered (a guest that posted small buffers without
//! `VIRTIO_NET_F_MRG_RXBUF`, or its whole ring with too little room) is dropped and counted
//! in `rx_oversized_dropped`, never truncated.

use std::io;

use virtio_queue::{QueueOwnedT, QueueT};

use super::chain::{self, ChainError};
use super::device::{Net, RxChain};
use super::metrics::NetMetrics;
use super::{Mem, VNET_HDR_LEN};
use crate::device::InterruptType;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

enum Gathered {
    Enough,
    TooFew,
}

impl Net {
    /// Moves frames from the tap to the guest while both sides allow it.
    pub(super) fn process_rx(&mut self) {
        if self.broken || self.rx.tap_dead {
            return;
        }
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return;
        };
        let mut used_any = false;
        if let Err(why) = self.rx_loop(&mem, &mut used_any) {
            self.queue_broken(&format!("rx: {why}"));
            return;
        }
        if used_any {
            self.signal_rx_used(&mem);
        }
    }

    fn rx_loop(&mut self, mem: &Mem, used_any: &mut bool) -> Result<(), String> {
        if self.rx.pending_chains > 0 {
            if !self.rx_limiter.consume_request(self.rx.pending_bytes) {
                return Ok(());
            }
            self.publish_rx(mem)?;
            *used_any = true;
        }
        loop {
            if self.rx_limiter.is_blocked() || self.rx.tap_dead {
                return Ok(());
            }
            match self.gather_rx_buffers(mem, used_any)? {
                Gathered::Enough => self.rx.stalled = false,
                Gathered::TooFew => {
                    if !self.rx.stalled {
                        NetMetrics::inc(&self.metrics.rx_no_buffer);
                        self.rx.stalled = true;
                    }
                    // Ask for a kick when buffers arrive. With every available chain still
                    // popped, the event index lands past them, so the next post kicks us;
                    // `more` then means buffers arrived meanwhile.
                    let more = self
                        .rx_queue()?
                        .enable_notification(mem)
                        .map_err(|e| format!("cannot enable notifications: {e}"))?;
                    self.rewind_rx(self.rx_chains.len());
                    if more {
                        self.rx.stalled = false;
                        continue;
                    }
                    return Ok(());
                }
            }
            // The MMDS endpoint's frames go first: they are few and answer the guest.
            match self.mmds_rx(mem)? {
                Some(0) => {
                    self.rewind_rx(self.rx_chains.len());
                    continue;
                }
                Some(n) => {
                    if !self.deliver_frame(mem, n)? {
                        return Ok(());
                    }
                    *used_any = true;
                    continue;
                }
                None => {}
            }
            // One byte past the guest's buffers: a frame that reaches it did not fit.
            let mut tail = [0u8; 1];
            let (read, offered) = {
                let capacity = self.rx_frame_capacity;
                let mut iovs = self.iovs.borrow_with_tail();
                // A short list only shrinks what one read can take; it never overruns.
                let _ = chain::push_iovecs(mem, &self.segs, capacity, &mut iovs);
                let offered = iovs.total_len();
                // The slot was reserved, so this cannot fail.
                let _ = iovs.push_tail(&mut tail);
                (self.tap.readv(&iovs), offered)
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    self.rewind_rx(self.rx_chains.len());
                    match e.kind() {
                        io::ErrorKind::WouldBlock => {}
                        io::ErrorKind::Interrupted => continue,
                        _ => self.tap_read_failed(&e),
                    }
                    return Ok(());
                }
            };
            if n < VNET_HDR_LEN {
                self.rewind_rx(self.rx_chains.len());
                NetMetrics::inc(&self.metrics.tap_read_errors);
                continue;
            }
            if n > offered {
                // Truncating would hand the guest a corrupt frame: drop it whole, give the
                // buffers back and count it.
                self.rewind_rx(self.rx_chains.len());
                NetMetrics::inc(&self.metrics.rx_oversized_dropped);
                log::debug!(
                    "virtio-net {}: dropped a {n}-byte received frame, guest buffers hold {offered}",
                    self.id
                );
                continue;
            }
            if !self.deliver_frame(mem, n)? {
                return Ok(());
            }
            *used_any = true;
        }
    }

    /// Places an `n`-byte frame (header included) in the gathered chains and publishes it.
    /// `false`: the rx limiter holds it back; the frame stays in the guest buffers,
    /// unpublished, until the timer fires.
    fn deliver_frame(&mut self, mem: &Mem, n: usize) -> Result<bool, String> {
        self.place_frame(mem, n)?;
        let frame_bytes = (n - VNET_HDR_LEN) as u64;
        self.rx.pending_bytes = frame_bytes;
        if !self.rx_limiter.consume_request(frame_bytes) {
            NetMetrics::inc(&self.metrics.rx_rate_limited);
            return Ok(false);
        }
        self.publish_rx(mem)?;
        Ok(true)
    }

    /// Pops rx chains into `rx_chains`/`segs` until they can hold the largest frame.
    fn gather_rx_buffers(&mut self, mem: &Mem, used_any: &mut bool) -> Result<Gathered, String> {
        self.segs.clear();
        self.rx_chains.clear();
        let need = self.rx_frame_capacity;
        let max_chains = if self.mergeable_rx { usize::MAX } else { 1 };
        let mut have = 0usize;
        while have < need && self.rx_chains.len() < max_chains.min(self.rx_chains.capacity()) {
            let queue = self.rx_queue()?;
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => return Err(format!("available ring unusable: {e}")),
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            match chain::parse_queue_chain(
                &self.active.as_ref().ok_or("device not active")?.rx_queue,
                chain,
                mem,
                true,
                VNET_HDR_LEN as u32,
                u32::MAX,
                &mut self.segs,
            ) {
                Ok(len) => {
                    self.rx_chains.push(RxChain {
                        head,
                        len,
                        segs_end: self.segs.len(),
                        used: 0,
                    });
                    have += len as usize;
                }
                Err(ChainError::TooManySegments { .. }) if !self.rx_chains.is_empty() => {
                    // Fine on its own: serve it first next time.
                    self.rewind_rx(1);
                    break;
                }
                Err(e) => {
                    if !self.rx_chains.is_empty() {
                        // Keep used-ring order simple: drop it when it comes first.
                        self.rewind_rx(1);
                        break;
                    }
                    NetMetrics::inc(&self.metrics.rx_malformed);
                    if let Some(suppressed) = self.guest_err_log.check() {
                        log::warn!(
                            "virtio-net {}: dropped rx chain: {e} ({suppressed} more suppressed)",
                            self.id
                        );
                    }
                    self.rx_queue()?
                        .add_used(mem, head, 0)
                        .map_err(|e| format!("cannot return rx chain {head}: {e}"))?;
                    *used_any = true;
                }
            }
        }
        let queue_size = usize::from(self.rx_queue()?.size());
        // A guest that posted its whole ring gets what fits rather than nothing forever.
        if have >= need || (!self.rx_chains.is_empty() && self.rx_chains.len() >= queue_size) {
            Ok(Gathered::Enough)
        } else if !self.mergeable_rx && !self.rx_chains.is_empty() {
            // Without merging only one chain can take a frame, whatever its size.
            Ok(Gathered::Enough)
        } else {
            Ok(Gathered::TooFew)
        }
    }

    /// Spreads `n` received bytes over the gathered chains, writes `num_buffers`, and gives
    /// the chains the frame did not reach back to the avail ring.
    fn place_frame(&mut self, mem: &Mem, n: usize) -> Result<(), String> {
        let mut left = n;
        let mut used_chains = 0;
        for c in self.rx_chains.iter_mut() {
            if left == 0 {
                break;
            }
            let take = left.min(c.len as usize);
            c.used = take as u32;
            left -= take;
            used_chains += 1;
        }
        let unused = self.rx_chains.len() - used_chains;
        self.rewind_rx(unused);
        self.rx_chains.truncate(used_chains);
        let first_segs = &self.segs[..self.rx_chains.first().map_or(0, |c| c.segs_end)];
        // `used_chains` <= queue size (256).
        let count = (used_chains as u16).to_le_bytes();
        if !chain::write_at(mem, first_segs, NUM_BUFFERS_OFFSET, &count) {
            return Err("cannot write num_buffers into a validated rx buffer".into());
        }
        self.rx.pending_chains = used_chains;
        Ok(())
    }

    fn publish_rx(&mut self, mem: &Mem) -> Result<(), String> {
        let pending = self.rx.pending_chains;
        let bytes = self.rx.pending_bytes;
        self.rx.pending_chains = 0;
        self.rx.pending_bytes = 0;
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        for c in &self.rx_chains[..pending.min(self.rx_chains.len())] {
            active
                .rx_queue
                .add_used(mem, c.head, c.used)
                .map_err(|e| format!("cannot add used entry {}: {e}", c.head))?;
        }
        self.rx_chains.clear();
        NetMetrics::inc(&self.metrics.rx_packets);
        NetMetrics::add(&self.metrics.rx_bytes, bytes);
        Ok(())
    }

    /// Returns the last `count` popped chains to the avail ring.
    fn rewind_rx(&mut self, count: usize) {
        if let Some(active) = self.active.as_mut() {
            let q = &mut active.rx_queue;
            // At most a queue's worth was popped, so `count` fits a u16.
            q.set_next_avail(q.next_avail().wrapping_sub(count as u16));
        }
        let keep = self.rx_chains.len().saturating_sub(count);
        self.rx_chains.truncate(keep);
    }

    fn tap_read_failed(&mut self, e: &io::Error) {
        NetMetrics::inc(&self.metrics.tap_read_errors);
        // Any error but EAGAIN/EINTR persists (EBADFD once the interface is deleted):
        // stop watching the tap so the loop cannot spin; tx keeps counting its own errors.
        self.rx.tap_dead = true;
        if let Some(suppressed) = self.read_err_log.check() {
            log::error!(
                "virtio-net {}: reading tap `{}` failed, receive stopped: {e} ({suppressed} more suppressed)",
                self.id,
                self.tap.name()
            );
        }
    }

    fn rx_queue(&mut self) -> Result<&mut virtio_queue::Queue, String> {
        self.active
            .as_mut()
            .map(|a| &mut a.rx_queue)
            .ok_or_else(|| "device not active".to_string())
    }

    fn signal_rx_used(&mut self, mem: &Mem) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match active.rx_queue.needs_notification(mem) {
            Ok(true) => {
                if active.interrupt.trigger(InterruptType::Vring).is_err() {
                    NetMetrics::inc(&self.metrics.interrupt_errors);
                }
            }
            Ok(false) => {}
            Err(e) => self.queue_broken(&format!("rx used event unreadable: {e}")),
        }
    }
}
