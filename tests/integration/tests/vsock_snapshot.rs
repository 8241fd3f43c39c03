//! vsock across a snapshot: the connection open at snapshot time is reset (the host side
//! sees EOF), the restored guest gets a TRANSPORT_RESET event, the restored device listens
//! at `vsock_override.uds_path`, and a new host connection echoes intact.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod snapshot_common;
mod vsock_common;

use std::io::{Read, Write};

use serde_json::json;
use snapshot_common::*;
use vsock_common::*;
use xenia_integration_tests::probe_lines::ok_line;
use xenia_integration_tests::{probe_args, TempDir, Xenia, BOOT_TIMEOUT};

#[test]
fn connections_reset_the_guest_hears_and_the_restored_vm_listens_at_the_override() {
    let dir = TempDir::new();
    let before = dir.path().join("a.sock");
    let after = dir.path().join("b.sock");
    let (mut x, api) = Xenia::with_api(&[]);
    let vsock = json!({"guest_cid": GUEST_CID, "uds_path": before});
    api.expect("PUT", "/vsock", &vsock.to_string(), 204);
    boot_with(
        &api,
        &probe_args("vsock-echo:52:1:600"),
        128,
        false,
        &[],
        &[],
    );
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    x.wait_for_line("PROBE vsock-echo ready", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut live, _) = host_connect(&before, 52);
    live.write_all(b"hello").unwrap_or_else(|e| panic!("{e}"));
    let mut back = [0u8; 5];
    live.read_exact(&mut back).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&back, b"hello");

    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    // The host end of the open connection was closed at snapshot time.
    let mut rest = Vec::new();
    assert_eq!(live.read_to_end(&mut rest).unwrap_or(usize::MAX), 0);
    drop(x);

    let (mut y, api2) = Xenia::with_api(&[]);
    let body = json!({"snapshot_path": files.state,
        "mem_backend": {"backend_type": "File", "backend_path": files.mem},
        "vsock_override": {"uds_path": after},
        "resume_vm": true});
    api2.expect("PUT", "/snapshot/load", &body.to_string(), 204);
    let config = api2.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(config["vsock"]["uds_path"], json!(after), "{config}");
    assert_eq!(config["vsock"]["guest_cid"], json!(GUEST_CID), "{config}");
    y.wait_for_line("PROBE vsock-event reset", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", y.stderr()));
    let (s, _) = host_connect(&after, 52);
    let data = host_data(9, 128 << 10);
    assert!(
        echo_round_trip(s, data.clone()) == data,
        "echo differs after restore"
    );
    let status = y.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "{status:?}\n{}", y.stderr());
    let echo = ok_line(&y, "vsock-echo");
    assert!(
        echo.contains("conns=1") && echo.contains("resets=1"),
        "{echo}"
    );
}

#[test]
fn a_vsock_override_without_a_vsock_device_is_refused() {
    let (mut x, api) = Xenia::with_api(&[]);
    boot_with(&api, &probe_args("idle"), 128, false, &[], &[]);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let files = SnapshotFiles::new();
    pause_and_create(&mut x, &api, &files, "Full");
    drop(x);
    let (_y, api2) = Xenia::with_api(&[]);
    let body = json!({"snapshot_path": files.state,
        "mem_backend": {"backend_type": "File", "backend_path": files.mem},
        "vsock_override": {"uds_path": "/tmp/nowhere.sock"}});
    let r = api2.expect("PUT", "/snapshot/load", &body.to_string(), 400);
    assert!(r.fault().contains("vsock_override"), "{}", r.fault());
}
