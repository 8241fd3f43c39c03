//! The rx and event queues on the `io` thread. rx: packets for the guest (RSTs for unknown
//! connections first, then connections in the order they asked, round robin), data read
//! from the host socket straight into the guest's buffer, never more than its credit.
//! event: the TRANSPORT_RESET event after a snapshot.

use std::io::{self, Read};

use virtio_queue::{QueueOwnedT, QueueT};

use super::conn::TX_BUF_SIZE;
use super::packet::{Header, Op, HEADER_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use super::queues::{Buffers, EVENT_TRANSPORT_RESET, SHUTDOWN_SEND};
use super::{ConnKey, Vsock, VsockMetrics, EVQ, RXQ};
use crate::GuestMemoryMmap;

/// What the next rx buffer carries.
enum RxItem {
    Rst(ConnKey),
    Conn(ConnKey),
}

impl Vsock {
    fn header(&self, key: ConnKey, op: Op, len: u32, flags: u32) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt,
        }
    }

    fn next_rx_item(&mut self) -> Option<RxItem> {
        if let Some(&k) = self.rst_queue.front() {
            return Some(RxItem::Rst(k));
        }
        while let Some(&key) = self.rx_list.front() {
            if self.conns.get(&key).is_some_and(|c| c.in_rx_list) {
                return Some(RxItem::Conn(key));
            }
            self.rx_list.pop_front();
        }
        None
    }

    /// Asks the guest not to notify the rx queue (until [`Self::process_rx`] runs out).
    pub(crate) fn quiet_rx(&mut self) {
        let Some(mem) = self.ready_mem(RXQ) else {
            return;
        };
        if let Some(a) = self.active.as_mut() {
            if let Err(e) = a.queues[RXQ].disable_notification(&mem) {
                self.queue_broken(&format!("rx: cannot disable notifications: {e}"));
            }
        }
    }

    /// Delivers what is owed to the guest while it has rx buffers.
    pub(crate) fn process_rx(&mut self) {
        let Some(mem) = self.ready_mem(RXQ) else {
            return;
        };
        let mut used_any = false;
        while let Some(item) = self.next_rx_item() {
            let (head, bufs) = match self.next_chain(&mem, RXQ, true) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    // Out of buffers: ask to hear of the next one (and look once more).
                    let Some(a) = self.active.as_mut() else {
                        return;
                    };
                    match a.queues[RXQ].enable_notification(&mem) {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            self.queue_broken(&format!("rx: cannot enable notifications: {e}"));
                            return;
                        }
                    }
                }
                Err(why) => {
                    self.queue_broken(&why);
                    return;
                }
            };
            let used_len = match bufs {
                Some(b) if b.total >= HEADER_LEN => self.fill_rx(&mem, &b, item),
                Some(_) => {
                    VsockMetrics::inc(&self.metrics.invalid_chains);
                    Some(0)
                }
                None => Some(0),
            };
            let Some(used_len) = used_len else {
                // Nothing to send after all: the buffer stays the guest's.
                if let Some(a) = self.active.as_mut() {
                    a.queues[RXQ].go_to_previous_position();
                }
                continue;
            };
            if !self.add_used(&mem, RXQ, head, used_len) {
                return;
            }
            used_any = true;
        }
        if used_any {
            self.signal(RXQ);
        }
    }

    /// Writes the packet for `item` into `bufs`; the used length, or `None` if the item had
    /// nothing to send (it has then left the rx list).
    fn fill_rx(&mut self, mem: &GuestMemoryMmap, bufs: &Buffers, item: RxItem) -> Option<u32> {
        let (hdr, payload_len) = match item {
            RxItem::Rst(key) => {
                self.rst_queue.pop_front();
                (self.header(key, Op::Rst, 0, 0), 0)
            }
            RxItem::Conn(key) => {
                let room = (bufs.total - HEADER_LEN).min(MAX_PAYLOAD as usize);
                let packet = self.conn_packet(key, room);
                // Round robin: a connection with more to say goes to the back.
                self.rx_list.pop_front();
                if let Some(c) = self.conns.get_mut(&key) {
                    c.in_rx_list = false;
                    self.touch(key);
                }
                packet?
            }
        };
        let mut ok = bufs.write(mem, 0, &hdr.encode());
        if ok && payload_len > 0 {
            ok = bufs.write(mem, HEADER_LEN, &self.scratch[..payload_len]);
        }
        if !ok {
            VsockMetrics::inc(&self.metrics.invalid_chains);
            return Some(0);
        }
        VsockMetrics::inc(&self.metrics.rx_packets_count);
        VsockMetrics::add(&self.metrics.rx_bytes_count, payload_len as u64);
        Some((HEADER_LEN + payload_len) as u32)
    }

    /// The next packet connection `key` owes the guest, data in `self.scratch`.
    fn conn_packet(&mut self, key: ConnKey, room: usize) -> Option<(Header, usize)> {
        let c = self.conns.get_mut(&key)?;
        let (op, flags, len) = if c.pending.request {
            c.pending.request = false;
            (Op::Request, 0, 0)
        } else if c.pending.response {
            c.pending.response = false;
            (Op::Response, 0, 0)
        } else if let Some(n) = self.read_host(key, room) {
            (Op::Rw, 0, n)
        } else {
            let c = self.conns.get_mut(&key)?;
            if c.pending.shutdown != 0 {
                let flags = std::mem::take(&mut c.pending.shutdown);
                (Op::Shutdown, flags, 0)
            } else if c.pending.credit_update {
                (Op::CreditUpdate, 0, 0)
            } else if c.pending.credit_request {
                c.pending.credit_request = false;
                (Op::CreditRequest, 0, 0)
            } else {
                return None;
            }
        };
        let hdr = self.header(key, op, len as u32, flags);
        let c = self.conns.get_mut(&key)?;
        // Every packet carries our credit.
        c.pending.credit_update = false;
        c.last_fwd_cnt_sent = c.fwd_cnt;
        Some((hdr, len))
    }

    /// Reads up to `room` bytes (within the guest's credit) from the host into
    /// `self.scratch`; `None` when there is nothing to send now. EOF becomes a pending
    /// SHUTDOWN, a read error a reset.
    fn read_host(&mut self, key: ConnKey, room: usize) -> Option<usize> {
        let c = self.conns.get_mut(&key)?;
        if !c.can_send_data() {
            return None;
        }
        let want = room.min(c.peer_credit() as usize);
        if want == 0 {
            return None;
        }
        if self.scratch.len() < want {
            self.scratch.resize(want, 0);
        }
        let result = loop {
            match c.stream.read(&mut self.scratch[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match result {
            Ok(0) => {
                c.host_eof = true;
                c.want_read = false;
                if c.guest_shut_send {
                    // Both directions are done: close.
                    self.kill(key, true, false);
                } else {
                    c.pending.shutdown = SHUTDOWN_SEND;
                }
                None
            }
            Ok(n) => {
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                if n < want && !c.hup {
                    // Drained for now; the level-triggered IN says when there is more.
                    c.want_read = false;
                }
                if c.peer_credit() == 0 {
                    c.pending.credit_request = true;
                }
                Some(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.want_read = false;
                None
            }
            Err(e) => {
                log::debug!("virtio-vsock: read from host port {}: {e}", key.0);
                VsockMetrics::inc(&self.metrics.rx_read_fails);
                self.kill(key, true, true);
                None
            }
        }
    }

    /// Delivers a pending TRANSPORT_RESET event.
    pub(crate) fn process_event_queue(&mut self) {
        if !self.reset_event_pending {
            return;
        }
        let Some(mem) = self.ready_mem(EVQ) else {
            return;
        };
        let mut used_any = false;
        while self.reset_event_pending {
            let (head, bufs) = match self.next_chain(&mem, EVQ, true) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    let Some(a) = self.active.as_mut() else {
                        return;
                    };
                    match a.queues[EVQ].enable_notification(&mem) {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            self.queue_broken(&format!("event: cannot enable notifications: {e}"));
                            return;
                        }
                    }
                }
                Err(why) => {
                    self.queue_broken(&why);
                    return;
                }
            };
            let mut len = 0;
            if let Some(b) = bufs {
                if b.write(&mem, 0, &EVENT_TRANSPORT_RESET.to_le_bytes()) {
                    len = 4;
                    self.reset_event_pending = false;
                    VsockMetrics::inc(&self.metrics.transport_resets);
                } else {
                    VsockMetrics::inc(&self.metrics.invalid_chains);
                }
            }
            if !self.add_used(&mem, EVQ, head, len) {
                return;
            }
            used_any = true;
        }
        if used_any {
            self.signal(EVQ);
        }
    }
}
