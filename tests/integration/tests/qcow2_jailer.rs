//! qcow2 overlays in jails: two tenants each boot from their own overlay over one golden
//! base, hard-linked into both jails read-only (root-owned, 0644); a backing name that
//! points out of the jail is refused. Needs root and cgroup v1 (as `jailer`).

#![allow(clippy::panic)]

#[path = "block_common/mod.rs"]
mod block_common;
mod jail_common;

use std::path::Path;

use serde_json::json;

use block_common::{assert_qcow2_clean, checksum, pattern, qcow2_contents, qemu_img, SECTOR};
use jail_common::Jail;
use xenia_integration_tests::{boot_config, probe, probe_args, TempDir, BOOT_TIMEOUT};

fn qcow2_drive() -> serde_json::Value {
    json!([{"drive_id": "root", "path_on_host": "/vm.qcow2", "is_root_device": false,
            "image_format": "Qcow2", "cache_type": "Writeback"}])
}

/// The probe, the config and an overlay named `vm.qcow2` over `backing` in the jail.
fn provision(jail: &Jail, cmds: &str, backing: &str) {
    jail.copy_in(&probe().pvh, "probe.elf");
    let mut c = boot_config(Path::new("/probe.elf"), &probe_args(cmds), 1, 64);
    c["drives"] = qcow2_drive();
    jail.put("vm.json", c.to_string());
    let ov = jail.root().join("vm.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        backing,
        "-F",
        "raw",
        &ov.to_string_lossy(),
        "4M",
    ]);
    std::os::unix::fs::chown(&ov, Some(jail.uid), Some(jail.uid)).expect("chown overlay");
}

#[test]
fn two_tenants_boot_from_overlays_of_one_golden_base_hard_linked_into_their_jails() {
    let golden_dir = TempDir::new();
    let mut bytes = pattern(3, 0, 2048);
    bytes.resize(4 << 20, 0);
    let golden = golden_dir.write("golden.raw", &bytes);
    let sum = checksum(&golden);
    let mut tenants = [Jail::new("qcow2-a", 10161), Jail::new("qcow2-b", 10162)];
    for (i, jail) in tenants.iter_mut().enumerate() {
        // Same file system (both under the temp dir): a hard link, not a copy.
        std::fs::hard_link(&golden, jail.root().join("base.raw")).expect("hard link the base");
        let cmds = format!("blk-read:0:64:3,blk-write:1000:32:{i},blk-flush,blk-read:1000:32:{i}");
        provision(jail, &cmds, "base.raw");
    }
    for jail in &mut tenants {
        let mut x = jail.start(
            &["--cgroup-version", "1", "--cgroup", "pids.max=64"],
            &["--no-api", "--config-file", "/vm.json"],
        );
        x.wait_for_line("PROBE-DONE", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n{}", x.stderr()));
        let status = x.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
        let bad: Vec<_> = x
            .lines_with("PROBE blk-")
            .into_iter()
            .filter(|l| !l.contains(" ok "))
            .collect();
        assert!(bad.is_empty(), "{bad:?}");
    }
    assert_eq!(checksum(&golden), sum, "the golden base changed");
    for (i, jail) in tenants.iter().enumerate() {
        let ov = jail.root().join("vm.qcow2");
        assert_qcow2_clean(&ov);
        let got = qcow2_contents(&ov, golden_dir.path());
        let at = (1000 * SECTOR) as usize;
        assert!(
            got[at..at + 32 * 512] == pattern(i as u64, 1000, 32)[..],
            "tenant {i}: data missing"
        );
    }
}

#[test]
fn a_jailed_overlay_whose_backing_file_is_outside_the_jail_is_refused() {
    let golden_dir = TempDir::new();
    let golden = golden_dir.write("golden.raw", vec![0x77u8; 1 << 20]);
    let mut jail = Jail::new("qcow2-out", 10163);
    // The host path of a file outside the jail, recorded as the backing file.
    provision(&jail, "blk-info", &golden.to_string_lossy());
    let mut x = jail.start(
        &["--cgroup-version", "1", "--cgroup", "pids.max=64"],
        &["--no-api", "--config-file", "/vm.json"],
    );
    let status = x.wait_exit(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(1), "stderr:\n{}", x.stderr());
    let err = x.stderr();
    assert!(
        err.contains("drives[root]")
            && (err.contains("lies outside") || err.contains("No such file")),
        "{err}"
    );
}
