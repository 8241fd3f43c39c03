//! virtio-net end to end: the probe guest on a real tap inside a network namespace the test
//! creates, the host end of the tap answering ARP, ping and a UDP echo.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod net_common;

use net_common::*;
use serde_json::json;
use xenia_integration_tests::{TempDir, BOOT_TIMEOUT};

const GUEST_MAC: &str = "06:00:0a:14:00:02";

/// The MAC the kernel gave the tap `name` in `ns`.
fn tap_mac(ns: &NetNs, name: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-j", "link", "show", "dev", name])
        .output()
        .expect("ip link show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["address"].as_str().expect("tap address").to_owned()
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn probe_pings_the_host_and_udp_echo_carries_three_mib_intact() {
    const BYTES: usize = 3 << 20;
    let ns = NetNs::new("ping");
    ns.tap("xt0", Some("10.20.0.1/24"));
    let echo = UdpEcho::start(&ns, "10.20.0.1:7777");
    let cmds =
        format!("net-arp:10.20.0.1,net-ping:10.20.0.1:3,net-udp-echo:10.20.0.1:7777:{BYTES}");
    let config = probe_net_config(
        &cmds,
        "10.20.0.2/24",
        None,
        vec![iface("eth0", "xt0", GUEST_MAC, json!({}))],
    );
    let mut x = ns.xenia(&config, &[]);
    run_to_done(&mut x);
    let report = echo.stop();

    let arp = ok_line(&x, "net-arp");
    assert_eq!(
        field(arp, "mac"),
        Some(tap_mac(&ns, "xt0").as_str()),
        "{arp}"
    );
    let ping = ok_line(&x, "net-ping");
    assert_eq!(num(ping, "received"), 3, "{ping}");
    assert_eq!(x.lines_with("PROBE net-ping-reply").len(), 3);

    let udp = ok_line(&x, "net-udp-echo");
    assert_eq!(num(udp, "bytes"), BYTES as u64, "{udp}");
    assert_eq!(report.stream.len(), BYTES, "bytes the host received");
    let want = fnv1a64(&udp_pattern(BYTES));
    assert_eq!(
        fnv1a64(&report.stream),
        want,
        "the host's stream is not the pattern"
    );
    assert_eq!(num(udp, "fnv1a64"), want, "{udp}");
    assert!(report.datagrams >= num(udp, "datagrams"), "{report:?}");
}

#[test]
fn the_guest_reads_guest_mac_and_mtu_from_config_space() {
    let ns = NetNs::new("mac");
    ns.tap("xt0", None);
    let config = probe_net_config(
        "net-info",
        "10.21.0.2/24",
        None,
        vec![iface("eth0", "xt0", GUEST_MAC, json!({"mtu": 1400}))],
    );
    let mut x = ns.xenia(&config, &[]);
    run_to_done(&mut x);
    let info = ok_line(&x, "net-info");
    assert_eq!(field(info, "mac"), Some(GUEST_MAC), "{info}");
    assert_eq!(field(info, "mac_offered"), Some("1"), "{info}");
    assert_eq!(field(info, "mtu"), Some("1400"), "{info}");
    assert_eq!(field(info, "link"), Some("up"), "{info}");
    // The first virtio-mmio window and IRQ when there is no drive.
    assert_eq!(field(info, "addr"), Some("0xd0000000"), "{info}");
    assert_eq!(field(info, "irq"), Some("5"), "{info}");
}

/// Runs `net-spoof` against the host end of the tap with a capture on it; returns the
/// source MACs seen on the tap and the interface's metrics.
fn spoof_run(allow_spoofing: bool) -> (Vec<[u8; 6]>, serde_json::Value, String) {
    let ns = NetNs::new("spoof");
    ns.tap("xt0", Some("10.22.0.1/24"));
    let capture = Capture::start(&ns, "xt0");
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let config = probe_net_config(
        "net-spoof:10.22.0.1",
        "10.22.0.2/24",
        None,
        vec![iface(
            "eth0",
            "xt0",
            GUEST_MAC,
            json!({"allow_mac_spoofing": allow_spoofing}),
        )],
    );
    let mut x = ns.xenia(&config, &["--metrics-path", &metrics.to_string_lossy()]);
    // The probe's result line comes after the device completed its tx requests, i.e.
    // after every frame reached the tap and the capture's queue (see `Capture`).
    run_to_done(&mut x);
    let seen = capture.stop();
    let line = ok_line(&x, "net-spoof").to_owned();
    (seen, net_metrics(&metrics, "eth0"), line)
}

#[test]
fn a_forged_source_mac_never_reaches_the_host() {
    let (seen, m, line) = spoof_run(false);
    assert_eq!(field(&line, "arp"), Some("reply"), "{line}");
    assert_eq!(field(&line, "tx_completed"), Some("1"), "{line}");
    let real: [u8; 6] = [6, 0, 0x0a, 0x14, 0, 2];
    assert!(
        seen.contains(&real),
        "the capture saw nothing from the guest's real MAC: {:?}",
        seen.iter().map(mac_text).collect::<Vec<_>>()
    );
    assert!(
        !seen.contains(&FORGED_MAC),
        "a frame from the forged MAC reached the tap"
    );
    assert!(m["tx_spoofed_dropped"].as_u64() >= Some(1), "{m}");

    // The control: with spoofing allowed, the same frame does reach the tap.
    let (seen, m, _) = spoof_run(true);
    assert!(
        seen.contains(&FORGED_MAC),
        "allowed spoofing, frame not seen"
    );
    assert_eq!(m["tx_spoofed_dropped"], 0, "{m}");
}

#[test]
fn deleting_the_tap_under_a_running_vm_is_counted_and_survived() {
    let ns = NetNs::new("del");
    ns.tap("xt0", Some("10.23.0.1/24"));
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.json");
    let config = probe_net_config(
        "net-ping:10.23.0.1:1,tick:30,net-ping:10.23.0.1:3,tick:0",
        "10.23.0.2/24",
        None,
        vec![iface("eth0", "xt0", GUEST_MAC, json!({}))],
    );
    let mut x = ns.xenia(&config, &["--metrics-path", &metrics.to_string_lossy()]);
    let first = x
        .wait_for_line("PROBE net-ping ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(first.starts_with("PROBE net-ping ok"), "{first}");
    ns.ip(&["link", "del", "xt0"]);
    // The next ping finds nobody: its ARP requests hit the deleted tap.
    let second = x
        .wait_for_line("PROBE net-ping ", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(second.starts_with("PROBE net-ping FAIL"), "{second}");
    // The guest keeps running: it ticks after the failure.
    x.wait_for_line("PROBE tick n=", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(alive(x.pid()), "xenia exited after the tap went away");
    x.signal(libc::SIGTERM);
    let status = x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status:?}\n{}", x.stderr());
    let m = net_metrics(&metrics, "eth0");
    assert!(m["tap_write_errors"].as_u64() >= Some(1), "{m}");
    let log = x.stderr();
    assert!(
        log.contains("tap `xt0` failed"),
        "no log line about the tap:\n{log}"
    );
}
