//! A hostile guest on virtio-blk: malformed descriptor chains and queue set-ups. xenia stays
//! up, the device answers with an error status or sets DEVICE_NEEDS_RESET (or refuses the
//! queue), and a good request afterwards succeeds. The probe checks the recovery itself
//! (`then=ok`); the test also checks the data and that xenia logged each rejection.

// A failed run is reported by panicking with the console and stderr.
#![allow(clippy::panic)]

mod block_common;

use block_common::*;
use serde_json::json;
use xenia_integration_tests::TempDir;

/// Each kind, what the device must have done, and the log line it leaves.
const KINDS: [(&str, &str, &str); 10] = [
    ("desc-oob", "answered", "bad request"),
    ("loop", "answered", "bad request"),
    ("wo-header", "answered", "bad request"),
    ("zero-len", "answered", "bad request"),
    ("past-end", "answered", "bad request"),
    ("bad-type", "answered", "bad request"),
    ("head-oob", "needs-reset", "queue broken"),
    ("avail-jump", "needs-reset", "queue broken"),
    ("qsize-npot", "refused", "refused queue ready"),
    ("ring-oob", "refused", "refused queue ready"),
];

fn hostile(io_engine: &str) {
    let dir = TempDir::new();
    let img = zero_image(&dir, "disk.img", 1 << 20);
    let mut cmds: Vec<String> = KINDS
        .iter()
        .map(|(k, _, _)| format!("blk-hostile:{k}"))
        .collect();
    cmds.push("blk-write:0:8:77".into());
    cmds.push("blk-read:0:8:77".into());
    let d = drive("victim", &img, json!({"io_engine": io_engine}));
    // run_probe asserts the reset came from the guest (exit 0): xenia survived every kind.
    let metrics = dir.path().join("metrics.json");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let x = run_probe(
        &probe_config(&cmds.join(","), vec![d]),
        &["--level", "Debug", "--metrics-path", &metrics_arg],
    );
    let results = x.lines_with("PROBE blk-hostile");
    assert_eq!(results.len(), KINDS.len(), "{}", x.lines.join("\n"));
    let log = x.stderr();
    for ((kind, outcome, logged), line) in KINDS.iter().zip(results) {
        assert!(line.starts_with("PROBE blk-hostile ok"), "{line}");
        assert_eq!(field(line, "kind"), Some(*kind), "{line}");
        assert_eq!(field(line, "outcome"), Some(*outcome), "{line}");
        assert_eq!(field(line, "then"), Some("ok"), "{line}");
        assert!(
            log.contains(logged),
            "`{logged}` not logged for {kind}:\n{log}"
        );
    }
    ok_line(&x, "blk-write");
    ok_line(&x, "blk-read");
    assert_eq!(read_at(&img, 0, 8 * SECTOR), pattern(77, 0, 8));
    // Each malformed request was counted where it was seen: on the io thread.
    let rejected = log
        .lines()
        .filter(|l| l.contains("virtio-blk victim: bad request") && l.contains(":io]"))
        .count();
    assert!(rejected >= 6, "{rejected} rejections logged:\n{log}");
    // The six malformed requests are counted (with or without a status byte to answer in),
    // the two broken queues too.
    let m = drive_metrics(&metrics, "victim");
    let count = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k} in {m}"));
    assert!(
        count("invalid_requests") + count("dropped_requests") >= 6,
        "{m}"
    );
    assert!(count("queue_errors") >= 2, "{m}");
    assert!(count("write_count") >= 1 && count("read_count") >= 1, "{m}");
}

#[test]
fn hostile_requests_sync_engine() {
    hostile("Sync");
}

#[test]
fn hostile_requests_async_engine() {
    hostile("Async");
}
