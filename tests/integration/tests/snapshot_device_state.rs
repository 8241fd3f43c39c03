//! Device state that must survive a snapshot beyond ring positions: a block device the guest
//! left waiting for a config change gets the change (config interrupt and generation) after
//! the restore without re-initialising, and requests a rate limiter was holding back when the
//! snapshot was taken complete after it.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod block_common;
mod snapshot_common;

use std::path::Path;
use std::time::Duration;

use block_common::{pattern, read_at, zero_image, RUN_TIMEOUT, SECTOR};
use serde_json::json;
use snapshot_common::{boot_with, SnapshotFiles};
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::probe_lines::{field, ok_line};
use xenia_integration_tests::{probe_args, TempDir, Xenia, BOOT_TIMEOUT};

fn drive(id: &str, path: &Path) -> serde_json::Value {
    json!({"drive_id": id, "path_on_host": path, "is_root_device": false, "is_read_only": false})
}

fn wait(x: &mut Xenia, needle: &str) -> String {
    x.wait_for_line(needle, RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", x.stderr()))
}

/// Loads `files` into the fresh process behind `api` and resumes it.
fn load(y: &Xenia, api: &ApiClient, files: &SnapshotFiles) {
    let r = api.call("PUT", "/snapshot/load", &files.load_body(true));
    assert_eq!(
        r.status,
        204,
        "{}\nstderr:\n{}",
        String::from_utf8_lossy(&r.body),
        y.stderr()
    );
}

#[test]
fn a_block_device_waiting_at_the_snapshot_takes_a_config_change_after_restore() {
    let dir = TempDir::new();
    let before = zero_image(&dir, "before.img", 8 << 20);
    let after = zero_image(&dir, "after.img", 16 << 20);
    let cmds = "blk-await-change:120000,blk-write:100:8:7,blk-read:100:8:7";
    let (mut x, api) = Xenia::with_api(&[]);
    boot_with(
        &api,
        &probe_args(cmds),
        128,
        false,
        &[drive("data", &before)],
        &[],
    );
    // The device is initialised (DRIVER_OK, queue ready) and the probe polls its config.
    let ready = wait(&mut x, "PROBE blk-await-change ready");
    assert_eq!(field(&ready, "capacity"), Some("16384"), "{ready}");
    let files = SnapshotFiles::new();
    api.expect("PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    api.expect("PUT", "/snapshot/create", &files.create_body("Full"), 204);
    drop(x);

    let (mut y, api2) = Xenia::with_api(&[]);
    load(&y, &api2, &files);
    // The restored device raises the config interrupt and moves the saved generation: the
    // probe, which never re-initialised it, sees the new capacity.
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
fn requests_a_rate_limiter_held_back_at_the_snapshot_complete_after_restore() {
    let dir = TempDir::new();
    let image = zero_image(&dir, "data.img", 16 << 20);
    // 256 writes of 4 KiB, 4 in flight, 100 requests a second: when the pause lands some
    // requests are posted and waiting for the limiter.
    let cmds = "blk-bench:seqwrite:4096:4:1,blk-write:200:16:9,blk-read:200:16:9";
    let mut data = drive("data", &image);
    data["rate_limiter"] = json!({"ops": {"size": 10, "refill_time": 100}});
    let (mut x, api) = Xenia::with_api(&[]);
    boot_with(&api, &probe_args(cmds), 128, false, &[data], &[]);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
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
    load(&y, &api2, &files);
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
