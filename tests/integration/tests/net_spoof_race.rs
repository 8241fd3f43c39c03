//! Anti-spoofing against a guest with two vCPUs: the probe's `net-spoof-race` sends one
//! buffer over and over with the guest's MAC while its second vCPU keeps flipping a byte
//! of that source MAC. A capture on the tap must see no frame with any other source, and
//! the device must have counted the frames it caught as `tx_spoofed_dropped`.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic, clippy::print_stderr)]

mod net_common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use net_common::*;
use serde_json::json;
use xenia_integration_tests::TempDir;

const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0x0a, 0x19, 0x00, 0x02];
const GUEST_MAC_TEXT: &str = "06:00:0a:19:00:02";
/// What `net-spoof-race` sends: ethertype 0x88b5, first payload byte 0x52.
const RACE_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const RACE_MARKER: u8 = 0x52;
/// Frames the guest sends. Measured on the PVM host (2 cores shared by other jobs): the
/// emulated guest pushes 100,000 in 3-4 s while its AP flips the byte ~1.2-1.5 million
/// times; a device that checks guest memory and then sends from it let ~5,600 through.
const FRAMES: u64 = 100_000;

#[derive(Debug, Default)]
struct Seen {
    good: u64,
    foreign: Vec<[u8; 6]>,
    /// Frames the kernel dropped before the capture read them (PACKET_STATISTICS).
    capture_drops: u64,
}

/// Counts the race frames on `ifname` by source MAC until stopped, then drains the socket.
struct RaceCapture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl RaceCapture {
    fn start(ns: &NetNs, ifname: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (ifname, flag) = (ifname.to_owned(), stop.clone());
        let thread = ns.spawn(move || {
            let fd = packet_socket(&ifname);
            let size: libc::c_int = 32 << 20;
            // SAFETY: setsockopt(2) with an int that lives across the call. Best effort: a
            // smaller buffer only means more capture drops, which are counted.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            // The loop below ends on a receive timeout once stopped (packet_socket itself no
            // longer sets one).
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: setsockopt(2) with a timeval that lives across the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            let _ = ready_tx.send(());
            let mut seen = Seen::default();
            let mut buf = [0u8; 2048];
            loop {
                // SAFETY: recv(2) into a buffer we own, with its length (100 ms timeout).
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    // Timed out: everything queued so far has been read.
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                let f = &buf[..n as usize];
                if f.len() > 14 && f[12..14] == RACE_ETHERTYPE && f[14] == RACE_MARKER {
                    if f[6..12] == GUEST_MAC {
                        seen.good += 1;
                    } else {
                        let mut src = [0u8; 6];
                        src.copy_from_slice(&f[6..12]);
                        seen.foreign.push(src);
                    }
                }
            }
            let mut stats = libc::tpacket_stats {
                tp_packets: 0,
                tp_drops: 0,
            };
            let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
            // SAFETY: getsockopt(2) into a tpacket_stats we own, with its length.
            let rc = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    (&mut stats as *mut libc::tpacket_stats).cast(),
                    &mut len,
                )
            };
            if rc == 0 {
                seen.capture_drops = u64::from(stats.tp_drops);
            }
            seen
        });
        ready
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("capture did not start");
        Self { stop, thread }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("capture thread")
    }
}

#[test]
fn a_second_vcpu_flipping_the_source_mac_never_gets_a_frame_out() {
    let ns = NetNs::new("race");
    ns.tap("xt0", None);
    let capture = RaceCapture::start(&ns, "xt0");
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let mut config = probe_net_config(
        &format!("net-spoof-race:{FRAMES}"),
        "10.25.0.2/24",
        None,
        vec![iface("eth0", "xt0", GUEST_MAC_TEXT, json!({}))],
    );
    config["machine-config"]["vcpu_count"] = json!(2);
    let mut x = ns.xenia(&config, &["--metrics-path", &metrics.to_string_lossy()]);
    run_to_done(&mut x);
    let seen = capture.stop();
    let line = ok_line(&x, "net-spoof-race").to_owned();
    let m = net_metrics(&metrics, "eth0");
    eprintln!(
        "{line}\ncapture: good={} foreign={} drops={}\n{m}",
        seen.good,
        seen.foreign.len(),
        seen.capture_drops
    );

    assert_eq!(num(&line, "frames"), FRAMES, "{line}");
    assert!(
        num(&line, "flips") > 0,
        "the second vCPU never flipped: {line}"
    );
    assert!(
        seen.foreign.is_empty(),
        "{} frames with a foreign source MAC reached the tap, e.g. {:02x?}",
        seen.foreign.len(),
        seen.foreign.first()
    );
    let sent = m["tx_packets"].as_u64().unwrap_or(0);
    let caught = m["tx_spoofed_dropped"].as_u64().unwrap_or(0);
    assert_eq!(sent + caught, FRAMES, "every frame is sent or counted: {m}");
    assert!(caught > 0, "the device caught no flipped frame: {m}");
    assert!(
        seen.good > 0 && seen.good <= sent,
        "capture {seen:?}, metrics {m}"
    );
    assert!(
        seen.good + seen.capture_drops >= sent,
        "frames counted as sent are missing from the tap: {seen:?}, {m}"
    );
}
