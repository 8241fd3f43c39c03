//! Bad drive configurations: exit status 1 and one message naming the drive and the problem,
//! before any guest runs.

// A failed run is reported by panicking with the console and stderr.
#![allow(clippy::panic)]

mod block_common;

use std::time::Duration;

use block_common::*;
use serde_json::{json, Value};
use xenia_integration_tests::{run_to_exit, TempDir};

fn assert_refused(config: &Value, needles: &[&str]) {
    let dir = TempDir::new();
    let path = dir.write("config.json", config.to_string());
    let args = vec![
        "--no-api".to_owned(),
        "--config-file".to_owned(),
        path.to_string_lossy().into_owned(),
    ];
    let (status, stderr) = run_to_exit(&args, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in stderr:\n{stderr}");
    }
}

#[test]
fn missing_image() {
    let dir = TempDir::new();
    let missing = dir.path().join("absent.img");
    let c = probe_config("", vec![drive("rootfs", &missing, json!({}))]);
    assert_refused(
        &c,
        &[
            "drives[rootfs]",
            &missing.to_string_lossy(),
            "does not exist",
        ],
    );
}

#[test]
fn directory_as_image() {
    let dir = TempDir::new();
    let c = probe_config("", vec![drive("data", dir.path(), json!({}))]);
    assert_refused(
        &c,
        &[
            "drives[data]",
            &dir.path().to_string_lossy(),
            "is a directory",
        ],
    );
}

#[test]
fn duplicate_drive_ids() {
    let dir = TempDir::new();
    let a = zero_image(&dir, "a.img", 1 << 20);
    let b = zero_image(&dir, "b.img", 1 << 20);
    let c = probe_config(
        "",
        vec![drive("disk", &a, json!({})), drive("disk", &b, json!({}))],
    );
    assert_refused(&c, &["drives", "`disk`", "used twice"]);
}

#[test]
fn two_root_devices() {
    let dir = TempDir::new();
    let a = zero_image(&dir, "a.img", 1 << 20);
    let b = zero_image(&dir, "b.img", 1 << 20);
    let c = probe_config(
        "",
        vec![
            drive("a", &a, json!({"is_root_device": true})),
            drive("b", &b, json!({"is_root_device": true})),
        ],
    );
    assert_refused(&c, &["drives", "more than one drive is a root device"]);
}

#[test]
fn too_many_drives() {
    let dir = TempDir::new();
    let img = zero_image(&dir, "a.img", 1 << 20);
    let drives = (0..17)
        .map(|i| drive(&format!("d{i}"), &img, json!({})))
        .collect();
    assert_refused(&probe_config("", drives), &["drives", "at most 16"]);
}

#[test]
fn vhost_user_drive() {
    let c = probe_config(
        "",
        vec![json!({"drive_id": "vu", "is_root_device": false, "socket": "/tmp/vu.sock"})],
    );
    assert_refused(&c, &["drives[vu].socket", "vhost-user"]);
}
