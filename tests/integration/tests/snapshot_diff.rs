//! Diff snapshots with dirty page tracking: a diff merged onto its base (tools/snapshot-merge)
//! is byte for byte the Full snapshot taken at the same moment, also when xenia's own threads
//! wrote guest memory in between (a disk read loop), and it restores to a guest that carries on.

// Helpers outside #[test] functions fail the test with context.
#![allow(clippy::panic, clippy::unwrap_used)]

mod snapshot_common;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use snapshot_common::*;
use xenia_integration_tests::api::ApiClient;
use xenia_integration_tests::probe_lines::ok_line;
use xenia_integration_tests::{probe_args, tool_binary, TempDir, Xenia, BOOT_TIMEOUT};

/// Base (Full) now; then, after `between`, a Diff and a Full at the same paused moment.
fn base_diff_full(
    x: &mut Xenia,
    api: &ApiClient,
    between: impl FnOnce(&mut Xenia),
) -> [SnapshotFiles; 3] {
    let base = SnapshotFiles::new();
    pause_and_create(x, api, &base, "Full");
    api.expect("PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    between(x);
    let diff = SnapshotFiles::new();
    pause_and_create(x, api, &diff, "Diff");
    let full = SnapshotFiles::new();
    api.expect("PUT", "/snapshot/create", &full.create_body("Full"), 204);
    [base, diff, full]
}

fn merge(base: &SnapshotFiles, diff: &SnapshotFiles) {
    let out = Command::new(tool_binary("snapshot-merge"))
        .arg(&base.mem)
        .arg(&diff.state)
        .arg(&diff.mem)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[track_caller]
fn same_memory(a: &SnapshotFiles, b: &SnapshotFiles) {
    let (x, y) = (
        std::fs::read(&a.mem).unwrap(),
        std::fs::read(&b.mem).unwrap(),
    );
    assert_eq!(x.len(), y.len());
    let pages: Vec<usize> = x
        .chunks(4096)
        .zip(y.chunks(4096))
        .enumerate()
        .filter(|(_, (p, q))| p != q)
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = pages.first() {
        let at = first * 4096;
        let off = x[at..at + 4096]
            .iter()
            .zip(&y[at..at + 4096])
            .position(|(p, q)| p != q)
            .unwrap_or(0);
        let end = (at + off + 16).min(at + 4096);
        panic!(
            "memory differs in {} pages {:x?}; first at {:#x}: merged {:02x?} full {:02x?}",
            pages.len(),
            &pages[..pages.len().min(16)],
            at + off,
            &x[at + off..end],
            &y[at + off..end]
        );
    }
}

#[test]
fn a_diff_merged_onto_its_base_equals_a_full_snapshot_and_restores() {
    let (mut x, api) = Xenia::with_api(&[]);
    boot(&api, "memtick:4", 128, true);
    x.wait_for_line("PROBE memtick n=3 ", BOOT_TIMEOUT).unwrap();
    let [base, diff, full] = base_diff_full(&mut x, &api, |x| {
        let t = next_tick(x);
        x.wait_for_line(&format!("PROBE memtick n={} ", t.n + 5), BOOT_TIMEOUT)
            .unwrap();
    });
    let last = last_tick(&x).unwrap();
    drop(x);
    // The diff is small: a few pages of ticks, not the 4 MiB pattern.
    let meta = std::fs::metadata(&diff.mem).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < (2 << 20),
        "diff allocates {} bytes",
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512
    );
    merge(&base, &diff);
    same_memory(&base, &full);

    // The merged memory with the diff's state is the VM at the diff.
    let (mut y, api2) = Xenia::with_api(&[]);
    let body = json!({"snapshot_path": diff.state,
        "mem_backend": {"backend_type": "File", "backend_path": base.mem}, "resume_vm": true});
    api2.expect("PUT", "/snapshot/load", &body.to_string(), 204);
    let t = next_tick(&mut y);
    assert!(t.n > last.n && t.n <= last.n + 2, "{last:?} then {t:?}");
    assert_eq!((t.bad, t.sum), (0, expected_sum(t.n, t.pages)));
}

#[test]
fn pages_written_by_xenias_threads_are_in_the_diff() {
    let dir = TempDir::new();
    let image = dir.path().join("data.img");
    // A non-zero image, so the guest's read buffers change with every request.
    std::fs::write(
        &image,
        (0..4u32 << 20)
            .map(|i| (i % 251) as u8 + 1)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let drive = json!({"drive_id": "data", "path_on_host": image, "is_root_device": false,
                       "is_read_only": true, "io_engine": "Async"});
    let (mut x, api) = Xenia::with_api(&[]);
    boot_with(
        &api,
        &probe_args("blk-readall:512000:16"),
        128,
        true,
        &[drive],
        &[],
    );
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT).unwrap();
    let _ = x.lines_within(Duration::from_millis(300));
    let [base, diff, full] = base_diff_full(&mut x, &api, |x| {
        let _ = x.lines_within(Duration::from_millis(700));
    });
    assert!(
        x.lines_with("PROBE blk-readall").is_empty(),
        "the read loop ended too early"
    );
    merge(&base, &diff);
    same_memory(&base, &full);
    let (mut y, api2) = Xenia::with_api(&[]);
    let body = json!({"snapshot_path": diff.state,
        "mem_backend": {"backend_type": "File", "backend_path": base.mem}, "resume_vm": true});
    api2.expect("PUT", "/snapshot/load", &body.to_string(), 204);
    assert!(
        y.wait_exit(block_timeout()).unwrap().success(),
        "{}",
        y.stderr()
    );
    let line = ok_line(&y, "blk-readall");
    assert!(line.contains("sectors=512000"), "{line}");
}

fn block_timeout() -> Duration {
    Duration::from_secs(120)
}
