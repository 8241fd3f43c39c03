//! Clone disks: 50 VMs at once, each on its own qcow2 overlay of one shared raw base. The
//! host stores the base once plus 50 small overlays.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod block_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use block_common::*;
use serde_json::json;
use xenia_integration_tests::{boot_config, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};

const VMS: u64 = 50;
const BASE_BYTES: u64 = 64 << 20;

/// Bytes the file system really holds for `path`.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .blocks()
        * 512
}

#[test]
fn fifty_vms_on_fifty_overlays_of_one_base_store_the_base_once() {
    let dir = TempDir::new();
    // A fully allocated base: the pattern on its first MiB, 0xEE after.
    let mut bytes = pattern(3, 0, 2048);
    bytes.resize(BASE_BYTES as usize, 0xEE);
    let base = dir.write("base.raw", &bytes);
    drop(bytes);
    let base_sum = checksum(&base);

    let mut vms = Vec::new();
    for i in 0..VMS {
        let ov = qcow2_overlay(dir.path(), &format!("vm{i}.qcow2"), "base.raw", "raw", None);
        // Each clone reads the shared base and writes its own data (seed = its index).
        let cmds = format!("blk-read:0:64:3,blk-write:4096:64:{i},blk-flush,blk-read:4096:64:{i}");
        let mut c = boot_config(&probe().pvh, &probe_args(&cmds), 1, 64);
        c["drives"] = json!([drive(
            "root",
            &ov,
            json!({"image_format": "Qcow2", "cache_type": "Writeback"})
        )]);
        vms.push((ov, Xenia::start(&c, &[])));
    }
    for (ov, x) in &mut vms {
        x.wait_for_line("PROBE-DONE", BOOT_TIMEOUT + RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: {e}", ov.display()));
        let status = x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.code(), Some(0), "{}: {}", ov.display(), x.stderr());
        let bad: Vec<_> = x
            .lines_with("PROBE blk-")
            .into_iter()
            .filter(|l| !l.contains(" ok "))
            .collect();
        assert!(bad.is_empty(), "{}: {bad:?}", ov.display());
    }

    let overlays: u64 = vms.iter().map(|(ov, _)| allocated(ov)).sum();
    let base_alloc = allocated(&base);
    eprintln!(
        "fan-out: base {} KiB allocated, {VMS} overlays {} KiB in total ({} KiB each)",
        base_alloc / 1024,
        overlays / 1024,
        overlays / VMS / 1024
    );
    assert!(
        base_alloc >= BASE_BYTES,
        "the base should be fully allocated"
    );
    // 50 full copies would be 3.2 GiB; the overlays together stay below one base.
    assert!(overlays < BASE_BYTES, "overlays hold {overlays} bytes");
    assert_eq!(checksum(&base), base_sum, "the shared base changed");
    // Spot-check with qemu-img: every overlay is consistent, three are read back in full.
    for (i, (ov, _)) in vms.iter().enumerate() {
        assert_qcow2_clean(ov);
        if i % 20 == 7 {
            let got = qcow2_contents(ov, dir.path());
            let at = 4096 * SECTOR as usize;
            assert!(
                got[at..at + 64 * 512] == pattern(i as u64, 4096, 64)[..],
                "vm{i}: its write is missing"
            );
            assert!(
                got[..64 * 512] == pattern(3, 0, 64)[..],
                "vm{i}: base data differs"
            );
        }
    }
}
