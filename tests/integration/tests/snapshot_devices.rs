//! Snapshots of a VM whose virtio devices are in use: the probe guest is snapshotted while a
//! block device waits for a config change or is in the middle of a write workload, and while
//! a network interface answers ARP and ping; each is restored in a new process (the network
//! onto another tap through `network_overrides`) and carries on without re-initialising.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

#[path = "block_common/mod.rs"]
mod block_common;
#[path = "net_common/mod.rs"]
mod net_common;
#[path = "snapshot_common/mod.rs"]
mod snapshot_common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use block_common::{pattern, read_at, zero_image, SECTOR};
use net_common::NetNs;
use serde_json::json;
use snapshot_common::SnapshotFiles;
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::probe_lines::{field, ok_line};
use xenia_integration_tests::{probe, probe_args, TempDir, Xenia};

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Configures the probe with `boot_args` and `drives`/`ifaces` through the API and starts it.
fn boot(
    api: &ApiClient,
    boot_args: &str,
    drives: &[serde_json::Value],
    ifaces: &[serde_json::Value],
) {
    let body = json!({"kernel_image_path": probe().pvh, "boot_args": boot_args});
    api.expect("PUT", "/boot-source", &body.to_string(), 204);
    let machine = json!({"vcpu_count": 1, "mem_size_mib": 128});
    api.expect("PUT", "/machine-config", &machine.to_string(), 204);
    for d in drives {
        let id = d["drive_id"].as_str().unwrap_or_default();
        api.expect("PUT", &format!("/drives/{id}"), &d.to_string(), 204);
    }
    for i in ifaces {
        let id = i["iface_id"].as_str().unwrap_or_default();
        api.expect(
            "PUT",
            &format!("/network-interfaces/{id}"),
            &i.to_string(),
            204,
        );
    }
    api.expect(
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        204,
    );
}

fn drive(id: &str, path: &Path) -> serde_json::Value {
    json!({"drive_id": id, "path_on_host": path, "is_root_device": false, "is_read_only": false})
}

fn wait(x: &mut Xenia, needle: &str) -> String {
    x.wait_for_line(needle, RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", x.stderr()))
}

/// Pauses and snapshots the VM, then ends the process.
fn snapshot_and_kill(x: Xenia, api: &ApiClient, files: &SnapshotFiles) {
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    api.expect("PUT", "/snapshot/create", &files.create_body("Full"), 204);
    drop(x);
}

/// Loads `files` into a fresh process and resumes it (with `extra` load fields).
fn load(y: &Xenia, api: &ApiClient, files: &SnapshotFiles, extra: serde_json::Value) {
    let mut body: serde_json::Value =
        serde_json::from_str(&files.load_body(true)).unwrap_or_default();
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = api.call("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(
        r.status,
        204,
        "{}: {}\nstderr:\n{}",
        r.status,
        String::from_utf8_lossy(&r.body),
        y.stderr()
    );
}

#[test]
fn a_block_device_waiting_at_the_snapshot_takes_a_config_change_and_writes_after_restore() {
    let dir = TempDir::new();
    let before = zero_image(&dir, "before.img", 8 << 20);
    let after = zero_image(&dir, "after.img", 16 << 20);
    let cmds = "blk-await-change:120000,blk-write:100:8:7,blk-read:100:8:7";
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, &probe_args(cmds), &[drive("data", &before)], &[]);
    // The device is initialised (DRIVER_OK, queue ready) and the probe polls its config.
    let ready = wait(&mut x, "PROBE blk-await-change ready");
    assert_eq!(field(&ready, "capacity"), Some("16384"), "{ready}");
    let files = SnapshotFiles::new();
    snapshot_and_kill(x, &api, &files);

    let (mut y, api2) = Xenia::with_api(&[]);
    load(&y, &api2, &files, json!({}));
    // The restored device raises the config interrupt and moves the generation: the probe,
    // which never re-initialised it, sees the new capacity.
    let body = json!({"drive_id": "data", "path_on_host": after});
    api2.expect("PATCH", "/drives/data", &body.to_string(), 204);
    let changed = wait(&mut y, "PROBE blk-await-change ok");
    assert_eq!(field(&changed, "capacity"), Some("32768"), "{changed}");
    wait(&mut y, "PROBE-DONE");
    ok_line(&y, "blk-write");
    ok_line(&y, "blk-read");
    assert!(
        y.lines_with("PROBE-BOOT-OK").is_empty(),
        "rebooted: {:?}",
        y.lines
    );
    assert_eq!(
        read_at(&after, 100 * SECTOR, 8 * SECTOR),
        pattern(7, 100, 8)
    );
    assert_eq!(
        read_at(&before, 100 * SECTOR, 8 * SECTOR),
        vec![0u8; 8 * 512]
    );
}

#[test]
fn a_block_workload_in_flight_at_the_snapshot_completes_after_restore() {
    let dir = TempDir::new();
    let image = zero_image(&dir, "data.img", 16 << 20);
    // 256 writes of 4 KiB, 4 in flight, limited to 100 requests a second: the workload is
    // still running (requests posted, some throttled) when the pause lands.
    let cmds = "blk-bench:seqwrite:4096:4:1,blk-write:200:16:9,blk-read:200:16:9";
    let mut data = drive("data", &image);
    data["rate_limiter"] = json!({"ops": {"size": 10, "refill_time": 100}});
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, &probe_args(cmds), &[data], &[]);
    wait(&mut x, "PROBE-BOOT-OK");
    let files = SnapshotFiles::new();
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    let _ = x.lines_within(Duration::from_millis(200));
    assert!(
        x.lines_with("PROBE blk-bench").is_empty(),
        "the workload ended before the pause: {:?}",
        x.lines
    );
    api.expect("PUT", "/snapshot/create", &files.create_body("Full"), 204);
    drop(x);

    let (mut y, api2) = Xenia::with_api(&[]);
    load(&y, &api2, &files, json!({}));
    wait(&mut y, "PROBE-DONE");
    let bench = ok_line(&y, "blk-bench");
    assert_eq!(field(bench, "bytes"), Some("1048576"), "{bench}");
    ok_line(&y, "blk-write");
    ok_line(&y, "blk-read");
    assert!(
        y.lines_with("PROBE-BOOT-OK").is_empty(),
        "rebooted: {:?}",
        y.lines
    );
    assert_eq!(
        read_at(&image, 200 * SECTOR, 16 * SECTOR),
        pattern(9, 200, 16)
    );
}

const GUEST_IP: [u8; 4] = [10, 30, 0, 2];
const GUEST_MAC: &str = "06:00:0a:1e:00:02";

/// Internet checksum.
fn csum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends ICMP echo requests to the guest from inside `ns` (a raw socket, so the host kernel
/// resolves the guest's MAC by ARP first), one a second, until one is answered; returns the
/// tries it took.
fn ping_guest(ns: &NetNs, seq: u16, tries: u32) -> Option<u32> {
    ns.spawn(move || {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(raw >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a timeval that lives across the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // SAFETY: sockaddr_in is plain data; all-zero is a valid start.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr.s_addr = u32::from_ne_bytes(GUEST_IP);
        for attempt in 1..=tries {
            let mut msg = vec![8u8, 0, 0, 0, 0x78, 0x6e];
            msg.extend((seq.wrapping_add(attempt as u16)).to_be_bytes());
            msg.extend(b"xenia-snapshot-devices");
            let c = csum(&msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: `msg` and `to` are valid for the lengths given.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            let mut buf = [0u8; 1500];
            loop {
                // SAFETY: `buf` is valid for writes of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    break; // timeout: send again
                }
                let n = n as usize;
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                let reply = &buf[ihl.min(n)..n];
                if buf[12..16] == GUEST_IP
                    && reply.len() >= 8
                    && reply[0] == 0
                    && reply[4..6] == msg[4..6]
                    && reply[6..8] == msg[6..8]
                {
                    return Some(attempt);
                }
            }
        }
        None
    })
    .join()
    .unwrap_or(None)
}

#[test]
fn a_network_interface_answering_at_the_snapshot_answers_on_another_tap_after_restore() {
    let ns1 = NetNs::new("snapnet1");
    ns1.tap("xs0", Some("10.30.0.1/24"));
    let ns2 = NetNs::new("snapnet2");
    ns2.tap("xr0", Some("10.30.0.1/24"));
    let args =
        "console=ttyS0 probe.ip=10.30.0.2/24 probe.cmds=net-responder:25,net-ping:10.30.0.1:2";
    let iface = json!({"iface_id": "eth0", "host_dev_name": "xs0", "guest_mac": GUEST_MAC});

    let (mut x, api) = ns1.xenia_api(&[]);
    boot(&api, args, &[], &[iface]);
    wait(&mut x, "PROBE-BOOT-OK");
    // The responder's queues are live: the guest answers before the snapshot.
    assert!(
        ping_guest(&ns1, 0, 30).is_some(),
        "no reply before the snapshot:\n{}",
        x.lines.join("\n")
    );
    let files = SnapshotFiles::new();
    snapshot_and_kill(x, &api, &files);

    let (mut y, api2) = ns2.xenia_api(&[]);
    load(
        &y,
        &api2,
        &files,
        json!({"network_overrides": [{"iface_id": "eth0", "host_dev_name": "xr0"}]}),
    );
    // The restored rx ring still holds the buffers the guest posted before the snapshot; the
    // ARP request and the echo come in on them and the replies leave through the new tap.
    // A few tries at most: the first may go to ARP resolution on the fresh host side.
    let tries = ping_guest(&ns2, 100, 5);
    assert!(
        tries.is_some(),
        "no reply after the restore:\n{}\nstderr:\n{}",
        y.lines.join("\n"),
        y.stderr()
    );
    let config = api2.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"], "xr0",
        "{config}"
    );
    // Still the responder started before the snapshot: no command ended, nothing rebooted.
    let _ = y.lines_within(Duration::from_millis(100));
    assert!(
        y.lines.iter().all(|l| !l.starts_with("PROBE")),
        "{:?}",
        y.lines
    );
}
