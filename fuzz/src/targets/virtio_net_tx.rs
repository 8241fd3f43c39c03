//! virtio-net transmit: a guest's tx queue, with an arbitrary descriptor table, available
//! ring and frame contents, served by the real device (`virtio::net::Net`) over mock guest
//! memory. This covers chain validation, the anti-spoofing check, the iovec gathering and
//! the tap write path (`virtio/src/net/tx.rs`, `chain.rs`, `iovec.rs`).
//!
//! The device needs a real tap: the first run moves the process (the calling thread) into
//! a network namespace of its own and creates the taps there, so nothing a fuzz input sends
//! can reach the host's network, and the taps vanish with the process however it ends. The
//! taps stay down. This needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), as the net unit tests
//! do.
//!
//! Input: the [`Scenario`](crate::guest::Scenario) layout for the tx queue (the rx queue is
//! an empty ready queue at [`RX_QUEUE`]). Flags byte: bit 0 acks EVENT_IDX, bit 1
//! MRG_RXBUF, bit 2 CSUM, bit 3 HOST_TSO4, bit 4 INDIRECT_DESC; bit 5 sends through the
//! device that allows MAC spoofing instead of the one that enforces `GUEST_MAC`.

use std::process::Command;
use std::sync::{Mutex, OnceLock};

use virtio::features::VIRTIO_RING_F_EVENT_IDX;
use virtio::net::{Net, NetConfig};
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
};

use crate::device::DeviceLoop;
use crate::guest::{Scenario, ScenarioBuilder, DATA, VIRTIO_RING_F_INDIRECT_DESC};

/// The MAC the enforcing device allows as a source.
pub const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
/// Where the idle rx queue lives (inside the first RAM region).
pub const RX_QUEUE: u64 = 0x7000;

const FLAG_FEATURES: [(u8, u32); 5] = [
    (1, VIRTIO_RING_F_EVENT_IDX),
    (2, VIRTIO_NET_F_MRG_RXBUF),
    (4, VIRTIO_NET_F_CSUM),
    (8, VIRTIO_NET_F_HOST_TSO4),
    (16, VIRTIO_RING_F_INDIRECT_DESC),
];
const FLAG_SPOOFING_ALLOWED: u8 = 32;

struct Devices {
    enforcing: DeviceLoop<Net>,
    spoofing_allowed: DeviceLoop<Net>,
}

fn ip(args: &[&str]) {
    match Command::new("ip").args(args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run ip {args:?}: {e}"),
    }
}

fn device(tap: &str, allow_mac_spoofing: bool) -> DeviceLoop<Net> {
    ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
    let cfg = NetConfig {
        iface_id: tap.into(),
        host_dev_name: tap.into(),
        guest_mac: Some(GUEST_MAC),
        allow_mac_spoofing,
        ..NetConfig::default()
    };
    match Net::new(&cfg) {
        Ok(net) => DeviceLoop::new(net),
        Err(e) => panic!("cannot open tap {tap}: {e}"),
    }
}

fn devices() -> &'static Mutex<Devices> {
    static DEVICES: OnceLock<Mutex<Devices>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        // SAFETY: unshare(2) with a flag constant; it only changes this thread's namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "the virtio_net_tx target needs root for a private network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        Mutex::new(Devices {
            enforcing: device("xfz0", false),
            spoofing_allowed: device("xfz1", true),
        })
    })
}

pub fn run(data: &[u8]) {
    serve(data);
}

/// Serves the input; returns the device's counters afterwards (for the seeds' tests).
fn serve(data: &[u8]) -> virtio::net::NetMetricsSnapshot {
    let scenario = Scenario::parse(data);
    let mem = scenario.memory();
    let features = scenario.features(&FLAG_FEATURES);
    let mut devices = crate::guest::lock_recovering(devices());
    let dev = if scenario.flags & FLAG_SPOOFING_ALLOWED != 0 {
        &mut devices.spoofing_allowed
    } else {
        &mut devices.enforcing
    };
    let queues = vec![Scenario::idle_queue(RX_QUEUE), scenario.queue()];
    dev.session(&mem, features, queues);
    scenario.check_completions(&mem);
    let metrics = dev.device().metrics();
    metrics.snapshot()
}

/// A frame from `src` to the broadcast address, `len` bytes with its Ethernet header.
fn frame(src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    while f.len() < len {
        f.push(f.len() as u8);
    }
    f
}

/// Seeds: frames split in every usual way, a forged source, a GSO header, too-short and
/// device-writable chains, several frames in one queue, an indirect table.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const ALL: u8 = 1 | 2 | 4 | 8;
    let vnet = [0u8; 12];
    let hdr = DATA;
    let buf = DATA + 0x100;
    let with = |flags: u8, f: &[u8], bufs: &[(u64, u32, bool)]| {
        let mut b = ScenarioBuilder::new(4, flags);
        b.write(hdr, &vnet).write(buf, f).chain(bufs);
        b.build()
    };
    let good = frame(GUEST_MAC, 100);
    let n = good.len() as u32;
    let mut seeds = vec![
        (
            "header-then-frame",
            with(ALL, &good, &[(hdr, 12, false), (buf, n, false)]),
        ),
        ("one-buffer", {
            let mut b = ScenarioBuilder::new(4, ALL);
            let mut whole = vnet.to_vec();
            whole.extend_from_slice(&good);
            b.write(buf, &whole)
                .chain(&[(buf, whole.len() as u32, false)]);
            b.build()
        }),
        (
            "split-mid-mac",
            with(
                ALL,
                &good,
                &[(hdr, 12, false), (buf, 8, false), (buf + 8, n - 8, false)],
            ),
        ),
        (
            "forged-source",
            with(
                ALL,
                &frame([6, 0, 0, 0, 0, 0x66], 64),
                &[(hdr, 12, false), (buf, 64, false)],
            ),
        ),
        (
            "forged-source-allowed",
            with(
                ALL | FLAG_SPOOFING_ALLOWED,
                &frame([6, 0, 0, 0, 0, 0x66], 64),
                &[(hdr, 12, false), (buf, 64, false)],
            ),
        ),
        ("gso-tcp", {
            let mut b = ScenarioBuilder::new(4, ALL);
            // flags NEEDS_CSUM, gso TCPV4, hdr_len 54, gso_size 1448, csum_start 34, offset 16.
            let mut h = vec![1u8, 1];
            for v in [54u16, 1448, 34, 16, 0] {
                h.extend_from_slice(&v.to_le_bytes());
            }
            b.write(hdr, &h)
                .write(buf, &frame(GUEST_MAC, 3000))
                .chain(&[(hdr, 12, false), (buf, 3000, false)]);
            b.build()
        }),
        (
            "too-short",
            with(ALL, &good, &[(hdr, 12, false), (buf, 10, false)]),
        ),
        (
            "device-writable",
            with(ALL, &good, &[(hdr, 12, false), (buf, n, true)]),
        ),
        (
            // 0x7f80..0x8080 spans the two host mappings of guest RAM.
            "frame-across-regions",
            {
                let mut b = ScenarioBuilder::new(4, ALL);
                b.write(hdr, &vnet)
                    .write(0x7f80, &frame(GUEST_MAC, 256))
                    .chain(&[(hdr, 12, false), (0x7f80, 256, false)]);
                b.build()
            },
        ),
    ];
    let mut many = ScenarioBuilder::new(3, 0);
    for i in 0..4u64 {
        let at = DATA + i * 0x400;
        many.write(at, &vnet)
            .write(at + 12, &frame(GUEST_MAC, 60 + i as usize * 100))
            .chain(&[(at, 12 + 60 + i as u32 * 100, false)]);
    }
    seeds.push(("four-frames", many.build()));
    let mut indirect = ScenarioBuilder::new(2, ALL | 16);
    let table = 0x6000u64;
    let mut t = Vec::new();
    for (i, (addr, len)) in [(hdr, 12u32), (buf, n)].iter().enumerate() {
        t.extend_from_slice(&addr.to_le_bytes());
        t.extend_from_slice(&len.to_le_bytes());
        t.extend_from_slice(&(if i == 0 { 1u16 } else { 0 }).to_le_bytes());
        t.extend_from_slice(&(i as u16 + 1).to_le_bytes());
    }
    indirect
        .write(hdr, &vnet)
        .write(buf, &good)
        .write(table, &t)
        .desc(0, table, 32, crate::guest::F_INDIRECT, 0)
        .avail(0);
    seeds.push(("indirect", indirect.build()));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Good frames reach the tap write (which fails with the tap down, or sends), forged
    /// ones are caught by the filter, malformed chains are counted as such.
    #[test]
    fn seeds_reach_the_tap() {
        for (name, input) in seeds() {
            // The same device (flags byte), serving nothing.
            let before = serve(&input[..2]);
            let after = serve(&input);
            let d = |f: fn(&virtio::net::NetMetricsSnapshot) -> u64| f(&after) - f(&before);
            let written = d(|m| m.tx_packets) + d(|m| m.tap_write_errors);
            let (want_written, want_spoofed, want_malformed) = match name {
                "forged-source" => (0, 1, 0),
                // Indirect chains are refused since virtio-net stopped offering them.
                "too-short" | "device-writable" | "indirect" => (0, 0, 1),
                "four-frames" => (4, 0, 0),
                _ => (1, 0, 0),
            };
            assert_eq!(
                (written, d(|m| m.tx_spoofed_dropped), d(|m| m.tx_malformed)),
                (want_written, want_spoofed, want_malformed),
                "seed {name}"
            );
        }
    }
}
