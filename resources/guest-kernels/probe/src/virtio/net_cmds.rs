//! The `net-*` commands (device chosen by `@N` like the blk commands) over a
//! tiny static-IP stack: `probe.ip=A.B.C.D/PREFIX` and `probe.gw=A.B.C.D` on
//! the command line. While waiting for anything, the probe answers ARP
//! requests for its address and ICMP echo requests to it.

use super::net::Net;
use super::netstack::{self as ns, EthFrame, Ip, IpShow, Mac, MacShow};
use super::{dma, fields, net_hostile, net_traffic, VirtioError};
use crate::arch::cpu::rdtsc;
use crate::cmdline::{param, parse_u64};
use crate::timer::{self, Deadline};
use crate::{bootinfo, sprintln};

const ARP_TRIES: u32 = 3;
pub(super) const REPLY_US: u64 = 1_000_000;
pub(super) const UDP_SPORT: u16 = 40_000;
pub(super) const UDP_CHUNK: usize = 1400;
/// Source MAC of `net-spoof` frames.
pub const FORGED_MAC: Mac = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];

pub struct Stack {
    pub net: Net,
    pub ip: Ip,
    pub prefix: u8,
    pub gw: Option<Ip>,
    ip_id: u16,
}

/// `probe.ip` and `probe.gw` from the command line.
pub fn ip_config() -> Option<(Ip, u8, Option<Ip>)> {
    let boot = bootinfo::get();
    let line = &boot.cmdline[..boot.cmdline_len];
    let v = param(line, b"probe.ip")?;
    let (addr, prefix) = match v.iter().position(|&b| b == b'/') {
        Some(i) => (&v[..i], u8::try_from(parse_u64(&v[i + 1..])?).ok()?),
        None => (v, 24),
    };
    if prefix > 32 {
        return None;
    }
    let gw = param(line, b"probe.gw").and_then(ns::parse_ip);
    Some((ns::parse_ip(addr)?, prefix, gw))
}

pub(super) fn frame_at<'a>(addr: u64, len: u64) -> &'a mut [u8] {
    // SAFETY: a tx/rx buffer of the open device that the device does not own
    // right now (taken from the free list / returned in the used ring).
    unsafe { dma::bytes_mut(addr, len as usize) }
}

impl Stack {
    pub fn new(net: Net) -> Option<Stack> {
        let (ip, prefix, gw) = ip_config()?;
        Some(Stack {
            net,
            ip,
            prefix,
            gw,
            ip_id: 1,
        })
    }

    pub(super) fn next_hop(&self, dst: Ip) -> Ip {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        let same = u32::from_be_bytes(dst) & mask == u32::from_be_bytes(self.ip) & mask;
        match self.gw {
            Some(gw) if !same => gw,
            _ => dst,
        }
    }

    /// Answers what a host expects any IP node to answer.
    fn background(&mut self, f: &EthFrame<'_>) -> Result<(), VirtioError> {
        let (mac, ip) = (self.net.mac, self.ip);
        match f.ethertype {
            ns::ETHERTYPE_ARP => {
                if let Some(a) = ns::parse_arp(f.payload) {
                    if a.op == 1 && a.tpa == ip {
                        self.net
                            .send(|b| ns::arp(frame_at(b, 60), 2, mac, ip, a.sha, a.spa) as u64)?;
                    }
                }
            }
            ns::ETHERTYPE_IPV4 => {
                let Some(p) = ns::parse_ipv4(f.payload) else {
                    return Ok(());
                };
                if p.proto != ns::PROTO_ICMP || p.dst != ip {
                    return Ok(());
                }
                let Some((8, id, seq, data)) = ns::parse_icmp_echo(p.payload) else {
                    return Ok(());
                };
                let n = data.len().min(1400);
                let (src, dst_mac) = (p.src, f.src);
                let ip_id = self.next_id();
                self.net.send(|b| {
                    let fr = frame_at(b, 1514);
                    ns::eth(fr, dst_mac, mac, ns::ETHERTYPE_IPV4);
                    let at = ns::ETH_HDR + ns::IP_HDR;
                    fr[at + ns::ICMP_HDR..at + ns::ICMP_HDR + n].copy_from_slice(&data[..n]);
                    ns::icmp_echo(&mut fr[at..], 0, id, seq, n);
                    ns::ipv4(
                        &mut fr[ns::ETH_HDR..],
                        ip,
                        src,
                        ns::PROTO_ICMP,
                        ns::ICMP_HDR + n,
                        ip_id,
                    );
                    (at + ns::ICMP_HDR + n) as u64
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn next_ip_id(&mut self) -> u16 {
        self.next_id()
    }

    fn next_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    /// Polls received frames until `want` returns `Some`, or the timeout.
    pub fn wait<T>(
        &mut self,
        timeout_us: u64,
        mut want: impl FnMut(&EthFrame<'_>) -> Option<T>,
    ) -> Result<Option<T>, VirtioError> {
        let deadline = Deadline::after_us(timeout_us);
        let mut polls = 0u32;
        loop {
            if let Some((i, addr, len)) = self.net.poll_rx() {
                let frame = frame_at(addr, len);
                let mut got = None;
                if let Some(f) = ns::parse_eth(frame) {
                    got = want(&f);
                    if got.is_none() {
                        self.background(&f)?;
                    }
                }
                self.net.recycle(i);
                if got.is_some() {
                    return Ok(got);
                }
                continue;
            }
            self.net.reclaim_tx();
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(256) {
                if self.net.t.needs_reset() {
                    return Err(VirtioError::NeedsReset);
                }
                if deadline.passed() {
                    return Ok(None);
                }
            }
        }
    }

    /// ARP for `ip` (the next hop is the caller's business): (MAC, round trip µs).
    pub fn arp(&mut self, target: Ip) -> Result<Option<(Mac, u64)>, VirtioError> {
        let (mac, ip) = (self.net.mac, self.ip);
        for _ in 0..ARP_TRIES {
            let start = rdtsc();
            self.net
                .send(|b| ns::arp(frame_at(b, 60), 1, mac, ip, [0; 6], target) as u64)?;
            let got = self.wait(REPLY_US, |f| {
                let a = ns::parse_arp(f.payload).filter(|_| f.ethertype == ns::ETHERTYPE_ARP)?;
                (a.op == 2 && a.spa == target).then_some(a.sha)
            })?;
            if let Some(m) = got {
                return Ok(Some((m, micros(rdtsc().wrapping_sub(start)))));
            }
        }
        Ok(None)
    }

    /// MAC of the next hop towards `dst`.
    pub fn route(&mut self, dst: Ip) -> Result<Option<Mac>, VirtioError> {
        let hop = self.next_hop(dst);
        Ok(self.arp(hop)?.map(|(m, _)| m))
    }

    /// Queues (does not publish) a UDP frame whose payload `fill` writes.
    #[allow(clippy::too_many_arguments)]
    pub fn udp_into(
        &mut self,
        slot: u16,
        dst_mac: Mac,
        src_mac: Mac,
        dst: Ip,
        sport: u16,
        dport: u16,
        payload: impl FnOnce(&mut [u8]) -> usize,
    ) -> u64 {
        let ip_id = self.next_id();
        let fr = frame_at(self.net.tx_buf(slot) + super::net::HDR_LEN, 1514);
        let n = payload(&mut fr[ns::ETH_HDR + ns::IP_HDR + ns::UDP_HDR..]);
        ns::udp_frame(fr, dst_mac, src_mac, self.ip, dst, sport, dport, n, ip_id) as u64
    }
}

pub fn micros(cycles: u64) -> u64 {
    timer::tsc_freq().map_or(0, |f| cycles.saturating_mul(1000) / f.khz.max(1))
}

pub fn run(name: &str, index: usize, arg: Option<&[u8]>) {
    if name == "net-hostile" {
        net_hostile::run(index, arg);
        return;
    }
    let net = match Net::open(index) {
        Ok(n) => n,
        Err(e) => {
            sprintln!("PROBE {} FAIL {} dev={}", name, e.reason(), index);
            return;
        }
    };
    if name == "net-info" {
        info(&net, index);
        net.close();
        return;
    }
    if name == "net-spoof-race" {
        let mut net = net;
        if let Err(e) = super::net_race::spoof_race(&mut net, index, arg) {
            sprintln!(
                "PROBE {} FAIL {} dev={} status={:#x}",
                name,
                e.reason(),
                index,
                net.t.status()
            );
        }
        net.close();
        return;
    }
    let t = net.t;
    let Some(mut st) = Stack::new(net) else {
        sprintln!("PROBE {} FAIL no-ip-config want=probe.ip=A.B.C.D/N", name);
        let _ = t.reset();
        return;
    };
    let result = match name {
        "net-arp" => arp(&mut st, arg),
        "net-ping" => ping(&mut st, arg),
        "net-udp-echo" => net_traffic::udp_echo(&mut st, arg),
        "net-spoof" => net_traffic::spoof(&mut st, arg),
        "net-flood" => net_traffic::flood(&mut st, arg),
        "net-responder" => net_traffic::responder(&mut st, arg),
        "net-sink" => net_traffic::sink(&mut st, arg),
        "net-mmds-get" | "net-mmds-token" | "net-mmds-until" | "net-mmds-hostile" => {
            super::mmds_cmds::run(name, &mut st, arg)
        }
        _ => {
            sprintln!("PROBE {} FAIL unknown-command", name);
            Ok(())
        }
    };
    if let Err(e) = result {
        sprintln!(
            "PROBE {} FAIL {} dev={} status={:#x}",
            name,
            e.reason(),
            index,
            st.net.t.status()
        );
    }
    st.net.close();
}

fn info(n: &Net, index: usize) {
    let link = match n.link_up() {
        Some(true) => "up",
        Some(false) => "down",
        None => "unknown",
    };
    let mtu = n.mtu().unwrap_or(0);
    crate::sprint!(
        "PROBE net-info ok dev={} addr={:#x} irq={} mac={} mac_offered={} link={} mtu={} features={:#x} accepted={:#x} rx_queue={} tx_queue={} status={:#x}",
        index,
        n.dev.base,
        n.dev.irq,
        MacShow(n.mac),
        (n.features & super::net::F_MAC != 0) as u8,
        link,
        mtu,
        n.offered,
        n.features,
        n.rx.size,
        n.tx.size,
        n.t.status()
    );
    match ip_config() {
        Some((ip, prefix, gw)) => {
            crate::sprint!(" ip={}/{}", IpShow(ip), prefix);
            match gw {
                Some(g) => sprintln!(" gw={}", IpShow(g)),
                None => sprintln!(" gw=none"),
            }
        }
        None => sprintln!(" ip=none"),
    }
}

pub(super) fn ip_arg(arg: Option<&[u8]>) -> Option<Ip> {
    let (f, _) = fields::<1>(arg);
    ns::parse_ip(f[0])
}

fn arp(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let Some(ip) = ip_arg(arg) else {
        sprintln!("PROBE net-arp FAIL bad-argument want=IP");
        return Ok(());
    };
    match st.arp(ip)? {
        Some((mac, us)) => sprintln!(
            "PROBE net-arp ok ip={} mac={} us={}",
            IpShow(ip),
            MacShow(mac),
            us
        ),
        None => sprintln!(
            "PROBE net-arp FAIL no-reply ip={} tries={}",
            IpShow(ip),
            ARP_TRIES
        ),
    }
    Ok(())
}

const PING_ID: u16 = 0x7072; // "pr"
const PING_PAYLOAD: usize = 56;

fn ping(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<2>(arg);
    let count = if n >= 2 { parse_u64(f[1]) } else { Some(1) };
    let (Some(ip), Some(count)) = (ns::parse_ip(f[0]), count) else {
        sprintln!("PROBE net-ping FAIL bad-argument want=IP[:COUNT]");
        return Ok(());
    };
    let Some(dst_mac) = st.route(ip)? else {
        sprintln!(
            "PROBE net-ping FAIL no-arp-reply ip={}",
            IpShow(st.next_hop(ip))
        );
        return Ok(());
    };
    let (mut received, mut min, mut max, mut total) = (0u64, u64::MAX, 0u64, 0u64);
    for seq in 1..=count.min(u16::MAX as u64) as u16 {
        let (mac, src) = (st.net.mac, st.ip);
        let ip_id = st.next_id();
        let start = rdtsc();
        st.net.send(|b| {
            let fr = frame_at(b, 1514);
            ns::eth(fr, dst_mac, mac, ns::ETHERTYPE_IPV4);
            let at = ns::ETH_HDR + ns::IP_HDR;
            for (k, byte) in fr[at + ns::ICMP_HDR..at + ns::ICMP_HDR + PING_PAYLOAD]
                .iter_mut()
                .enumerate()
            {
                *byte = k as u8;
            }
            ns::icmp_echo(&mut fr[at..], 8, PING_ID, seq, PING_PAYLOAD);
            ns::ipv4(
                &mut fr[ns::ETH_HDR..],
                src,
                ip,
                ns::PROTO_ICMP,
                ns::ICMP_HDR + PING_PAYLOAD,
                ip_id,
            );
            (at + ns::ICMP_HDR + PING_PAYLOAD) as u64
        })?;
        let reply = st.wait(REPLY_US, |f| {
            let p = ns::parse_ipv4(f.payload).filter(|_| f.ethertype == ns::ETHERTYPE_IPV4)?;
            if p.proto != ns::PROTO_ICMP || p.src != ip {
                return None;
            }
            let (kind, id, s, data) = ns::parse_icmp_echo(p.payload)?;
            let intact =
                data.len() == PING_PAYLOAD && data.iter().enumerate().all(|(k, &b)| b == k as u8);
            (kind == 0 && id == PING_ID && s == seq && intact).then_some(p.ttl)
        })?;
        match reply {
            Some(ttl) => {
                let us = micros(rdtsc().wrapping_sub(start));
                sprintln!("PROBE net-ping-reply seq={} ttl={} us={}", seq, ttl, us);
                received += 1;
                min = min.min(us);
                max = max.max(us);
                total += us;
            }
            None => sprintln!("PROBE net-ping-timeout seq={}", seq),
        }
    }
    let status = if received == count { "ok" } else { "FAIL" };
    sprintln!(
        "PROBE net-ping {} ip={} sent={} received={} min_us={} avg_us={} max_us={}",
        status,
        IpShow(ip),
        count,
        received,
        if received == 0 { 0 } else { min },
        total / received.max(1),
        max
    );
    Ok(())
}
