//! The device on a real event loop (event-manager, as on the `io` thread) with rings in test
//! memory and real Unix sockets: both connection directions, data and credit both ways,
//! close, timeouts, and the snapshot reset.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::conn::TX_BUF_SIZE;
use super::packet::{Header, Op, HEADER_LEN, HOST_CID, TYPE_STREAM};
use super::queues::{SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::*;
use crate::persist::VirtioPersist;
use crate::test_rings::RawRing;
use crate::test_utils::{guest_memory, RecordingInterrupt};
use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

pub(super) const CID: u64 = 3;
const RX_BUF: u64 = 0x40_0000;
const RX_BUF_LEN: u32 = 4096 + HEADER_LEN as u32;
const TX_BUF: u64 = 0x80_0000;
const EV_BUF: u64 = 0x3f_0000;

pub(super) struct Harness {
    pub mem: GuestMemoryMmap,
    pub dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    pub rings: [RawRing; 3],
    kicks: Vec<vmm_sys_util::eventfd::EventFd>,
    pub dir: PathBuf,
    pub uds: PathBuf,
    rx_seen: u16,
    rx_posted: u16,
    tx_next: u16,
    ev_seen: u16,
}

fn queue_at(r: &RawRing) -> Queue {
    let mut q = Queue::new(r.size).unwrap();
    q.set_size(r.size);
    q.set_desc_table_address(Some(r.desc as u32), Some((r.desc >> 32) as u32));
    q.set_avail_ring_address(Some(r.avail as u32), Some((r.avail >> 32) as u32));
    q.set_used_ring_address(Some(r.used as u32), Some((r.used >> 32) as u32));
    q.set_ready(true);
    q
}

/// A guest packet header from `src_port` (guest) to `dst_port` (host).
pub(super) fn hdr(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 64 << 10,
        fwd_cnt: 0,
    }
}

impl Harness {
    pub fn new(tag: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!("xenia-vsock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let mem = guest_memory();
        let rings = [
            RawRing::at(0x1_0000, VSOCK_QUEUE_SIZES[0]),
            RawRing::at(0x2_0000, VSOCK_QUEUE_SIZES[1]),
            RawRing::at(0x3_0000, VSOCK_QUEUE_SIZES[2]),
        ];
        let mut dev = Vsock::new(CID, &uds).unwrap();
        dev.set_acked_features(1 << crate::features::VIRTIO_F_VERSION_1);
        let evts: Vec<_> = (0..3)
            .map(|_| vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        dev.activate(ActivateContext {
            mem: mem.clone(),
            interrupt: Arc::new(RecordingInterrupt::default()),
            queues: rings.iter().map(queue_at).collect(),
            queue_evts: evts,
        })
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut h = Harness {
            mem,
            dev,
            em,
            rings,
            kicks,
            dir,
            uds,
            rx_seen: 0,
            rx_posted: 0,
            tx_next: 0,
            ev_seen: 0,
        };
        h.run();
        h
    }

    pub fn dev(&self) -> MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }

    /// Runs the loop until nothing is ready.
    pub fn run(&mut self) {
        for _ in 0..10_000 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
        panic!("the event loop never settles");
    }

    /// Runs the loop, waiting up to `ms` for the first event.
    pub fn run_wait(&mut self, ms: i32) {
        self.em.run_with_timeout(ms).unwrap();
        self.run();
    }

    pub fn kick(&mut self, q: usize) {
        self.kicks[q].write(1).unwrap();
        self.run();
    }

    /// Posts `n` receive buffers of 44 + 4096 bytes (one descriptor each).
    pub fn give_rx(&mut self, n: u16) {
        // Never more than the ring holds.
        let outstanding = self
            .rx_posted
            .wrapping_sub(self.rings[0].used_idx(&self.mem));
        let n = n.min(self.rings[0].size - outstanding);
        for _ in 0..n {
            let slot = self.rx_posted % self.rings[0].size;
            let addr = RX_BUF + u64::from(slot) * u64::from(RX_BUF_LEN);
            self.rings[0].add_chain(&self.mem, slot, &[(addr, RX_BUF_LEN, 2)]);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
        self.kick(0);
    }

    /// Posts one receive chain of the given descriptors (for hostile tests).
    pub fn give_rx_chain(&mut self, descs: &[(u64, u32, u16)]) {
        let slot = self.rx_posted % self.rings[0].size;
        self.rings[0].add_chain(&self.mem, slot, descs);
        self.rx_posted = self.rx_posted.wrapping_add(descs.len() as u16);
        self.kick(0);
    }

    /// Packets the device put in the rx ring since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let used = self.rings[0].used_idx(&self.mem);
        while self.rx_seen != used {
            let (id, len) = self.rings[0].used_elem(&self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let desc: [u8; 16] = self
                .mem
                .read_obj(GuestAddress(self.rings[0].desc + 16 * u64::from(id)))
                .unwrap();
            let addr = u64::from_le_bytes(desc[..8].try_into().unwrap());
            if len == 0 {
                continue;
            }
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            let h = Header::decode(&b).unwrap();
            assert_eq!(h.len as usize + HEADER_LEN, len as usize, "{h:?}");
            out.push((h, b[HEADER_LEN..].to_vec()));
        }
        out
    }

    /// Sends raw chain descriptors on the tx queue.
    pub fn send_chain(&mut self, descs: &[(u64, u32, u16)]) {
        let first = self.tx_next % (self.rings[1].size - 8);
        self.rings[1].add_chain(&self.mem, first, descs);
        self.tx_next = self.tx_next.wrapping_add(descs.len() as u16);
        self.kick(1);
    }

    /// Sends one packet: header and payload in two descriptors.
    pub fn send(&mut self, h: Header, payload: &[u8]) {
        let slot = u64::from(self.tx_next % 64);
        let at = TX_BUF + slot * 0x1_1000;
        self.mem.write_slice(&h.encode(), GuestAddress(at)).unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + 0x100))
            .unwrap();
        if payload.is_empty() {
            self.send_chain(&[(at, HEADER_LEN as u32, 0)]);
        } else {
            self.send_chain(&[
                (at, HEADER_LEN as u32, 0),
                (at + 0x100, payload.len() as u32, 0),
            ]);
        }
    }

    /// Posts event buffers.
    pub fn give_event_buffers(&mut self, n: u16) {
        for i in 0..n {
            let at = EV_BUF + 8 * u64::from(i);
            self.rings[2].add_chain(&self.mem, i, &[(at, 8, 2)]);
        }
        self.kick(2);
    }

    /// Event ids the device delivered since the last call.
    pub fn events(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        let used = self.rings[2].used_idx(&self.mem);
        while self.ev_seen != used {
            let (id, len) = self.rings[2].used_elem(&self.mem, self.ev_seen);
            self.ev_seen = self.ev_seen.wrapping_add(1);
            assert_eq!(len, 4);
            out.push(
                self.mem
                    .read_obj::<u32>(GuestAddress(EV_BUF + 8 * u64::from(id)))
                    .unwrap(),
            );
        }
        out
    }

    /// A host listener for guest connections to `port`.
    pub fn host_listen(&self, port: u32) -> UnixListener {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(p).unwrap()
    }

    /// Host side: connects to the device's socket and asks for guest port `port`.
    pub fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.run_wait(100);
        self.run_wait(10);
        s
    }

    /// Guest side: connects from `gport` to host port `hport` (listener accepted) and checks
    /// the RESPONSE.
    pub fn guest_connect(&mut self, gport: u32, hport: u32, l: &UnixListener) -> UnixStream {
        self.send(hdr(Op::Request, gport, hport, 0), &[]);
        let p = self.recv();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0.op, Op::Response as u16);
        assert_eq!((p[0].0.src_port, p[0].0.dst_port), (hport, gport));
        let (s, _) = l.accept().unwrap();
        s
    }

    pub fn metrics(&self) -> VsockMetricsSnapshot {
        self.dev().metrics().snapshot()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads exactly `n` bytes from a blocking host socket.
pub(super) fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

#[test]
fn config_space_features_and_cid_checks() {
    let mut h = Harness::new("cfg");
    let d = h.dev();
    let mut b = [0u8; 8];
    d.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    assert_eq!(d.device_type(), 19);
    assert_eq!(d.queue_max_sizes().len(), 3);
    assert_ne!(d.avail_features() & (1 << 32), 0);
    drop(d);
    h.dev().write_config(0, &[9]);
    assert_eq!(h.metrics().cfg_fails, 1);
    assert!(matches!(
        Vsock::new(2, &h.dir.join("x")),
        Err(VsockError::Cid(2))
    ));
    // The path is taken: a second device cannot listen there.
    assert!(matches!(
        Vsock::new(3, &h.uds),
        Err(VsockError::Listen { .. })
    ));
    h.run();
}

#[test]
fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
    let mut h = Harness::new("g2h");
    h.give_rx(16);
    let l = h.host_listen(5000);
    let mut s = h.guest_connect(1234, 5000, &l);
    h.send(hdr(Op::Rw, 1234, 5000, 5), b"hello");
    assert_eq!(read_n(&mut s, 5), b"hello");
    s.write_all(b"world!").unwrap();
    h.run_wait(100);
    let p = h.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0.op, Op::Rw as u16);
    assert_eq!(p[0].1, b"world!");
    assert_eq!(p[0].0.buf_alloc, TX_BUF_SIZE);
    assert_eq!(p[0].0.fwd_cnt, 5);
    let m = h.metrics();
    assert_eq!((m.tx_bytes_count, m.rx_bytes_count), (5, 6));
    assert_eq!(m.conns_added, 1);
    // The host closes: the guest hears SHUTDOWN(SEND); the guest closes too: RST.
    drop(s);
    h.run_wait(100);
    let p = h.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0.op, Op::Shutdown as u16);
    assert_eq!(p[0].0.flags, SHUTDOWN_SEND);
    let mut sd = hdr(Op::Shutdown, 1234, 5000, 0);
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(sd, &[]);
    let p = h.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0.op, Op::Rst as u16);
    assert_eq!(h.dev().connection_count(), 0);
}

#[test]
fn nobody_listening_means_rst() {
    let mut h = Harness::new("norst");
    h.give_rx(4);
    h.send(hdr(Op::Request, 1234, 77, 0), &[]);
    let p = h.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.op, Op::Rst as u16);
    assert_eq!((p[0].0.src_port, p[0].0.dst_port), (77, 1234));
    assert_eq!(h.metrics().connect_fails, 1);
}

#[test]
fn host_connects_the_guest_accepts_and_the_host_reads_ok_with_its_port() {
    let mut h = Harness::new("h2g");
    h.give_rx(16);
    let mut s = h.host_connect(52);
    let p = h.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    let req = p[0].0;
    assert_eq!(req.op, Op::Request as u16);
    assert_eq!(req.dst_port, 52);
    assert_eq!(req.dst_cid, CID);
    assert!((1 << 30..1 << 31).contains(&req.src_port));
    h.send(hdr(Op::Response, 52, req.src_port, 0), &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_n(&mut s, ok.len()), ok.as_bytes());
    s.write_all(b"ping").unwrap();
    h.run_wait(100);
    let p = h.recv();
    assert_eq!(p[0].1, b"ping");
    h.send(hdr(Op::Rw, 52, req.src_port, 4), b"pong");
    assert_eq!(read_n(&mut s, 4), b"pong");
    // A second host connection gets another port.
    let _s2 = h.host_connect(52);
    let p = h.recv();
    assert_eq!(p.len(), 1);
    assert_ne!(p[0].0.src_port, req.src_port);
}

#[test]
fn a_guest_that_never_answers_a_request_is_given_up_on() {
    let mut h = Harness::new("h2gto");
    h.give_rx(4);
    let mut s = h.host_connect(52);
    assert_eq!(h.recv().len(), 1);
    // Deadlines pass (set back instead of sleeping), then the timer tick expires them.
    for c in h.dev().conns.values_mut() {
        c.deadline = Some(std::time::Instant::now());
    }
    h.run_wait(1000);
    let p = h.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0.op, Op::Rst as u16);
    let mut b = [0u8; 8];
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(s.read(&mut b).unwrap(), 0, "the host sees EOF and no OK");
    assert_eq!(h.metrics().connect_timeouts, 1);
    // A host that never finishes its line is closed too.
    let mut silent = UnixStream::connect(&h.uds).unwrap();
    silent.write_all(b"CONN").unwrap();
    h.run_wait(100);
    for p in h.dev().pending_hosts.values_mut() {
        p.deadline = std::time::Instant::now();
    }
    h.run_wait(1000);
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(silent.read(&mut b).unwrap(), 0);
    assert_eq!(h.metrics().connect_timeouts, 2);
    assert_eq!(h.dev().connection_count(), 0);
}

#[test]
fn a_close_the_host_never_finishes_taking_is_given_up_on() {
    use std::os::fd::AsRawFd;
    let mut h = Harness::new("closeto");
    h.give_rx(16);
    let l = h.host_listen(5000);
    let mut s = h.guest_connect(1234, 5000, &l);
    // The smallest send buffer on xenia's end, and a host that does not read: most of a
    // 64 KiB packet has to wait in the connection's buffer.
    for c in h.dev().conns.values() {
        let min: libc::c_int = 1;
        // SAFETY: setsockopt on a socket the connection owns, with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                c.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                std::ptr::addr_of!(min).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
    let data = vec![0x5a; 64 << 10];
    h.send(hdr(Op::Rw, 1234, 5000, data.len() as u32), &data);
    let mut sd = hdr(Op::Shutdown, 1234, 5000, 0);
    sd.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(sd, &[]);
    let waiting: Vec<usize> = h.dev().conns.values().map(|c| c.tx_buf.len()).collect();
    assert!(
        waiting.len() == 1 && waiting[0] > 0,
        "the close should wait for the host: {waiting:?}"
    );
    assert!(h.recv().iter().all(|(p, _)| p.op != Op::Rst as u16));
    // The deadline passes (set back instead of sleeping): the guest gets its RST, the host
    // socket is closed with what it took so far.
    for c in h.dev().conns.values_mut() {
        c.deadline = Some(std::time::Instant::now());
    }
    h.run_wait(1000);
    let p = h.recv();
    assert!(p.iter().any(|(p, _)| p.op == Op::Rst as u16), "{p:?}");
    assert_eq!(h.dev().connection_count(), 0);
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(
        got.len() < data.len() && got.iter().all(|&b| b == 0x5a),
        "the host took {} of {} bytes",
        got.len(),
        data.len()
    );
}

#[test]
fn host_data_never_exceeds_the_guest_credit() {
    let mut h = Harness::new("credit");
    h.give_rx(64);
    let l = h.host_listen(6000);
    let mut req = hdr(Op::Request, 1, 6000, 0);
    req.buf_alloc = 10_000;
    h.send(req, &[]);
    assert_eq!(h.recv().len(), 1);
    let (mut s, _) = l.accept().unwrap();
    s.write_all(&vec![1u8; 50_000]).unwrap();
    h.run_wait(100);
    let got: usize = h.recv().iter().map(|p| p.1.len()).sum();
    assert_eq!(got, 10_000, "exactly the credit");
    // The guest consumed it all: 10,000 more.
    let mut up = hdr(Op::CreditUpdate, 1, 6000, 0);
    up.buf_alloc = 10_000;
    up.fwd_cnt = 10_000;
    h.send(up, &[]);
    h.run_wait(10);
    let p = h.recv();
    let data: usize = p
        .iter()
        .filter(|p| p.0.op == Op::Rw as u16)
        .map(|p| p.1.len())
        .sum();
    assert_eq!(data, 10_000);
    // Credit exhausted: the device asks for an update.
    assert!(
        p.iter().any(|p| p.0.op == Op::CreditRequest as u16),
        "{p:?}"
    );
}

#[test]
fn a_slow_host_reader_holds_at_most_the_advertised_buffer_and_then_catches_up() {
    let mut h = Harness::new("slow");
    h.give_rx(64);
    let l = h.host_listen(7000);
    let mut s = h.guest_connect(9, 7000, &l);
    // The guest sends as long as its credit (ours) allows, the host reads nothing.
    let chunk = vec![0xabu8; 4096];
    let mut sent = 0u32;
    let mut fwd = 0u32;
    let mut credit_updates = 0;
    loop {
        let credit = TX_BUF_SIZE - (sent - fwd);
        if credit < 4096 {
            break;
        }
        h.send(hdr(Op::Rw, 9, 7000, 4096), &chunk);
        sent += 4096;
        for p in h.recv() {
            fwd = p.0.fwd_cnt;
            credit_updates += 1;
        }
    }
    assert!(h
        .dev()
        .conns
        .values()
        .all(|c| c.tx_buf.len() <= TX_BUF_SIZE as usize));
    assert_eq!(h.metrics().credit_violations, 0);
    // The host drains it all; fwd_cnt reaches what was sent and the guest is told.
    s.set_nonblocking(true).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..10_000 {
        match s.read(&mut buf) {
            Ok(n) => {
                assert!(buf[..n].iter().all(|&b| b == 0xab));
                total += n;
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
        h.run_wait(1);
        for p in h.recv() {
            fwd = p.0.fwd_cnt;
            credit_updates += 1;
        }
        if total == sent as usize && fwd == sent {
            break;
        }
    }
    assert_eq!(total, sent as usize);
    assert_eq!(fwd, sent);
    assert!(credit_updates >= 1);
}

#[test]
fn snapshot_quiesce_resets_connections_and_the_guest_gets_transport_reset() {
    let mut h = Harness::new("snap");
    h.give_rx(8);
    h.give_event_buffers(4);
    let l = h.host_listen(8000);
    let mut s = h.guest_connect(1, 8000, &l);
    let state = {
        let mut d = h.dev();
        d.quiesce();
        d.save_state()
    };
    assert_eq!(state.guest_cid, CID);
    assert!(state.virtio.activated);
    h.run();
    assert_eq!(h.events(), vec![0], "one TRANSPORT_RESET");
    assert_eq!(h.dev().connection_count(), 0);
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(s.read(&mut b).unwrap(), 0, "host side closed");
    assert_eq!(h.metrics().transport_resets, 1);
    // A state with another CID is refused; the right one is accepted and owes the event.
    let mut other = state.clone();
    other.guest_cid = 9;
    assert!(matches!(
        h.dev().validate_state(&other),
        Err(VsockStateError::Cid {
            saved: 9,
            configured: CID
        })
    ));
    h.dev().restore_state(&state).unwrap();
    assert!(h.dev().reset_event_pending);
    // The listener survives: a new guest connection works.
    let _s = h.guest_connect(2, 8000, &l);
}

#[test]
fn a_stale_socket_file_is_replaced_but_a_live_one_or_another_file_is_not() {
    let h = Harness::new("stale");
    let uds = h.uds.clone();
    let dir = h.dir.clone();
    // Live: refused.
    assert!(matches!(
        Vsock::new(3, &uds),
        Err(VsockError::Listen { .. })
    ));
    drop(h);
    std::fs::create_dir_all(&dir).unwrap();
    // A socket file nobody listens on: replaced.
    let l = UnixListener::bind(&uds).unwrap();
    drop(l);
    assert!(uds.exists());
    let v = Vsock::new(3, &uds).unwrap();
    assert!(UnixStream::connect(&uds).is_ok());
    drop(v);
    // A regular file: never removed.
    let file = dir.join("f");
    std::fs::write(&file, b"x").unwrap();
    assert!(Vsock::new(3, &file).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    let _ = std::fs::remove_dir_all(&dir);
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(a.as_raw_fd() >= 0);
}
