//! qcow2 overlays end to end: the probe guest reads through and writes into an overlay made
//! by `qemu-img` over a raw base; qemu-img then checks and reads the result.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod block_common;

use std::path::Path;

use block_common::*;
use serde_json::json;
use xenia_integration_tests::{probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};

const BASE_SEED: u64 = 3;
/// The base holds the pattern on its first 1 MiB, zeroes on the rest of its 4 MiB.
const BASE_PATTERN_SECTORS: u64 = 2048;
const BASE_BYTES: u64 = 4 << 20;

fn base_image(dir: &TempDir) -> std::path::PathBuf {
    let mut bytes = pattern(BASE_SEED, 0, BASE_PATTERN_SECTORS);
    bytes.resize(BASE_BYTES as usize, 0);
    dir.write("base.raw", bytes)
}

fn qcow2_drive(id: &str, path: &Path, extra: serde_json::Value) -> serde_json::Value {
    let mut d = drive(
        id,
        path,
        json!({"image_format": "Qcow2", "cache_type": "Writeback"}),
    );
    if let (Some(d), serde_json::Value::Object(extra)) = (d.as_object_mut(), extra) {
        d.extend(extra);
    }
    d
}

/// The expected virtual disk: the base with the guest's pattern over `[first, first+count)`.
fn expected(seed: u64, first: u64, count: u64) -> Vec<u8> {
    let mut v = pattern(BASE_SEED, 0, BASE_PATTERN_SECTORS);
    v.resize(BASE_BYTES as usize, 0);
    let at = (first * SECTOR) as usize;
    v[at..at + (count * SECTOR) as usize].copy_from_slice(&pattern(seed, first, count));
    v
}

#[test]
fn flushed_overlay_writes_survive_kill_9_and_qemu_reads_them() {
    let dir = TempDir::new();
    let base = base_image(&dir);
    let base_sum = checksum(&base);
    let ov = qcow2_overlay(dir.path(), "vm0.qcow2", "base.raw", "raw", None);
    // Reads fall through to the base; writes cross a cluster boundary (sector 128 = 64 KiB).
    let cmds = "blk-info,blk-read:0:64:3,blk-write:100:300:23,blk-flush,idle";
    let mut x = Xenia::start(
        &probe_config(cmds, vec![qcow2_drive("data", &ov, json!({}))]),
        &[],
    );
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let flush = x
        .wait_for_line("PROBE blk-flush", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        flush.contains(" ok ") && flush.contains("flush_offered=1"),
        "{flush}"
    );
    x.signal(libc::SIGKILL);
    x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let info = ok_line(&x, "blk-info");
    assert_eq!(field(info, "capacity"), Some("8192"), "{info}");
    ok_line(&x, "blk-read");
    ok_line(&x, "blk-write");

    // Outside reader: clean image, the expected contents, base untouched, overlay small.
    assert_qcow2_clean(&ov);
    let got = qcow2_contents(&ov, dir.path());
    assert!(got == expected(23, 100, 300), "qemu-img convert differs");
    assert_eq!(checksum(&base), base_sum, "the base image changed");
    let used = std::fs::metadata(&ov).unwrap().len();
    assert!(
        used < 1 << 20,
        "overlay is {used} bytes after a 150 KiB write"
    );

    // A fresh xenia reads the guest's data and the base through the same overlay.
    let cmds = "blk-read:100:300:23,blk-read:0:100:3,blk-read:400:1648:3";
    let x = run_probe(
        &probe_config(cmds, vec![qcow2_drive("data", &ov, json!({}))]),
        &[],
    );
    let reads = x.lines_with("PROBE blk-read");
    assert_eq!(reads.len(), 3, "{reads:?}");
    assert!(reads.iter().all(|l| l.contains(" ok ")), "{reads:?}");
}

#[test]
fn a_raw_image_holding_a_qcow2_header_stays_raw() {
    // The header names a host file as backing file and claims 64 MiB: read as raw, the guest
    // sees a 1 MiB disk whose bytes are exactly the file's, across boots, and never the
    // "secret" backing file's data (pattern seed 8 at sectors 500..516).
    let dir = TempDir::new();
    let mut secret_bytes = vec![0u8; 1 << 20];
    secret_bytes[500 * 512..516 * 512].copy_from_slice(&pattern(8, 500, 16));
    let secret = dir.write("secret.raw", secret_bytes);
    let q = qcow2_overlay(
        dir.path(),
        "hdr.qcow2",
        &secret.to_string_lossy(),
        "raw",
        Some("64M"),
    );
    let mut bytes = std::fs::read(&q).unwrap();
    bytes.resize(1 << 20, 0);
    let img = dir.write("disk.img", &bytes);
    for round in 0..2 {
        let cmds = if round == 0 {
            "blk-info,blk-read:500:16:8,blk-write:1000:16:9,blk-flush"
        } else {
            "blk-info,blk-read:500:16:8,blk-read:1000:16:9"
        };
        let d = drive("data", &img, json!({"cache_type": "Writeback"}));
        let x = run_probe(&probe_config(cmds, vec![d]), &[]);
        let info = ok_line(&x, "blk-info");
        assert_eq!(
            field(info, "capacity"),
            Some("2048"),
            "round {round}: {info}"
        );
        // The secret does not show through: sector 500 of the raw file is zeroes.
        let peek = result_line(&x, "blk-read");
        assert!(peek.contains("FAIL mismatch"), "round {round}: {peek}");
        if round == 0 {
            ok_line(&x, "blk-write");
        } else {
            let reads = x.lines_with("PROBE blk-read");
            assert!(reads.len() == 2 && reads[1].contains(" ok "), "{reads:?}");
        }
    }
    let now = std::fs::read(&img).unwrap();
    assert!(
        now[..1000 * 512] == bytes[..1000 * 512],
        "header area changed"
    );
    assert!(
        now[1000 * 512..1016 * 512] == pattern(9, 1000, 16)[..],
        "write missing"
    );
}

#[test]
fn read_only_overlay_refuses_writes_and_stays_unchanged() {
    let dir = TempDir::new();
    base_image(&dir);
    let ov = qcow2_overlay(dir.path(), "ro.qcow2", "base.raw", "raw", None);
    let before = checksum(&ov);
    let d = qcow2_drive("golden", &ov, json!({"is_read_only": true}));
    let x = run_probe(
        &probe_config("blk-info,blk-write:0:8:9,blk-read:0:64:3", vec![d]),
        &[],
    );
    assert_eq!(field(ok_line(&x, "blk-info"), "ro"), Some("1"));
    let write = result_line(&x, "blk-write");
    assert!(write.contains("FAIL status=1"), "{write}");
    ok_line(&x, "blk-read");
    assert_eq!(checksum(&ov), before, "the read-only overlay changed");
}

#[test]
fn patch_swaps_the_top_overlay_and_the_config_shows_the_format() {
    let dir = TempDir::new();
    base_image(&dir);
    let a = qcow2_overlay(dir.path(), "a.qcow2", "base.raw", "raw", None);
    // A second overlay of the same base, larger than it: the guest sees the new size.
    let b = qcow2_overlay(dir.path(), "b.qcow2", "base.raw", "raw", Some("8M"));
    let (mut x, api) = Xenia::with_api(&[]);
    let d = qcow2_drive("data", &a, json!({}));
    api.expect("PUT", "/drives/data", &d.to_string(), 204);
    let cmds = "blk-await-change:60000,blk-write:12000:16:7,blk-read:12000:16:7,blk-read:0:64:3";
    let boot = json!({"kernel_image_path": probe().pvh, "boot_args": probe_args(cmds)});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    api.start_instance(204);
    let ready = x
        .wait_for_line("PROBE blk-await-change ready", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.contains("capacity=8192"), "{ready}");
    let cfg = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(cfg["drives"][0]["image_format"], "Qcow2", "{cfg}");
    let patch = json!({"drive_id": "data", "path_on_host": b});
    let r = api.request("PATCH", "/drives/data", &patch.to_string());
    assert!(
        r.as_ref().is_ok_and(|r| r.status == 204),
        "PATCH: {r:?}\nstderr:\n{}",
        x.stderr()
    );
    let cfg = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(cfg["drives"][0]["path_on_host"], json!(b), "{cfg}");
    let changed = x
        .wait_for_line("PROBE blk-await-change ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        changed.contains(" ok ") && changed.contains("capacity=16384"),
        "{changed}"
    );
    x.wait_for_line("PROBE-DONE", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let reads = x.lines_with("PROBE blk-read");
    assert!(
        reads.len() == 2 && reads.iter().all(|l| l.contains(" ok ")),
        "{reads:?}"
    );
    x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    // The write landed in b (past a's end), a stayed empty of guest data.
    let got = qcow2_contents(&b, dir.path());
    assert!(
        got[12000 * 512..12016 * 512] == pattern(7, 12000, 16)[..],
        "the guest's write is not in the new overlay"
    );
    assert_qcow2_clean(&a);
    assert_qcow2_clean(&b);
}

#[test]
fn a_rate_limited_overlay_is_held_to_its_budget() {
    // 512 KiB/s, bucket starting full: reading 2 MiB through the overlay (from the base)
    // takes at least ~3 s; the data is right and the limiter counted throttled requests.
    let dir = TempDir::new();
    base_image(&dir);
    let ov = qcow2_overlay(dir.path(), "slow.qcow2", "base.raw", "raw", None);
    let limiter = json!({"bandwidth": {"size": 512 * 1024, "refill_time": 1000}});
    let d = qcow2_drive("slow", &ov, json!({"rate_limiter": limiter}));
    let metrics = dir.path().join("metrics.json");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let cmds = "blk-info,blk-readall:4096:256,blk-read:0:2048:3";
    let mut x = Xenia::start(
        &probe_config(cmds, vec![d]),
        &["--metrics-path", &metrics_arg],
    );
    x.wait_for_line("PROBE blk-info", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    let all = x
        .wait_for_line("PROBE blk-readall", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let took = t0.elapsed();
    assert!(all.contains(" ok "), "{all}");
    assert!(
        took >= std::time::Duration::from_millis(2800),
        "2 MiB at 512 KiB/s in {took:?}"
    );
    x.wait_for_line("PROBE-DONE", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    ok_line(&x, "blk-read");
    let m = drive_metrics(&metrics, "slow");
    assert!(
        m["rate_limiter_throttled_events"].as_u64().unwrap_or(0) > 0,
        "{m}"
    );
}
