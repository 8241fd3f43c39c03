//! Just enough TCP for one HTTP exchange per connection: a handshake (MSS option only),
//! stop-and-wait sends with up to 3 retransmissions, in-order receive into a fixed buffer
//! (out-of-order segments are dropped and re-acked), FIN both ways. No window scaling, no
//! SACK, no timers beyond the per-wait deadline. Checksums are complete (no offloads).

use super::net_cmds::{Stack, REPLY_US};
use super::netstack::{self as ns, EthFrame, Ip, Mac};
use super::VirtioError;
use crate::arch::cpu::rdtsc;

pub const PROTO_TCP: u8 = 6;
const TCP_HDR: usize = 20;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
/// Our advertised window.
const WINDOW: u16 = 8192;
/// Largest payload per segment we send.
pub const MSS: usize = 1400;
/// Bytes of the peer's stream kept (the rest is acked and counted, not kept).
pub const RX_KEEP: usize = 4096;
const TRIES: u32 = 3;

/// One connection from `sport` to `dst:dport`.
pub struct Conn {
    pub dst: Ip,
    pub dst_mac: Mac,
    pub sport: u16,
    pub dport: u16,
    pub snd_nxt: u32,
    /// Highest sequence number the peer acknowledged.
    pub snd_una: u32,
    pub rcv_nxt: u32,
    pub rx: [u8; RX_KEEP],
    pub rx_len: usize,
    /// Bytes received in all (kept or not).
    pub rx_total: usize,
    pub peer_fin: bool,
    pub reset: bool,
}

fn put16(b: &mut [u8], v: u16) {
    b[..2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], v: u32) {
    b[..4].copy_from_slice(&v.to_be_bytes());
}

fn get32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Sends one segment (a SYN carries the MSS option).
#[allow(clippy::too_many_arguments)]
pub fn send_segment(
    st: &mut Stack,
    dst_mac: Mac,
    dst: Ip,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Result<(), VirtioError> {
    let (mac, src) = (st.net.mac, st.ip);
    let ip_id = st.next_ip_id();
    let opt = if flags & SYN != 0 { 4 } else { 0 };
    let hdr = TCP_HDR + opt;
    let len = hdr + payload.len();
    st.net.send(|b| {
        let fr = super::net_cmds::frame_at(b, 1514);
        ns::eth(fr, dst_mac, mac, ns::ETHERTYPE_IPV4);
        let t = &mut fr[ns::ETH_HDR + ns::IP_HDR..];
        put16(&mut t[0..], sport);
        put16(&mut t[2..], dport);
        put32(&mut t[4..], seq);
        put32(&mut t[8..], ack);
        t[12] = ((hdr / 4) as u8) << 4;
        t[13] = flags;
        put16(&mut t[14..], WINDOW);
        put16(&mut t[16..], 0);
        put16(&mut t[18..], 0);
        if opt != 0 {
            t[20..24].copy_from_slice(&[2, 4, (MSS >> 8) as u8, MSS as u8]);
        }
        t[hdr..len].copy_from_slice(payload);
        let mut acc = ns::sum(&src, 0);
        acc = ns::sum(&dst, acc);
        acc = acc
            .wrapping_add(u32::from(PROTO_TCP))
            .wrapping_add(len as u32);
        let c = ns::fold(ns::sum(&t[..len], acc));
        put16(&mut t[16..], c);
        ns::ipv4(&mut fr[ns::ETH_HDR..], src, dst, PROTO_TCP, len, ip_id);
        (ns::ETH_HDR + ns::IP_HDR + len) as u64
    })
}

/// A parsed segment addressed to us.
pub struct Seg<'a> {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
}

/// The TCP segment in `f` from `from`, if it is one (checksum verified).
pub fn parse_segment<'a>(f: &'a EthFrame<'a>, from: Ip, to: Ip) -> Option<Seg<'a>> {
    if f.ethertype != ns::ETHERTYPE_IPV4 {
        return None;
    }
    let p = ns::parse_ipv4(f.payload)?;
    if p.proto != PROTO_TCP || p.src != from || p.dst != to || p.payload.len() < TCP_HDR {
        return None;
    }
    let t = p.payload;
    let mut acc = ns::sum(&p.src, 0);
    acc = ns::sum(&p.dst, acc);
    acc = acc
        .wrapping_add(u32::from(PROTO_TCP))
        .wrapping_add(t.len() as u32);
    if ns::fold(ns::sum(t, acc)) != 0 {
        return None;
    }
    let off = usize::from(t[12] >> 4) * 4;
    if off < TCP_HDR || off > t.len() {
        return None;
    }
    Some(Seg {
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: get32(&t[4..]),
        ack: get32(&t[8..]),
        flags: t[13],
        payload: &t[off..],
    })
}

fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Conn {
    /// Opens a connection (3 SYNs, 1 s each). `None`: refused or no answer.
    pub fn connect(
        st: &mut Stack,
        dst_mac: Mac,
        dst: Ip,
        sport: u16,
        dport: u16,
    ) -> Result<Option<Conn>, VirtioError> {
        let isn = rdtsc() as u32;
        let me = st.ip;
        for _ in 0..TRIES {
            send_segment(st, dst_mac, dst, sport, dport, isn, 0, SYN, &[])?;
            let got = st.wait(REPLY_US, |f| {
                let s = parse_segment(f, dst, me)?;
                if s.sport != dport || s.dport != sport {
                    return None;
                }
                if s.flags & RST != 0 {
                    return Some(None);
                }
                (s.flags & (SYN | ACK) == SYN | ACK && s.ack == isn.wrapping_add(1))
                    .then_some(Some(s.seq))
            })?;
            match got {
                Some(Some(peer_isn)) => {
                    let c = Conn {
                        dst,
                        dst_mac,
                        sport,
                        dport,
                        snd_nxt: isn.wrapping_add(1),
                        snd_una: isn.wrapping_add(1),
                        rcv_nxt: peer_isn.wrapping_add(1),
                        rx: [0; RX_KEEP],
                        rx_len: 0,
                        rx_total: 0,
                        peer_fin: false,
                        reset: false,
                    };
                    c.ack(st)?;
                    return Ok(Some(c));
                }
                Some(None) => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// Sends one segment of this connection: sequence number `seq`, acknowledging what
    /// has arrived so far.
    fn segment(
        &self,
        st: &mut Stack,
        seq: u32,
        flags: u8,
        payload: &[u8],
    ) -> Result<(), VirtioError> {
        send_segment(
            st,
            self.dst_mac,
            self.dst,
            self.sport,
            self.dport,
            seq,
            self.rcv_nxt,
            flags,
            payload,
        )
    }

    fn ack(&self, st: &mut Stack) -> Result<(), VirtioError> {
        self.segment(st, self.snd_nxt, ACK, &[])
    }

    /// Takes one segment of this connection within `timeout_us`; false on timeout.
    fn pump(&mut self, st: &mut Stack, timeout_us: u64) -> Result<bool, VirtioError> {
        let (dst, me, sport, dport) = (self.dst, st.ip, self.sport, self.dport);
        let mut reply = false;
        let got = st.wait(timeout_us, |f| {
            let s = parse_segment(f, dst, me)?;
            if s.sport != dport || s.dport != sport {
                return None;
            }
            if s.flags & RST != 0 {
                self.reset = true;
                return Some(());
            }
            if s.flags & ACK != 0 && after(s.ack, self.snd_una) {
                self.snd_una = s.ack;
            }
            if s.seq == self.rcv_nxt && !self.peer_fin {
                let n = s.payload.len();
                let keep = n.min(RX_KEEP - self.rx_len);
                self.rx[self.rx_len..self.rx_len + keep].copy_from_slice(&s.payload[..keep]);
                self.rx_len += keep;
                self.rx_total += n;
                self.rcv_nxt = self.rcv_nxt.wrapping_add(n as u32);
                if s.flags & FIN != 0 {
                    self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                    self.peer_fin = true;
                }
                reply = n > 0 || s.flags & FIN != 0;
            } else if !s.payload.is_empty() || s.flags & FIN != 0 {
                // Out of order or a retransmission: say where we are.
                reply = true;
            }
            Some(())
        })?;
        if reply {
            self.ack(st)?;
        }
        Ok(got.is_some())
    }

    /// Sends `data` in MSS-sized segments, each acknowledged before the next (3 tries).
    /// Returns false if the peer stopped acknowledging, reset, or closed.
    pub fn send_all(&mut self, st: &mut Stack, data: &[u8]) -> Result<bool, VirtioError> {
        for chunk in data.chunks(MSS) {
            let seq = self.snd_nxt;
            let end = seq.wrapping_add(chunk.len() as u32);
            let mut acked = false;
            for _ in 0..TRIES {
                self.segment(st, seq, PSH | ACK, chunk)?;
                let deadline = crate::timer::Deadline::after_us(REPLY_US);
                while !deadline.passed() && !self.reset && after(end, self.snd_una) {
                    if !self.pump(st, REPLY_US)? {
                        break;
                    }
                }
                if self.reset || self.peer_fin {
                    return Ok(false);
                }
                if !after(end, self.snd_una) {
                    acked = true;
                    break;
                }
            }
            if !acked {
                return Ok(false);
            }
            self.snd_nxt = end;
        }
        Ok(true)
    }

    /// Receives until the peer closes (or resets), or `timeout_us` passes with nothing.
    pub fn recv_to_close(&mut self, st: &mut Stack, timeout_us: u64) -> Result<(), VirtioError> {
        while !self.peer_fin && !self.reset {
            if !self.pump(st, timeout_us)? {
                break;
            }
        }
        Ok(())
    }

    /// Sends our FIN (after the peer's, in an HTTP exchange) and waits for its ACK briefly.
    pub fn close(&mut self, st: &mut Stack) -> Result<(), VirtioError> {
        if self.reset {
            return Ok(());
        }
        self.segment(st, self.snd_nxt, FIN | ACK, &[])?;
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        let deadline = crate::timer::Deadline::after_us(REPLY_US);
        while !deadline.passed() && !self.reset && after(self.snd_nxt, self.snd_una) {
            if !self.pump(st, REPLY_US)? {
                break;
            }
        }
        Ok(())
    }

    /// The bytes received (as kept).
    pub fn received(&self) -> &[u8] {
        &self.rx[..self.rx_len]
    }
}
