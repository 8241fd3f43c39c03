//! The three queues on the `io` thread. tx: packets from the guest, each checked before it
//! touches a connection. rx: packets for the guest (RSTs for unknown connections first,
//! then connections in the order they asked), data read from the host socket straight into
//! the guest's buffer. event: the TRANSPORT_RESET event after a snapshot.
//!
//! Every descriptor is checked (direction, inside guest memory, no indirect table) before
//! it is read or written; a chain that fails is returned with length 0 and counted.

use std::io::{self, Read};
use std::net::Shutdown;
use std::time::Instant;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::conn::{ConnState, TX_BUF_SIZE};
use super::packet::{Header, Op, HEADER_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use super::{ConnKey, Vsock, VsockMetrics, EVQ, RXQ, SHUTDOWN_TIMEOUT, TXQ};
use crate::GuestMemoryMmap;

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// SHUTDOWN flags.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
/// Event id of VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// A chain's buffers, checked: all in guest memory, all going the expected way.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    bufs: Vec<(GuestAddress, usize)>,
    total: usize,
}

impl Buffers {
    fn of(mem: &GuestMemoryMmap, chain: Chain<'_>, writable: bool) -> Option<Buffers> {
        let mut out = Buffers::default();
        for desc in chain {
            let len = desc.len() as usize;
            if desc.is_write_only() != writable
                || !GuestMemoryBackend::check_range(mem, desc.addr(), len)
            {
                return None;
            }
            out.bufs.push((desc.addr(), len));
            out.total += len;
        }
        (!out.bufs.is_empty()).then_some(out)
    }

    /// Copies `out.len()` bytes from logical offset `at`; false if the chain is shorter.
    fn read(&self, mem: &GuestMemoryMmap, mut at: usize, out: &mut [u8]) -> bool {
        let mut done = 0;
        for &(addr, len) in &self.bufs {
            if done == out.len() {
                break;
            }
            if at >= len {
                at -= len;
                continue;
            }
            let n = (len - at).min(out.len() - done);
            let Some(a) = addr.0.checked_add(at as u64) else {
                return false;
            };
            if mem
                .read_slice(&mut out[done..done + n], GuestAddress(a))
                .is_err()
            {
                return false;
            }
            done += n;
            at = 0;
        }
        done == out.len()
    }

    /// Copies `data` to logical offset `at`; false if the chain is shorter.
    fn write(&self, mem: &GuestMemoryMmap, mut at: usize, data: &[u8]) -> bool {
        let mut done = 0;
        for &(addr, len) in &self.bufs {
            if done == data.len() {
                break;
            }
            if at >= len {
                at -= len;
                continue;
            }
            let n = (len - at).min(data.len() - done);
            let Some(a) = addr.0.checked_add(at as u64) else {
                return false;
            };
            if mem
                .write_slice(&data[done..done + n], GuestAddress(a))
                .is_err()
            {
                return false;
            }
            done += n;
            at = 0;
        }
        done == data.len()
    }
}

/// What the next rx buffer carries.
enum RxItem {
    Rst(ConnKey),
    Conn(ConnKey),
}

impl Vsock {
    fn ready_mem(&self, index: usize) -> Option<GuestMemoryMmap> {
        if self.broken {
            return None;
        }
        self.active
            .as_ref()
            .filter(|a| a.is_ready(index))
            .map(|a| a.mem.clone())
    }

    /// The next available chain of queue `index` and its buffers (`None` buffers: refused
    /// and counted; the caller returns it empty). `Err`: the queue is broken.
    fn next_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        writable: bool,
    ) -> Result<Option<(u16, Option<Buffers>)>, String> {
        let Some(a) = self.active.as_mut() else {
            return Ok(None);
        };
        let q = &mut a.queues[index];
        let (table, size) = (GuestAddress(q.desc_table()), q.size());
        let chain = match q.iter(mem) {
            Ok(mut it) => it.next(),
            Err(e) => return Err(format!("queue {index}: available ring unusable: {e}")),
        };
        let Some(chain) = chain else {
            return Ok(None);
        };
        let head = chain.head_index();
        let bufs = if crate::indirect::chain_uses_indirect(mem, table, size, head) {
            None
        } else {
            Buffers::of(mem, chain, writable)
        };
        if bufs.is_none() {
            VsockMetrics::inc(&self.metrics.invalid_chains);
        }
        Ok(Some((head, bufs)))
    }

    fn add_used(&mut self, mem: &GuestMemoryMmap, index: usize, head: u16, len: u32) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        if let Err(e) = a.queues[index].add_used(mem, head, len) {
            self.queue_broken(&format!("queue {index}: cannot add used entry {head}: {e}"));
            return false;
        }
        true
    }

    fn signal(&mut self, index: usize) {
        if let Some(a) = self.active.as_mut() {
            if let Err(why) = a.signal_used(index) {
                self.queue_broken(&why);
            }
        }
    }

    /// Serves every packet the guest queued.
    pub(crate) fn process_tx(&mut self) {
        let Some(mem) = self.ready_mem(TXQ) else {
            return;
        };
        let mut used_any = false;
        loop {
            let Some(a) = self.active.as_mut() else {
                return;
            };
            if let Err(e) = a.queues[TXQ].disable_notification(&mem) {
                self.queue_broken(&format!("tx: cannot disable notifications: {e}"));
                return;
            }
            loop {
                let (head, bufs) = match self.next_chain(&mem, TXQ, false) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(why) => {
                        self.queue_broken(&why);
                        return;
                    }
                };
                if let Some(bufs) = bufs {
                    self.guest_packet(&mem, &bufs);
                }
                if !self.add_used(&mem, TXQ, head, 0) {
                    return;
                }
                used_any = true;
            }
            let Some(a) = self.active.as_mut() else {
                return;
            };
            match a.queues[TXQ].enable_notification(&mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.queue_broken(&format!("tx: cannot enable notifications: {e}"));
                    return;
                }
            }
        }
        if used_any {
            self.signal(TXQ);
        }
    }

    /// One packet from the guest.
    fn guest_packet(&mut self, mem: &GuestMemoryMmap, bufs: &Buffers) {
        let mut raw = [0u8; HEADER_LEN];
        if bufs.total < HEADER_LEN || !bufs.read(mem, 0, &mut raw) {
            VsockMetrics::inc(&self.metrics.invalid_chains);
            return;
        }
        let Ok(hdr) = Header::decode(&raw) else {
            VsockMetrics::inc(&self.metrics.invalid_chains);
            return;
        };
        VsockMetrics::inc(&self.metrics.tx_packets_count);
        let key = (hdr.dst_port, hdr.src_port);
        let checked = hdr.validate_from_guest(self.cid).map_err(|e| e.to_string());
        let checked = checked.and_then(|op| {
            if hdr.len as usize > bufs.total - HEADER_LEN {
                Err(format!(
                    "len {} but the chain holds {} payload bytes",
                    hdr.len,
                    bufs.total - HEADER_LEN
                ))
            } else {
                Ok(op)
            }
        });
        let op = match checked {
            Ok(op) => op,
            Err(why) => {
                VsockMetrics::inc(&self.metrics.invalid_packets);
                if let Some(suppressed) = self.guest_log.check() {
                    log::warn!(
                        "virtio-vsock: packet refused: {why} ({suppressed} more suppressed)"
                    );
                }
                // Only a packet from this guest to the host names one of our connections;
                // its stream cannot go on without the refused packet.
                if hdr.src_cid == self.cid && hdr.dst_cid == HOST_CID {
                    if self.conns.contains_key(&key) {
                        self.kill(key, true, true);
                    } else if hdr.op != Op::Rst as u16 {
                        self.queue_rst(key);
                    }
                }
                return;
            }
        };
        if op == Op::Request {
            self.guest_connect(key, hdr.buf_alloc, hdr.fwd_cnt);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if op != Op::Rst {
                VsockMetrics::inc(&self.metrics.unknown_conn_packets);
                self.queue_rst(key);
            }
            return;
        };
        c.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        match op {
            Op::Request => {}
            Op::Response => {
                if c.state != ConnState::LocalInit {
                    VsockMetrics::inc(&self.metrics.invalid_packets);
                    self.kill(key, true, true);
                    return;
                }
                c.state = ConnState::Established;
                c.deadline = None;
                let ok = format!("OK {}\n", c.local_port);
                c.push_own(ok.as_bytes());
                self.flush_conn(key);
            }
            Op::Rst => {
                self.kill(key, false, false);
                return;
            }
            Op::Shutdown => self.guest_shutdown(key, hdr.flags),
            Op::Rw => self.guest_data(mem, bufs, key, hdr.len as usize),
            Op::CreditUpdate => {}
            Op::CreditRequest => c.pending.credit_update = true,
        }
        self.touch(key);
    }

    fn guest_shutdown(&mut self, key: ConnKey, flags: u32) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if flags & SHUTDOWN_RCV != 0 {
            c.guest_shut_rcv = true;
        }
        if flags & SHUTDOWN_SEND != 0 {
            c.guest_shut_send = true;
        }
        if c.guest_shut_send && (c.guest_shut_rcv || c.host_eof) {
            // Nothing more either way: the host gets what is left, then the guest its RST.
            c.state = ConnState::Closing;
            if c.tx_buf.is_empty() {
                self.kill(key, true, false);
            } else {
                c.deadline = Some(Instant::now() + SHUTDOWN_TIMEOUT);
                self.arm_timer();
            }
        } else if c.guest_shut_send && c.tx_buf.is_empty() {
            let _ = c.stream.shutdown(Shutdown::Write);
        }
    }

    fn guest_data(&mut self, mem: &GuestMemoryMmap, bufs: &Buffers, key: ConnKey, len: usize) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state != ConnState::Established || c.guest_shut_send {
            VsockMetrics::inc(&self.metrics.invalid_packets);
            self.kill(key, true, true);
            return;
        }
        if !c.fits(len) {
            // More than the credit we gave: buffering it would be unbounded.
            VsockMetrics::inc(&self.metrics.credit_violations);
            self.kill(key, true, true);
            return;
        }
        let mut data = std::mem::take(&mut self.scratch);
        data.resize(len, 0);
        let ok = bufs.read(mem, HEADER_LEN, &mut data);
        let sent = if ok {
            VsockMetrics::add(&self.metrics.tx_bytes_count, len as u64);
            self.conns
                .get_mut(&key)
                .map(|c| c.send_to_host(&data))
                .unwrap_or(Ok(()))
        } else {
            VsockMetrics::inc(&self.metrics.invalid_chains);
            Err(io::Error::other("payload unreadable"))
        };
        self.scratch = data;
        if let Err(e) = sent {
            log::debug!("virtio-vsock: write to host port {}: {e}", key.0);
            VsockMetrics::inc(&self.metrics.tx_write_fails);
            self.kill(key, true, true);
        }
    }

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
