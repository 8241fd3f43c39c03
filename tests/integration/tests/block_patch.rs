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
    let dir = TempDir::new();
    let large = dir.write("large.img", vec![0u8; 256 * 1024]);
    swap_image(serde_json::json!({}), &large, 256 * 1024);
}

/// With io_uring (async engine, and flushes on a writeback cache) the swap also re-points
/// the ring's fixed file, from the seccomp-filtered VMM thread.
#[test]
fn a_swapped_image_reaches_the_guest_through_the_async_engine() {
    let dir = TempDir::new();
    let large = dir.write("large.img", vec![0u8; 256 * 1024]);
    let engine = serde_json::json!({"io_engine": "Async", "cache_type": "Writeback"});
    swap_image(engine, &large, 256 * 1024);
}

/// A raw block device as the new backing "file": sized by seeking to its end, on the
/// seccomp-filtered VMM thread. A zram device made for the test stands in for a disk.
#[test]
fn a_raw_block_device_can_be_swapped_in() {
    let Some(zram) = Zram::new(1 << 20) else {
        return;
    };
    swap_image(serde_json::json!({}), &zram.path(), 1 << 20);
}

/// A zram device made for one test (`/sys/class/zram-control`), removed on drop.
struct Zram {
    id: String,
}

impl Zram {
    /// `None` (the test is skipped) when this kernel has no zram hot-add, except under CI.
    #[allow(clippy::print_stderr, clippy::panic)]
    fn new(bytes: u64) -> Option<Zram> {
        let id = match std::fs::read_to_string("/sys/class/zram-control/hot_add") {
            Ok(id) => id.trim().to_owned(),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: no zram hot-add ({e})");
                return None;
            }
            Err(e) => panic!("zram hot-add unavailable under CI: {e}"),
        };
        let z = Zram { id };
        let size = format!("/sys/block/zram{}/disksize", z.id);
        if let Err(e) = std::fs::write(&size, bytes.to_string()) {
            panic!("{size}: {e}");
        }
        Some(z)
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/dev/zram{}", self.id).into()
    }
}

impl Drop for Zram {
    fn drop(&mut self) {
        // EBUSY while the kernel still releases references: retry for a bounded time.
        for _ in 0..200 {
            match std::fs::write("/sys/class/zram-control/hot_remove", &self.id) {
                Err(e) if e.raw_os_error() == Some(16) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => return,
            }
        }
    }
}

// Shared by the tests: a failure here fails the test that called it.
#[allow(clippy::unwrap_used)]
fn swap_image(engine: serde_json::Value, large: &std::path::Path, large_bytes: u64) {
    let images = TempDir::new();
    let small = images.write("small.img", vec![0u8; 64 * 1024]);

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
    api.start_instance(204);

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
        large_bytes / SECTOR,
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
    let new = std::fs::read(large).unwrap();
    assert!(new[300 * 512..316 * 512].iter().any(|&b| b != 0));
    assert!(std::fs::read(&small).unwrap().iter().all(|&b| b == 0));
}
