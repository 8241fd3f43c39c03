//! Rate limits: a drive with a bandwidth bucket of N bytes/s delivers 4N bytes in no less
//! than ~3 s (the bucket starts full), while an unlimited drive in the same VM is not held
//! back. Only a lower bound on the limited drive is asserted, plus a relative one on the
//! unlimited drive: both hold however loaded the machine is.

// A failed run is reported by panicking with the console and stderr.
#![allow(clippy::panic)]

mod block_common;

use std::time::{Duration, Instant};

use block_common::*;
use serde_json::json;
use xenia_integration_tests::{TempDir, Xenia, BOOT_TIMEOUT};

/// Bytes per second allowed on the limited drive.
const RATE: u64 = 1 << 20;
/// 128 KiB requests.
const REQ_SECTORS: u64 = 256;

fn wait(x: &mut Xenia, needle: &str) -> Instant {
    let line = x
        .wait_for_line(needle, RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains(" ok "), "{line}\nstderr:\n{}", x.stderr());
    Instant::now()
}

fn limited_drive_is_slow_and_unlimited_is_not(limiter: serde_json::Value) {
    let dir = TempDir::new();
    let fast = zero_image(&dir, "fast.img", 8 << 20);
    let slow = zero_image(&dir, "slow.img", 8 << 20);
    let sectors = 4 * RATE / SECTOR;
    let cmds = format!(
        "blk-info@1,blk-readall@1:{sectors}:{REQ_SECTORS},blk-readall@0:{sectors}:{REQ_SECTORS}"
    );
    let drives = vec![
        drive("fast", &fast, json!({})),
        drive("slow", &slow, json!({"rate_limiter": limiter})),
    ];
    let metrics = dir.path().join("metrics.json");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let mut x = Xenia::start(
        &probe_config(&cmds, drives),
        &["--metrics-path", &metrics_arg],
    );
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = wait(&mut x, "PROBE blk-info");
    let t1 = wait(&mut x, "PROBE blk-readall");
    let t2 = wait(&mut x, "PROBE blk-readall");
    let limited = t1 - t0;
    let unlimited = t2 - t1;
    assert!(
        limited >= Duration::from_millis(2800),
        "4 x the per-second budget read in {limited:?}"
    );
    assert!(
        unlimited < limited,
        "the unlimited drive took {unlimited:?}, the limited one {limited:?}"
    );
    x.wait_for_line("PROBE-DONE", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let status = x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
    let slow = drive_metrics(&metrics, "slow");
    let fast = drive_metrics(&metrics, "fast");
    assert!(
        slow["rate_limiter_throttled_events"].as_u64() > Some(0),
        "{slow}"
    );
    assert_eq!(fast["rate_limiter_throttled_events"], 0, "{fast}");
    assert_eq!(slow["read_bytes"], 4 * RATE, "{slow}");
}

#[test]
fn bandwidth_limit_holds_reads_to_the_rate() {
    limited_drive_is_slow_and_unlimited_is_not(json!({
        "bandwidth": {"size": RATE, "refill_time": 1000}
    }));
}

#[test]
fn ops_limit_holds_reads_to_the_rate() {
    // The same 4 MiB in 128 KiB requests is 32 operations; allow 8 a second.
    limited_drive_is_slow_and_unlimited_is_not(json!({
        "ops": {"size": 8, "refill_time": 1000}
    }));
}
