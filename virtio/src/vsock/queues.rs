//! The queues on the `io` thread, tx side: packets from the guest, each checked before it
//! touches a connection; and what every queue shares (checked chains, used entries). The rx
//! and event queues are in `rx.rs`.
//!
//! Every descriptor is checked (direction, inside guest memory, no indirect table) before
//! it is read or written; a chain that fails is returned with length 0 and counted.

use std::io;
use std::net::Shutdown;
use std::time::Instant;

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::conn::ConnState;
use super::packet::{Header, Op, HEADER_LEN, HOST_CID};
use super::{ConnKey, Vsock, VsockMetrics, SHUTDOWN_TIMEOUT, TXQ};
use crate::GuestMemoryMmap;

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// SHUTDOWN flags.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
/// Event id of VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// A chain's buffers, checked: all in guest memory, all going the expected way.
#[derive(Debug, Default)]
pub(super) struct Buffers {
    bufs: Vec<(GuestAddress, usize)>,
    pub(super) total: usize,
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
    pub(super) fn read(&self, mem: &GuestMemoryMmap, mut at: usize, out: &mut [u8]) -> bool {
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
    pub(super) fn write(&self, mem: &GuestMemoryMmap, mut at: usize, data: &[u8]) -> bool {
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

impl Vsock {
    pub(super) fn ready_mem(&self, index: usize) -> Option<GuestMemoryMmap> {
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
    pub(super) fn next_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        writable: bool,
    ) -> Result<Option<(u16, Option<Buffers>)>, String> {
        let Some(a) = self.active.as_mut() else {
            return Ok(None);
        };
        let Some((chain, indirect)) = a.next_chain(mem, index)? else {
            return Ok(None);
        };
        let head = chain.head_index();
        let bufs = if indirect {
            None
        } else {
            Buffers::of(mem, chain, writable)
        };
        if bufs.is_none() {
            VsockMetrics::inc(&self.metrics.invalid_chains);
        }
        Ok(Some((head, bufs)))
    }

    pub(super) fn add_used(
        &mut self,
        mem: &GuestMemoryMmap,
        index: usize,
        head: u16,
        len: u32,
    ) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        if let Err(e) = a.queues[index].add_used(mem, head, len) {
            self.queue_broken(&format!("queue {index}: cannot add used entry {head}: {e}"));
            return false;
        }
        true
    }

    pub(super) fn signal(&mut self, index: usize) {
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
}
