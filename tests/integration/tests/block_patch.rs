//! `PATCH /drives/{id}` on a running VM: the guest sees the new backing file.

use xenia_integration_tests::probe_lines::field;
use xenia_integration_tests::{probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};

const SECTOR: u64 = 512;

/// A numeric `key=value` of a probe line (`u64::MAX` when absent, which no assertion expects).
fn number(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn a_swapped_image_reaches_the_guest_with_its_new_capacity_and_data() {
    swap_image(serde_json::json!({}));
}

/// With io_uring (async engine, and flushes on a writeback cache) the swap also re-points
/// the ring's fixed file, from the seccomp-filtered VMM thread.
#[test]
fn a_swapped_image_reaches_the_guest_through_the_async_engine() {
    swap_image(serde_json::json!({"io_engine": "Async", "cache_type": "Writeback"}));
}

// Shared by both tests: a failure here fails the test that called it.
#[allow(clippy::unwrap_used)]
fn swap_image(engine: serde_json::Value) {
    let images = TempDir::new();
    let small = images.write("small.img", vec![0u8; 64 * 1024]);
    let large = images.path().join("large.img");
    std::fs::write(&large, vec![0u8; 256 * 1024]).unwrap();

    let (mut x, api) = Xenia::with_api(&[]);
    let mut drive = serde_json::json!({"drive_id": "data", "path_on_host": small,
        "is_root_device": false, "is_read_only": false});
    if let (Some(d), Some(extra)) = (drive.as_object_mut(), engine.as_object()) {
        d.extend(extra.clone());
    }
    api.expect("PUT", "/drives/data", &drive.to_string(), 204);
    // Wait for the change, then write a pattern past the old end: it can only land if the
    // device really serves the new, larger file.
    let cmds = "blk-await-change:60000,blk-write:300:16:7,blk-flush,blk-read:300:16:7";
    let boot = serde_json::json!({"kernel_image_path": probe().pvh, "boot_args": probe_args(cmds)});
    api.expect("PUT", "/boot-source", &boot.to_string(), 204);
    api.expect(
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        204,
    );

    let ready = x
        .wait_for_line("PROBE blk-await-change ready", BOOT_TIMEOUT)
        .unwrap();
    assert_eq!(number(&ready, "capacity"), 64 * 1024 / SECTOR, "{ready}");

    let patch = serde_json::json!({"drive_id": "data", "path_on_host": large});
    api.expect("PATCH", "/drives/data", &patch.to_string(), 204);

    let changed = x
        .wait_for_line("PROBE blk-await-change ", BOOT_TIMEOUT)
        .unwrap();
    assert!(changed.contains(" ok "), "{changed}\n{:#?}", x.lines);
    assert_eq!(
        number(&changed, "capacity"),
        256 * 1024 / SECTOR,
        "{changed}"
    );
    assert_eq!(number(&changed, "config_interrupt"), 1, "{changed}");
    let read = x.wait_for_line("PROBE blk-read ", BOOT_TIMEOUT).unwrap();
    assert!(read.starts_with("PROBE blk-read ok"), "{:#?}", x.lines);
    x.wait_exit(BOOT_TIMEOUT).unwrap();
    assert!(
        x.lines.iter().any(|l| l.starts_with("PROBE blk-flush ok")),
        "{:#?}",
        x.lines
    );

    // The writes went to the new file, none to the old one.
    let new = std::fs::read(&large).unwrap();
    assert!(new[300 * 512..316 * 512].iter().any(|&b| b != 0));
    assert!(std::fs::read(&small).unwrap().iter().all(|&b| b == 0));
}
