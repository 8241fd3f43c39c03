//! Snapshots of a probe guest with virtio devices in use: a disk read loop and a network
//! responder carry on after a restore in a new process (the network onto another tap through
//! `network_overrides`), a write after the restore lands on the image, and a state file whose
//! devices do not match its configuration is refused.

// The shared net helpers fail the test with context by panicking.
#![allow(clippy::panic)]

mod block_common;
mod net_common;
mod snapshot_common;

use std::process::Command;
use std::time::{Duration, Instant};

use block_common::{pattern, read_at, zero_image, RUN_TIMEOUT};
use net_common::NetNs;
use serde_json::json;
use snapshot_common::*;
use xenia_integration_tests::probe_lines::ok_line;
use xenia_integration_tests::{probe_args, TempDir, Xenia, BOOT_TIMEOUT};

#[test]
fn a_disk_in_use_carries_on_and_a_write_after_restore_lands_on_the_image() {
    let dir = TempDir::new();
    let image = zero_image(&dir, "data.img", 4 << 20);
    let drive = json!({"drive_id": "data", "path_on_host": image, "is_root_device": false,
                       "is_read_only": false});
    // ~8,000 one-at-a-time requests (several seconds): the snapshot lands in the middle.
    let cmds = "blk-readall:64000:8,blk-write:0:8:7,blk-read:0:8:7";
    let (mut x, api) = Xenia::with_api(&[]);
    boot_with(&api, &probe_args(cmds), 128, false, &[drive], &[]);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT).unwrap();
    let _ = x.lines_within(Duration::from_millis(800));
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    assert!(
        x.lines_with("PROBE blk-readall").is_empty(),
        "the read loop ended before the snapshot: {:?}",
        x.lines
    );
    drop(x);

    let (mut y, api2) = Xenia::with_api(&[]);
    api2.expect("PUT", "/snapshot/load", &files.load_body(true), 204);
    let status = y.wait_exit(RUN_TIMEOUT).unwrap();
    assert!(status.success(), "{status:?}\n{}", y.stderr());
    let readall = ok_line(&y, "blk-readall");
    assert!(readall.contains("sectors=64000"), "{readall}");
    ok_line(&y, "blk-write");
    ok_line(&y, "blk-read");
    assert_eq!(read_at(&image, 0, 8 * 512), pattern(7, 0, 8));
}

/// The MAC the kernel gave the tap `name` in `ns`.
fn tap_mac(ns: &NetNs, name: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "link", "show", "dev", name])
        .output()
        .expect("ip link show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["address"].as_str().expect("tap address").to_owned()
}

/// The sequence numbers of the ping replies on the console so far.
fn reply_seqs(x: &Xenia) -> Vec<u64> {
    x.lines
        .iter()
        .filter_map(|l| l.strip_prefix("PROBE net-ping-reply seq="))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Waits until `n` more ping replies than `before` have arrived.
fn wait_replies(x: &mut Xenia, before: usize, n: usize) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while reply_seqs(x).len() < before + n {
        assert!(
            Instant::now() < deadline,
            "no ping replies; console:\n{}\nstderr:\n{}",
            x.lines.join("\n"),
            x.stderr()
        );
        let _ = x.lines_within(Duration::from_millis(100));
    }
}

#[test]
fn the_network_carries_on_after_a_restore_onto_another_tap() {
    let ns = NetNs::new("snap");
    ns.tap("st0", Some("10.31.0.1/24"));
    let host_mac = tap_mac(&ns, "st0");
    let nic = json!({"iface_id": "eth0", "host_dev_name": "st0",
                     "guest_mac": "06:00:0a:1f:00:02"});
    // The guest pings the host back to back, its queues live across the snapshot.
    let args = "console=ttyS0 probe.ip=10.31.0.2/24 probe.cmds=net-ping:10.31.0.1:1000000";
    let (mut x, api) = ns.xenia_api(&[]);
    boot_with(&api, args, 128, false, &[], &[nic]);
    wait_replies(&mut x, 0, 20);
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    let last = reply_seqs(&x).last().copied().unwrap_or(0);
    drop(x);

    // The old tap is gone; a new one with another name carries the same subnet and (as a
    // control plane restoring into the same network would arrange) the same MAC, which the
    // guest has in its ARP cache.
    ns.ip(&["link", "del", "st0"]);
    ns.ip(&["tuntap", "add", "dev", "st1", "mode", "tap"]);
    ns.ip(&["link", "set", "st1", "address", &host_mac]);
    ns.ip(&["addr", "add", "10.31.0.1/24", "dev", "st1"]);
    ns.ip(&["link", "set", "st1", "up"]);
    let (mut y, api2) = ns.xenia_api(&[]);
    let body = json!({"snapshot_path": files.state,
        "mem_backend": {"backend_type": "File", "backend_path": files.mem},
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "st1"}],
        "resume_vm": true});
    api2.expect("PUT", "/snapshot/load", &body.to_string(), 204);
    wait_replies(&mut y, 0, 20);
    let after = reply_seqs(&y);
    assert!(
        after[0] > last && after[0] <= last + 3,
        "sequence did not carry on: {last} then {after:?}"
    );
    let config = api2.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"], "st1",
        "{config}"
    );
    // An override naming an interface the snapshot does not have is refused by name.
    let (_z, api3) = ns.xenia_api(&[]);
    let bad = json!({"snapshot_path": files.state, "mem_file_path": files.mem,
        "network_overrides": [{"iface_id": "eth9", "host_dev_name": "st1"}]});
    let r = api3.expect("PUT", "/snapshot/load", &bad.to_string(), 400);
    assert!(r.fault().contains("eth9"), "{}", r.fault());
}

#[test]
fn a_state_file_whose_devices_do_not_match_its_configuration_is_refused() {
    let dir = TempDir::new();
    let a = zero_image(&dir, "a.img", 1 << 20);
    let b = zero_image(&dir, "b.img", 1 << 20);
    let drives = [
        json!({"drive_id": "d1", "path_on_host": a, "is_root_device": false}),
        json!({"drive_id": "d2", "path_on_host": b, "is_root_device": false}),
    ];
    let (mut x, api) = Xenia::with_api(&[]);
    boot_with(&api, &probe_args("memtick:1"), 64, false, &drives, &[]);
    x.wait_for_line("PROBE memtick n=1 ", BOOT_TIMEOUT).unwrap();
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    drop(x);

    // The configuration inside now names the drives in the other order; the device states
    // (and the guest) still have d1 first. The checksum is made valid again.
    let good = std::fs::read(&files.state).unwrap();
    let swapped = edit_state(&good, br#""drive_id":"d1""#, br#""drive_id":"d3""#);
    let path = dir.write("swapped.state", swapped);
    let (_y, api2) = Xenia::with_api(&[]);
    let body = json!({"snapshot_path": path,
        "mem_backend": {"backend_type": "File", "backend_path": files.mem}});
    let r = api2.expect("PUT", "/snapshot/load", &body.to_string(), 400);
    assert!(
        r.fault().contains("d1") && r.fault().contains("d3"),
        "{}",
        r.fault()
    );
    assert_eq!(
        api2.expect("GET", "/", "", 200).json()["state"],
        "Not started"
    );
}
