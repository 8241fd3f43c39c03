//! The MMDS endpoint of one network interface: the guest's frames for the MMDS address come
//! in, frames for the guest go out; nothing of it reaches the tap.
//!
//! Ethernet and ARP are handled here (an ARP request for the address is answered with
//! [`MMDS_MAC`]); IPv4 packets to the address go to smoltcp on an IP medium, which
//! terminates TCP port 80 (anything else for the address is dropped and counted). The IP
//! packets smoltcp sends are wrapped for the MAC the guest last wrote from, so the stack
//! needs no neighbour resolution toward the guest.
//!
//! Bounded by construction, whatever the guest does:
//! - at most [`MAX_CONNECTIONS`] sockets, each with fixed buffers ([`SOCKET_RX`] bytes for a
//!   request head, [`SOCKET_TX`] bytes in flight); a SYN finding no free socket resets the
//!   least recently active connection (a SYN flood only churns the same sockets);
//! - a request head that does not fit [`SOCKET_RX`] is answered 400 and the connection closed
//!   (a 1 MiB request costs nothing but its frames);
//! - responses not yet taken by a guest that never reads count toward [`RESPONSE_BUDGET`]:
//!   past it no further request is answered until some are taken;
//! - at most [`OUT_QUEUE`] frames wait for the guest's receive buffers; past that smoltcp
//!   keeps the data (and ARP replies are dropped).
//!
//! The stack runs when the guest sends it a frame or takes one: its timers (retransmission,
//! TIME-WAIT) advance with the guest's traffic, which is all a local, lossless link needs.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::http::{self, Parsed, Response};
use crate::metrics::METRICS;
use crate::service::Mmds;

/// The MAC the MMDS address answers ARP with (Firecracker's choice: locally administered).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// Most concurrent connections per interface.
pub const MAX_CONNECTIONS: usize = 32;
/// Receive buffer per connection: the largest request head (and window) accepted.
pub const SOCKET_RX: usize = 4096;
/// Send buffer per connection.
pub const SOCKET_TX: usize = 8192;
/// Frames waiting for the guest.
pub const OUT_QUEUE: usize = 64;
/// Response bytes held for guests that do not read, beyond which requests wait.
pub const RESPONSE_BUDGET: usize = 1 << 20;
/// Requests answered per connection per turn (a pipelining guest cannot hog the loop).
const REQUESTS_PER_TURN: usize = 8;
/// The HTTP port.
const PORT: u16 = 80;
/// IP MTU toward the guest.
const IP_MTU: usize = 1500;
/// Connections idle this long are dropped when the stack next runs.
const IDLE_TIMEOUT: SmolDuration = SmolDuration::from_secs(60);

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// Bytes of a frame [`MmdsStack::wants`] looks at: an ARP packet's target address ends there.
pub const HEAD_LEN: usize = ETH_HDR + 28;

/// Where the endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackConfig {
    pub ipv4: Ipv4Addr,
}

/// The link between smoltcp and the guest: one IP packet in, Ethernet frames out.
struct Link {
    rx: Option<Vec<u8>>,
    out: VecDeque<Vec<u8>>,
    guest_mac: [u8; 6],
}

struct Rx(Vec<u8>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct Tx<'a> {
    out: &'a mut VecDeque<Vec<u8>>,
    guest_mac: [u8; 6],
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; ETH_HDR + len];
        write_eth_header(&mut frame, self.guest_mac, ETHERTYPE_IPV4);
        let r = f(&mut frame[ETH_HDR..]);
        self.out.push_back(frame);
        r
    }
}

impl Device for Link {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.take()?;
        Some((
            Rx(packet),
            Tx {
                out: &mut self.out,
                guest_mac: self.guest_mac,
            },
        ))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<Tx<'_>> {
        if self.out.len() >= OUT_QUEUE {
            return None;
        }
        Some(Tx {
            out: &mut self.out,
            guest_mac: self.guest_mac,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = IP_MTU;
        // The guest's frames come from its memory, not a wire: with checksum offload they
        // carry partial checksums (VIRTIO_NET_HDR_F_NEEDS_CSUM), so never verify; always
        // compute ours (the guest may not have acked checksum offload on receive).
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}

fn write_eth_header(frame: &mut [u8], dst: [u8; 6], ethertype: u16) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&MMDS_MAC);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// One connection's HTTP state.
#[derive(Default)]
struct Conn {
    /// Request bytes received and not yet answered.
    req: Vec<u8>,
    /// The response being written and how much of it the socket took.
    resp: Vec<u8>,
    sent: usize,
    close_after: bool,
    closing: bool,
    /// Counted in `connections_created` (a socket in use, past LISTEN).
    open: bool,
    last_active: Option<Instant>,
}

/// The MMDS endpoint of one interface.
pub struct MmdsStack {
    ip: Ipv4Addr,
    iface: Interface,
    link: Link,
    sockets: SocketSet<'static>,
    handles: Vec<SocketHandle>,
    conns: Vec<Conn>,
    service: Arc<Mutex<Mmds>>,
    epoch: Instant,
    /// Bytes of responses not yet in a socket buffer, all connections.
    pending: usize,
    /// Something may be ready to send (a frame came in, or the queue had been full).
    dirty: bool,
}

impl std::fmt::Debug for MmdsStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdsStack")
            .field("ip", &self.ip)
            .field("queued", &self.link.out.len())
            .finish_non_exhaustive()
    }
}

impl MmdsStack {
    /// An endpoint at `cfg.ipv4` answering from `service`.
    pub fn new(cfg: &StackConfig, service: Arc<Mutex<Mmds>>) -> Self {
        let epoch = Instant::now();
        let mut link = Link {
            rx: None,
            out: VecDeque::with_capacity(OUT_QUEUE),
            guest_mac: [0xff; 6],
        };
        let mut config = Config::new(HardwareAddress::Ip);
        // TCP initial sequence numbers: unpredictable to the guest.
        let mut seed = [0u8; 8];
        if crate::token::fill_random(&mut seed).is_err() {
            seed = u64::try_from(epoch.elapsed().as_nanos())
                .unwrap_or_default()
                .to_le_bytes();
        }
        config.random_seed = u64::from_le_bytes(seed);
        let mut iface = Interface::new(config, &mut link, SmolInstant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // One address on an empty list cannot overflow it.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.ipv4), 32));
        });
        // Every guest address is reached directly (the frames go to the MAC it wrote from):
        // the gateway is never resolved on an IP medium.
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(169, 254, 0, 1));
        let mut sockets = SocketSet::new(Vec::with_capacity(MAX_CONNECTIONS));
        let mut handles = Vec::with_capacity(MAX_CONNECTIONS);
        let mut conns = Vec::with_capacity(MAX_CONNECTIONS);
        for _ in 0..MAX_CONNECTIONS {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; SOCKET_RX]),
                tcp::SocketBuffer::new(vec![0; SOCKET_TX]),
            );
            s.set_ack_delay(None);
            s.set_nagle_enabled(false);
            // Cannot fail on a fresh socket with a non-zero port.
            let _ = s.listen(PORT);
            handles.push(sockets.add(s));
            conns.push(Conn::default());
        }
        Self {
            ip: cfg.ipv4,
            iface,
            link,
            sockets,
            handles,
            conns,
            service,
            epoch,
            pending: 0,
            dirty: false,
        }
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ip
    }

    /// Whether a guest frame is for the MMDS, from its first bytes (up to [`HEAD_LEN`]):
    /// an ARP packet whose target is the MMDS address, or an IPv4 packet to it.
    pub fn wants(&self, head: &[u8]) -> bool {
        if head.len() < ETH_HDR {
            return false;
        }
        let ip = self.ip.octets();
        match u16::from_be_bytes([head[12], head[13]]) {
            ETHERTYPE_ARP => head.get(38..42) == Some(&ip[..]),
            ETHERTYPE_IPV4 => head.get(30..34) == Some(&ip[..]),
            _ => false,
        }
    }

    /// Takes one guest frame that [`Self::wants`] accepted (a copy: the guest cannot change
    /// it any more).
    pub fn handle_frame(&mut self, frame: &[u8]) {
        METRICS.rx_accepted.inc();
        if !self.wants(frame) {
            METRICS.rx_accepted_unusual.inc();
            return;
        }
        if u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_ARP {
            self.answer_arp(frame);
            return;
        }
        let Some(packet) = tcp_packet(&frame[ETH_HDR..]) else {
            METRICS.rx_accepted_unusual.inc();
            return;
        };
        self.link.guest_mac.copy_from_slice(&frame[6..12]);
        if is_syn_to_port(packet, PORT) {
            self.make_room();
        }
        self.link.rx = Some(packet.to_vec());
        self.run();
    }

    /// Whether frames for the guest are (or may become) ready.
    pub fn has_frames(&self) -> bool {
        self.dirty || !self.link.out.is_empty()
    }

    /// The next frame for the guest (an Ethernet frame, without any virtio header).
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.link.out.is_empty() && self.dirty {
            self.run();
        }
        if self.link.out.len() >= OUT_QUEUE {
            // smoltcp may have been refused a transmit: run again once room is made.
            self.dirty = true;
        }
        let frame = self.link.out.pop_front()?;
        METRICS.tx_frames.inc();
        METRICS.tx_bytes.add(frame.len() as u64);
        Some(frame)
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(
            i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX),
        )
    }

    /// Ingress, then the HTTP work, then egress of what it produced.
    fn run(&mut self) {
        self.dirty = false;
        let now = self.now();
        self.iface.poll(now, &mut self.link, &mut self.sockets);
        self.serve();
        self.iface.poll(now, &mut self.link, &mut self.sockets);
        // A full queue may have stopped smoltcp: try again when the guest takes frames.
        if self.link.out.len() >= OUT_QUEUE {
            self.dirty = true;
        }
    }

    fn answer_arp(&mut self, frame: &[u8]) {
        let arp = &frame[ETH_HDR..];
        // Ethernet/IPv4 request: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
        if arp[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
            METRICS.rx_accepted_unusual.inc();
            return;
        }
        if self.link.out.len() >= OUT_QUEUE {
            METRICS.tx_dropped_frames.inc();
            return;
        }
        let mut sender_mac = [0u8; 6];
        sender_mac.copy_from_slice(&arp[8..14]);
        let mut reply = vec![0u8; ETH_HDR + 28];
        write_eth_header(&mut reply, sender_mac, ETHERTYPE_ARP);
        let r = &mut reply[ETH_HDR..];
        r[0..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        r[8..14].copy_from_slice(&MMDS_MAC);
        r[14..18].copy_from_slice(&self.ip.octets());
        r[18..28].copy_from_slice(&arp[8..18]);
        self.link.out.push_back(reply);
    }

    /// Before a SYN: if no socket listens, reset the least recently active connection and
    /// listen on it again.
    fn make_room(&mut self) {
        let listening = self
            .handles
            .iter()
            .any(|h| self.sockets.get::<tcp::Socket>(*h).is_listening());
        if listening {
            return;
        }
        let Some(victim) = (0..self.conns.len()).min_by_key(|i| self.conns[*i].last_active) else {
            return;
        };
        let handle = self.handles[victim];
        self.sockets.get_mut::<tcp::Socket>(handle).abort();
        // Send the reset now, before the socket forgets its peer by listening again.
        let now = self.now();
        self.iface.poll(now, &mut self.link, &mut self.sockets);
        METRICS.connections_evicted.inc();
        self.recycle(victim);
    }

    /// Frees connection `i` and puts its socket back to LISTEN.
    fn recycle(&mut self, i: usize) {
        let c = std::mem::take(&mut self.conns[i]);
        self.pending -= c.resp.len() - c.sent;
        if c.open {
            METRICS.connections_destroyed.inc();
        }
        let s = self.sockets.get_mut::<tcp::Socket>(self.handles[i]);
        if s.state() != tcp::State::Closed {
            s.abort();
        }
        let _ = s.listen(PORT);
    }

    /// Reads requests, answers them and writes responses, for every connection.
    fn serve(&mut self) {
        let now = Instant::now();
        for i in 0..self.handles.len() {
            let state = self.sockets.get::<tcp::Socket>(self.handles[i]).state();
            match state {
                tcp::State::Listen => continue,
                tcp::State::Closed => {
                    self.recycle(i);
                    continue;
                }
                tcp::State::TimeWait => {
                    // Our response is delivered and both sides closed: the slot is free.
                    self.recycle(i);
                    continue;
                }
                _ => {}
            }
            if !self.conns[i].open {
                self.conns[i].open = true;
                self.conns[i].last_active = Some(now);
                METRICS.connections_created.inc();
                let s = self.sockets.get_mut::<tcp::Socket>(self.handles[i]);
                s.set_timeout(Some(IDLE_TIMEOUT));
            }
            self.serve_one(i, now);
        }
    }

    fn serve_one(&mut self, i: usize, now: Instant) {
        let handle = self.handles[i];
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let conn = &mut self.conns[i];
        // Take what fits of the request bytes.
        while socket.can_recv() && conn.req.len() < SOCKET_RX {
            let room = SOCKET_RX - conn.req.len();
            let got = socket.recv(|buf| {
                let n = buf.len().min(room);
                (n, buf[..n].to_vec())
            });
            match got {
                Ok(bytes) if !bytes.is_empty() => {
                    conn.req.extend_from_slice(&bytes);
                    conn.last_active = Some(now);
                }
                _ => break,
            }
        }
        for _ in 0..REQUESTS_PER_TURN {
            if !conn.resp.is_empty() || conn.closing || self.pending >= RESPONSE_BUDGET {
                break;
            }
            let (response, http10, close) = match http::parse(&conn.req) {
                Ok(Parsed::Partial) if conn.req.len() >= SOCKET_RX => {
                    (bad_request(&http::ParseError::TooLarge), false, true)
                }
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Complete(req, used)) => {
                    conn.req.drain(..used);
                    let mut service = self.service.lock().unwrap_or_else(|e| e.into_inner());
                    (service.respond(&req, now), req.http10, req.close)
                }
                Err(e) => (bad_request(&e), false, true),
            };
            if close {
                conn.req.clear();
            }
            conn.resp = response.encode(http10, close);
            conn.sent = 0;
            conn.close_after = close;
            self.pending += conn.resp.len();
            Self::write_out(socket, conn, &mut self.pending);
        }
        Self::write_out(socket, conn, &mut self.pending);
        // The peer finished sending and has nothing more for us to answer.
        if socket.state() == tcp::State::CloseWait && conn.resp.is_empty() && !conn.closing {
            let complete = matches!(http::parse(&conn.req), Ok(Parsed::Complete(..)));
            if !complete {
                socket.close();
                conn.closing = true;
            }
        }
    }

    fn write_out(socket: &mut tcp::Socket<'static>, conn: &mut Conn, pending: &mut usize) {
        if conn.resp.is_empty() {
            return;
        }
        if conn.sent < conn.resp.len() && socket.can_send() {
            if let Ok(n) = socket.send_slice(&conn.resp[conn.sent..]) {
                conn.sent += n;
                *pending -= n;
            }
        }
        if conn.sent == conn.resp.len() {
            conn.resp = Vec::new();
            conn.sent = 0;
            if conn.close_after {
                socket.close();
                conn.closing = true;
            }
        }
    }
}

/// The answer to bytes that are not a request we can serve (counted here: the service never
/// sees them).
fn bad_request(e: &http::ParseError) -> Response {
    METRICS.rx_count.inc();
    METRICS.rx_errors.inc();
    Response::text(400, e.to_string())
}

/// The IPv4 packet in `ip` (padding cut) if it is a well-formed, unfragmented TCP packet.
fn tcp_packet(ip: &[u8]) -> Option<&[u8]> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ihl < 20 || total < ihl + 20 || total > ip.len() || ip[9] != 6 || fragmented {
        return None;
    }
    Some(&ip[..total])
}

/// Whether an IPv4/TCP packet opens a connection (SYN without ACK) to `port`.
fn is_syn_to_port(ip: &[u8], port: u16) -> bool {
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let Some(tcp) = ip.get(ihl..ihl + 20) else {
        return false;
    };
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let flags = tcp[13];
    dport == port && flags & 0x02 != 0 && flags & 0x10 == 0
}

#[cfg(test)]
#[path = "stack_tests.rs"]
mod tests;
