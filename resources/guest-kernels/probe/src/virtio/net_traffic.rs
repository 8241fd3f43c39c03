//! The UDP traffic commands over the probe's static-IP stack (see `net_cmds`):
//! `net-udp-echo`, `net-spoof`, `net-flood`, `net-responder`, `net-sink`.

use super::net_cmds::{ip_arg, Stack, FORGED_MAC, REPLY_US, UDP_CHUNK, UDP_SPORT};
use super::netstack::{self as ns, Ip, IpShow, MacShow};
use super::{fields, VirtioError};
use crate::arch::cpu::rdtsc;
use crate::cmdline::parse_u64;
use crate::sprintln;
use crate::timer::{self, Deadline};

/// Byte `i` of the `net-udp-echo` stream.
pub fn udp_payload_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// The `net-udp-echo` stream repeats every 251 bytes.
const PATTERN_PERIOD: u64 = 251;

/// `a == b`, eight bytes per step (a byte loop costs too much emulated).
fn words_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x = u64::from_ne_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_ne_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        if x != y {
            return false;
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .all(|(x, y)| x == y)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

fn ip_port_arg(arg: Option<&[u8]>, want: usize) -> Option<(Ip, u16, [u64; 2])> {
    let (f, n) = fields::<4>(arg);
    if n != want {
        return None;
    }
    let ip = ns::parse_ip(f[0])?;
    let port = u16::try_from(parse_u64(f[1])?).ok()?;
    let mut rest = [0u64; 2];
    for (k, r) in rest.iter_mut().enumerate().take(want - 2) {
        *r = parse_u64(f[2 + k])?;
    }
    Some((ip, port, rest))
}

pub(super) fn udp_echo(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let Some((ip, port, [bytes, _])) = ip_port_arg(arg, 3) else {
        sprintln!("PROBE net-udp-echo FAIL bad-argument want=IP:PORT:BYTES");
        return Ok(());
    };
    let Some(dst_mac) = st.route(ip)? else {
        sprintln!(
            "PROBE net-udp-echo FAIL no-arp-reply ip={}",
            IpShow(st.next_hop(ip))
        );
        return Ok(());
    };
    let mac = st.net.mac;
    // Ring-0 code is emulated under PVM (~1 µs an instruction): the stream is
    // copied from a table and compared a word at a time, not computed per byte.
    let mut pattern = [0u8; PATTERN_PERIOD as usize + UDP_CHUNK];
    for (k, b) in pattern.iter_mut().enumerate() {
        *b = udp_payload_byte(k as u64);
    }
    let (mut off, mut datagrams, mut retries, mut hash) = (0u64, 0u64, 0u64, FNV_OFFSET);
    while off < bytes {
        let n = (bytes - off).min(UDP_CHUNK as u64) as usize;
        let mut answered = false;
        for _ in 0..3 {
            let slot = st.net.tx_slot(REPLY_US)?;
            let want = &pattern[(off % PATTERN_PERIOD) as usize..][..n];
            let len = st.udp_into(slot, dst_mac, mac, ip, UDP_SPORT, port, |p| {
                p[..n].copy_from_slice(want);
                n
            });
            st.net.queue_tx(slot, len);
            st.net.kick_tx();
            let echoed = st.wait(REPLY_US, |f| {
                let p = ns::parse_ipv4(f.payload).filter(|_| f.ethertype == ns::ETHERTYPE_IPV4)?;
                let u = ns::parse_udp(p.payload).filter(|_| p.proto == ns::PROTO_UDP)?;
                if p.src != ip || u.sport != port || u.dport != UDP_SPORT || u.payload.len() != n {
                    return None;
                }
                words_equal(u.payload, want).then_some(())
            })?;
            if echoed.is_some() {
                answered = true;
                break;
            }
            retries += 1;
        }
        if !answered {
            sprintln!(
                "PROBE net-udp-echo FAIL no-matching-echo offset={} ip={} port={}",
                off,
                IpShow(ip),
                port
            );
            return Ok(());
        }
        for &b in &pattern[(off % PATTERN_PERIOD) as usize..][..n] {
            hash = (hash ^ b as u64).wrapping_mul(FNV_PRIME);
        }
        off += n as u64;
        datagrams += 1;
    }
    sprintln!(
        "PROBE net-udp-echo ok ip={} port={} bytes={} datagrams={} retries={} fnv1a64={:#x}",
        IpShow(ip),
        port,
        bytes,
        datagrams,
        retries,
        hash
    );
    Ok(())
}

pub(super) fn spoof(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let Some(ip) = ip_arg(arg) else {
        sprintln!("PROBE net-spoof FAIL bad-argument want=IP");
        return Ok(());
    };
    // Resolve with the real MAC; a target that does not answer gets a broadcast.
    let dst_mac = st.route(ip)?;
    let slot = st.net.tx_slot(REPLY_US)?;
    let len = st.udp_into(
        slot,
        dst_mac.unwrap_or(ns::BROADCAST),
        FORGED_MAC,
        ip,
        UDP_SPORT,
        9,
        |p| {
            p[..16].copy_from_slice(b"probe-spoof-test");
            16
        },
    );
    st.net.queue_tx(slot, len);
    st.net.kick_tx();
    // The device must still complete the buffer (dropping the frame is its call).
    let deadline = Deadline::after_us(REPLY_US);
    while st.net.tx.outstanding() > 0 && !deadline.passed() {
        st.net.reclaim_tx();
    }
    sprintln!(
        "PROBE net-spoof ok ip={} forged_mac={} real_mac={} arp={} tx_completed={}",
        IpShow(ip),
        MacShow(FORGED_MAC),
        MacShow(st.net.mac),
        if dst_mac.is_some() { "reply" } else { "none" },
        (st.net.tx.outstanding() == 0) as u8
    );
    Ok(())
}

pub(super) fn flood(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let Some((ip, port, [seconds, size])) = ip_port_arg(arg, 4) else {
        sprintln!("PROBE net-flood FAIL bad-argument want=IP:PORT:SECONDS:SIZE");
        return Ok(());
    };
    if size as usize > 1472 {
        sprintln!("PROBE net-flood FAIL bad-size size={} max=1472", size);
        return Ok(());
    }
    let Some(freq) = timer::tsc_freq() else {
        sprintln!("PROBE net-flood FAIL no-tsc-calibration");
        return Ok(());
    };
    let dst_mac = st.route(ip)?.unwrap_or(ns::BROADCAST);
    let mac = st.net.mac;
    // Every tx buffer holds the same frame, built once; the loop only pushes.
    let mut len = 0;
    for slot in 0..st.net.tx_count {
        len = st.udp_into(slot, dst_mac, mac, ip, UDP_SPORT, port, |p| {
            p[..size as usize].fill(0x5a);
            size as usize
        });
    }
    let ticks = seconds.saturating_mul(freq.khz).saturating_mul(1000);
    let start = rdtsc();
    let (mut sent, mut done) = (0u64, 0u64);
    while rdtsc().wrapping_sub(start) < ticks {
        let mut pushed = false;
        while let Some((id, _)) = st.net.tx.pop_used() {
            done += 1;
            st.net.queue_tx(id as u16, len);
            sent += 1;
            pushed = true;
        }
        if sent == 0 {
            for slot in 0..st.net.tx_count {
                st.net.queue_tx(slot, len);
            }
            sent = st.net.tx_count as u64;
            pushed = true;
        }
        if pushed {
            st.net.kick_tx();
        }
        // Drop whatever arrives meanwhile, keeping the rx ring stocked.
        while let Some((i, _, _)) = st.net.poll_rx() {
            st.net.recycle(i);
        }
    }
    let cycles = rdtsc().wrapping_sub(start).max(1);
    // Let the tail drain before the reset.
    let deadline = Deadline::after_us(REPLY_US);
    while st.net.tx.outstanding() > 0 && !deadline.passed() {
        if st.net.tx.pop_used().is_some() {
            done += 1;
        }
    }
    let frame_bytes = done * len;
    let per_s = |v: u64| (v as u128 * freq.khz as u128 * 1000 / cycles as u128) as u64;
    sprintln!(
        "PROBE net-flood ok ip={} port={} size={} frames={} bytes={} tsc_cycles={} frames_per_s={} bytes_per_s={}",
        IpShow(ip),
        port,
        size,
        done,
        frame_bytes,
        cycles,
        per_s(done),
        per_s(frame_bytes)
    );
    Ok(())
}

/// `net-responder:SECONDS`: only answers ARP and ICMP echo for our address (the
/// background duty of every wait) for SECONDS, so that another node can ping us.
pub(super) fn responder(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<1>(arg);
    let Some(seconds) = (n == 1).then(|| parse_u64(f[0])).flatten() else {
        sprintln!("PROBE net-responder FAIL bad-argument want=SECONDS");
        return Ok(());
    };
    let mut frames = 0u64;
    st.wait(seconds.saturating_mul(1_000_000), |_| {
        frames += 1;
        None::<()>
    })?;
    sprintln!(
        "PROBE net-responder ok ip={} seconds={} frames={}",
        IpShow(st.ip),
        seconds,
        frames
    );
    Ok(())
}

/// `net-sink:PORT:SECONDS`: counts UDP datagrams to PORT for SECONDS (from the
/// first one), for host-to-guest throughput; `bytes` are Ethernet frame bytes.
pub(super) fn sink(st: &mut Stack, arg: Option<&[u8]>) -> Result<(), VirtioError> {
    let (f, n) = fields::<2>(arg);
    let parsed = (n == 2)
        .then(|| Some((u16::try_from(parse_u64(f[0])?).ok()?, parse_u64(f[1])?)))
        .flatten();
    let Some((port, seconds)) = parsed else {
        sprintln!("PROBE net-sink FAIL bad-argument want=PORT:SECONDS");
        return Ok(());
    };
    let Some(freq) = timer::tsc_freq() else {
        sprintln!("PROBE net-sink FAIL no-tsc-calibration");
        return Ok(());
    };
    let me = st.ip;
    let (mut frames, mut bytes, mut first, mut last) = (0u64, 0u64, 0u64, 0u64);
    let ticks = seconds.saturating_mul(freq.khz).saturating_mul(1000);
    // The window opens at the first datagram; until then wait up to 30 s more.
    st.wait(seconds.saturating_add(30).saturating_mul(1_000_000), |f| {
        let p = ns::parse_ipv4(f.payload).filter(|_| f.ethertype == ns::ETHERTYPE_IPV4)?;
        let u = ns::parse_udp(p.payload).filter(|_| p.proto == ns::PROTO_UDP)?;
        if p.dst != me || u.dport != port {
            return None;
        }
        let now = rdtsc();
        if frames == 0 {
            first = now;
        }
        last = now;
        frames += 1;
        bytes += (ns::ETH_HDR + ns::IP_HDR + ns::UDP_HDR + u.payload.len()) as u64;
        (now.wrapping_sub(first) >= ticks).then_some(())
    })?;
    let cycles = last.wrapping_sub(first).max(1);
    let per_s = |v: u64| (v as u128 * freq.khz as u128 * 1000 / cycles as u128) as u64;
    sprintln!(
        "PROBE net-sink ok port={} frames={} bytes={} tsc_cycles={} frames_per_s={} bytes_per_s={}",
        port,
        frames,
        bytes,
        cycles,
        per_s(frames),
        per_s(bytes)
    );
    Ok(())
}
