//! Hostile qcow2 images: each is a clear 400 at `PUT /drives` (or exit 1 from a config file,
//! or an I/O error to the guest), never a crash. Images are made by qemu-img, then damaged.

// Helpers outside #[test] functions fail the test with the console attached.
#![allow(clippy::panic)]

mod block_common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use block_common::*;
use serde_json::json;
use xenia_integration_tests::{TempDir, Xenia};

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("test image");
    f.write_all_at(bytes, at).expect("test image");
}

fn be64_at(path: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(path)
        .expect("test image")
        .read_exact_at(&mut b, at)
        .expect("test image");
    u64::from_be_bytes(b)
}

fn plain(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", "qcow2", &p.to_string_lossy(), "4M"]);
    p
}

/// Every hostile image with the words its 400 must contain.
fn hostile_images(dir: &TempDir, outside: &TempDir) -> Vec<(PathBuf, &'static str)> {
    let d = dir.path();
    std::fs::write(d.join("base.raw"), vec![0u8; 1 << 20]).expect("test image");
    let mut v = Vec::new();

    let p = plain(d, "truncated.qcow2");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("test image")
        .set_len(40)
        .expect("test image");
    v.push((p, "too short"));

    let p = plain(d, "tables-cut.qcow2");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("test image")
        .set_len(65536)
        .expect("test image");
    v.push((p, "past the end"));

    let a = qcow2_overlay(d, "loop-a.qcow2", "base.raw", "raw", None);
    qcow2_overlay(d, "loop-b.qcow2", "loop-a.qcow2", "qcow2", None);
    qemu_img(&[
        "rebase",
        "-q",
        "-u",
        "-b",
        "loop-b.qcow2",
        "-F",
        "qcow2",
        &a.to_string_lossy(),
    ]);
    v.push((a, "loops"));

    std::fs::write(outside.path().join("host.raw"), vec![0x42u8; 1 << 20]).expect("test image");
    let host = outside.path().join("host.raw");
    v.push((
        qcow2_overlay(d, "escape-abs.qcow2", &host.to_string_lossy(), "raw", None),
        "lies outside",
    ));
    std::os::unix::fs::symlink(&host, d.join("link.raw")).expect("test image");
    v.push((
        qcow2_overlay(d, "escape-link.qcow2", "link.raw", "raw", None),
        "lies outside",
    ));
    let up = format!(
        "../{}/host.raw",
        outside
            .path()
            .file_name()
            .expect("test image")
            .to_string_lossy()
    );
    v.push((
        qcow2_overlay(d, "escape-dotdot.qcow2", &up, "raw", None),
        "lies outside",
    ));

    let p = plain(d, "huge.qcow2");
    patch(&p, 24, &(1u64 << 60).to_be_bytes());
    v.push((p, "virtual size"));

    let p = plain(d, "reftable.qcow2");
    patch(&p, 56, &u32::MAX.to_be_bytes());
    v.push((p, "refcount table"));

    let p = plain(d, "l1.qcow2");
    patch(&p, 36, &u32::MAX.to_be_bytes());
    v.push((p, "L1 table"));

    let p = plain(d, "corrupt.qcow2");
    patch(&p, 72, &2u64.to_be_bytes());
    v.push((p, "marked corrupt"));

    v.push((d.join("base.raw"), "not a qcow2 image"));
    v
}

#[test]
fn put_drives_refuses_each_hostile_image_with_a_clear_400() {
    let dir = TempDir::new();
    let outside = TempDir::new();
    let images = hostile_images(&dir, &outside);
    let (mut x, api) = Xenia::with_api(&[]);
    for (path, words) in &images {
        let d = drive("data", path, json!({"image_format": "Qcow2"}));
        let r = api.call("PUT", "/drives/data", &d.to_string());
        assert_eq!(r.status, 400, "{}: {r:?}", path.display());
        let fault = r.fault();
        assert!(
            fault.contains(words) && fault.contains("drives[data]"),
            "{}: `{fault}` lacks `{words}`",
            path.display()
        );
    }
    // The Async engine cannot serve qcow2.
    let good = qcow2_overlay(dir.path(), "good.qcow2", "base.raw", "raw", None);
    let d = drive(
        "data",
        &good,
        json!({"image_format": "Qcow2", "io_engine": "Async"}),
    );
    let r = api.call("PUT", "/drives/data", &d.to_string());
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.fault().contains("io_engine Sync"), "{}", r.fault());
    // Still serving: a good overlay is accepted and nothing was recorded before it.
    let d = drive("data", &good, json!({"image_format": "Qcow2"}));
    api.expect("PUT", "/drives/data", &d.to_string(), 204);
    let cfg = api.expect("GET", "/vm/config", "", 200).json();
    assert_eq!(cfg["drives"].as_array().map(Vec::len), Some(1), "{cfg}");
    assert!(
        x.wait_exit(std::time::Duration::from_millis(10)).is_err(),
        "xenia exited"
    );
}

#[test]
fn a_config_file_with_a_looping_chain_exits_1_naming_the_drive() {
    let dir = TempDir::new();
    let outside = TempDir::new();
    let images = hostile_images(&dir, &outside);
    let (looping, _) = images.iter().find(|(_, w)| *w == "loops").unwrap();
    let config = probe_config(
        "",
        vec![drive("root", looping, json!({"image_format": "Qcow2"}))],
    );
    let mut x = Xenia::start(&config, &[]);
    let status = x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(1), "{status:?}");
    let err = x.stderr();
    assert!(
        err.contains("drives[root]") && err.contains("loops"),
        "{err}"
    );
}

#[test]
fn a_data_cluster_past_the_end_of_the_file_is_an_io_error_or_zeroes_to_the_guest() {
    let dir = TempDir::new();
    let p = plain(dir.path(), "l2.qcow2");
    // Allocate cluster 0 through xenia itself, then point its L2 entry 1 PiB away.
    let cmds = "blk-write:0:8:5,blk-flush";
    let d = drive(
        "data",
        &p,
        json!({"image_format": "Qcow2", "cache_type": "Writeback"}),
    );
    run_probe(&probe_config(cmds, vec![d.clone()]), &[]);
    let l1 = be64_at(&p, 40);
    let l2 = be64_at(&p, l1) & 0x00ff_ffff_ffff_fe00;
    patch(&p, l2, &((1u64 << 63) | (1u64 << 50)).to_be_bytes());
    let x = run_probe(
        &probe_config(
            "blk-write:0:8:6,blk-read:0:8:6,blk-write:200:8:7,blk-read:200:8:7",
            vec![d],
        ),
        &[],
    );
    // ext4 refuses a write 1 PiB into a file: the guest gets IOERR, and reads there are
    // zeroes or IOERR; the rest of the disk keeps working.
    let writes = x.lines_with("PROBE blk-write");
    let reads = x.lines_with("PROBE blk-read");
    assert!(writes[0].contains("FAIL status=1"), "{writes:?}");
    assert!(reads[0].contains("FAIL"), "{reads:?}");
    assert!(
        writes[1].contains(" ok ") && reads[1].contains(" ok "),
        "{writes:?} {reads:?}"
    );
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 30);
}
