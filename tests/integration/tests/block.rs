//! virtio-blk end to end: the probe guest drives the device over virtio-mmio, the test checks
//! the image file on the host.

// A failed run is reported by panicking with the console and stderr.
#![allow(clippy::panic)]

mod block_common;

use block_common::*;
use serde_json::json;
use xenia_integration_tests::{TempDir, Xenia, BOOT_TIMEOUT};

/// 300 sectors from sector 64: three requests, one of them partial.
const FIRST: u64 = 64;
const COUNT: u64 = 300;

fn assert_pattern_on_disk(path: &std::path::Path, seed: u64, first: u64, count: u64) {
    let got = read_at(path, first * SECTOR, count * SECTOR);
    let want = pattern(seed, first, count);
    if let Some(i) = got.iter().zip(&want).position(|(g, w)| g != w) {
        panic!(
            "{}: byte {} (sector {}) is {:#x}, the pattern has {:#x}",
            path.display(),
            first * SECTOR + i as u64,
            first + i as u64 / SECTOR,
            got[i],
            want[i]
        );
    }
}

fn write_flush_and_compare(io_engine: &str) {
    let dir = TempDir::new();
    let img = zero_image(&dir, "disk.img", 4 << 20);
    let cmds = format!("blk-write:{FIRST}:{COUNT}:11,blk-flush,blk-read:{FIRST}:{COUNT}:11");
    let d = drive(
        "data",
        &img,
        json!({"cache_type": "Writeback", "io_engine": io_engine}),
    );
    let x = run_probe(&probe_config(&cmds, vec![d]), &[]);
    ok_line(&x, "blk-write");
    let flush = ok_line(&x, "blk-flush");
    assert_eq!(field(flush, "flush_offered"), Some("1"), "{flush}");
    ok_line(&x, "blk-read");
    assert_pattern_on_disk(&img, 11, FIRST, COUNT);
    // Nothing outside the written range changed.
    assert!(read_at(&img, 0, FIRST * SECTOR).iter().all(|&b| b == 0));
    assert!(read_at(&img, (FIRST + COUNT) * SECTOR, 64 * SECTOR)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn guest_writes_reach_the_image_sync_engine() {
    write_flush_and_compare("Sync");
}

#[test]
fn guest_writes_reach_the_image_async_engine() {
    write_flush_and_compare("Async");
}

#[test]
fn flushed_data_survives_kill_9() {
    let dir = TempDir::new();
    let img = zero_image(&dir, "disk.img", 4 << 20);
    let cmds = format!("blk-write:{FIRST}:{COUNT}:23,blk-flush,idle");
    let d = drive("data", &img, json!({"cache_type": "Writeback"}));
    let mut x = Xenia::start(&probe_config(&cmds, vec![d]), &[]);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let flush = x
        .wait_for_line("PROBE blk-flush", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(flush.contains(" ok "), "{flush}");
    x.signal(libc::SIGKILL);
    let status = x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status:?}"
    );
    ok_line(&x, "blk-write");
    assert_pattern_on_disk(&img, 23, FIRST, COUNT);
}

#[test]
fn read_only_drive_refuses_writes_and_keeps_the_image() {
    let dir = TempDir::new();
    let img = dir.write("ro.img", pattern(5, 0, 64));
    let before = checksum(&img);
    let d = drive("golden", &img, json!({"is_read_only": true}));
    let metrics = dir.path().join("metrics.json");
    let x = run_probe(
        &probe_config("blk-info,blk-write:0:8:9,blk-read:0:64:5", vec![d]),
        &["--metrics-path", &metrics.to_string_lossy()],
    );
    let info = ok_line(&x, "blk-info");
    assert_eq!(field(info, "ro"), Some("1"), "{info}");
    let write = result_line(&x, "blk-write");
    // VIRTIO_BLK_S_IOERR
    assert!(write.contains("FAIL status=1"), "{write}");
    ok_line(&x, "blk-read");
    assert_eq!(checksum(&img), before, "the read-only image changed");
    let m = drive_metrics(&metrics, "golden");
    assert_eq!(m["read_only_violations"], 1, "{m}");
    assert_eq!(m["write_bytes"], 0, "{m}");
    assert_eq!(m["read_bytes"], 64 * SECTOR, "{m}");
}

#[test]
fn get_id_returns_the_drive_id_and_capacity_matches_the_file() {
    let dir = TempDir::new();
    // 3 MiB and 5 sectors; a trailing partial sector is not addressable.
    let img = zero_image(&dir, "odd.img", (3 << 20) + 5 * SECTOR + 100);
    let d = drive("scratch-7", &img, json!({}));
    let x = run_probe(&probe_config("blk-id,blk-info", vec![d]), &[]);
    let id = ok_line(&x, "blk-id");
    assert_eq!(field(id, "serial"), Some("scratch-7"), "{id}");
    let info = ok_line(&x, "blk-info");
    let want = ((3u64 << 20) + 5 * SECTOR) / SECTOR;
    assert_eq!(field(info, "capacity"), Some(want.to_string().as_str()));
    assert_eq!(field(info, "addr"), Some("0xd0000000"), "{info}");
    assert_eq!(field(info, "irq"), Some("5"), "{info}");
    // Cache type Unsafe (the default) does not offer flushes.
    assert_eq!(field(info, "flush"), Some("0"), "{info}");
}

#[test]
fn eight_drives_at_once() {
    const N: u64 = 8;
    let dir = TempDir::new();
    let images: Vec<_> = (0..N)
        .map(|i| zero_image(&dir, &format!("d{i}.img"), (1 + i) << 20))
        .collect();
    let drives = images
        .iter()
        .enumerate()
        .map(|(i, p)| drive(&format!("disk{i}"), p, json!({})))
        .collect();
    let cmds: Vec<String> = (0..N)
        .flat_map(|i| {
            [
                format!("blk-id@{i}"),
                format!("blk-write@{i}:{}:16:{}", 8 * i, 100 + i),
                format!("blk-read@{i}:{}:16:{}", 8 * i, 100 + i),
            ]
        })
        .collect();
    let x = run_probe(&probe_config(&cmds.join(","), drives), &[]);
    for i in 0..N {
        let dev = format!("dev={i}");
        let id = x
            .lines_with("PROBE blk-id ok")
            .into_iter()
            .find(|l| l.contains(&dev))
            .unwrap_or_else(|| panic!("no blk-id for {dev}:\n{}", x.lines.join("\n")));
        assert_eq!(field(id, "serial"), Some(format!("disk{i}").as_str()));
        let reads = x.lines_with("PROBE blk-read ok");
        assert!(
            reads.iter().any(|l| l.contains(&dev)),
            "{}",
            x.lines.join("\n")
        );
        assert_pattern_on_disk(&images[i as usize], 100 + i, 8 * i, 16);
    }
}

#[test]
fn requests_are_served_on_the_io_thread() {
    let dir = TempDir::new();
    let img = zero_image(&dir, "disk.img", 1 << 20);
    let d = drive("data", &img, json!({}));
    // A request past the end is logged by the device where it is processed.
    let x = run_probe(
        &probe_config("blk-hostile:past-end", vec![d]),
        &["--level", "Debug"],
    );
    ok_line(&x, "blk-hostile");
    let log = x.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("virtio-blk data: bad request"))
        .unwrap_or_else(|| panic!("no bad-request log line:\n{log}"));
    assert!(line.contains(":io]"), "not logged by the io thread: {line}");
}
