//! Helpers shared by the `block*` tests: disk images, drive configs, the probe's data pattern.

// Not every test file uses every helper; helpers fail the test with the console attached.
#![allow(dead_code, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use xenia_integration_tests::{boot_config, probe, probe_args, TempDir, Xenia, BOOT_TIMEOUT};

pub const SECTOR: u64 = 512;
/// Generous bound for a probe run that moves a few MiB.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

const PATTERN_A: u64 = 0x9e37_79b9_7f4a_7c15;
const PATTERN_B: u64 = 0xc2b2_ae3d_27d4_eb4f;
const PATTERN_C: u64 = 0x1656_67b1_9e37_79f9;

/// The probe's data pattern (its README): little-endian 64-bit word `i` of disk sector `s`
/// is `seed*A + s*B + i*C` (mod 2^64).
pub fn pattern(seed: u64, first: u64, sectors: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((sectors * SECTOR) as usize);
    for s in first..first + sectors {
        let base = seed
            .wrapping_mul(PATTERN_A)
            .wrapping_add(s.wrapping_mul(PATTERN_B));
        for i in 0..SECTOR / 8 {
            out.extend(base.wrapping_add(i.wrapping_mul(PATTERN_C)).to_le_bytes());
        }
    }
    out
}

/// A sparse (all-zero) image of `bytes` bytes.
pub fn zero_image(dir: &TempDir, name: &str, bytes: u64) -> PathBuf {
    let path = dir.path().join(name);
    let f = std::fs::File::create(&path).expect("create image");
    f.set_len(bytes).expect("size image");
    path
}

/// `len` bytes of `path` from byte `offset`.
pub fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open image");
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).expect("read image");
    buf
}

/// FNV-1a 64 of a whole file.
pub fn checksum(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("read image");
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A drive entry; `extra` fields are merged in (e.g. `is_read_only`, `rate_limiter`).
pub fn drive(id: &str, path: &Path, extra: Value) -> Value {
    let mut d = json!({"drive_id": id, "path_on_host": path, "is_root_device": false});
    if let (Value::Object(d), Value::Object(extra)) = (&mut d, extra) {
        d.extend(extra);
    }
    d
}

/// A probe boot (PVH entry, 1 vCPU, 128 MiB) running `cmds` with `drives`.
pub fn probe_config(cmds: &str, drives: Vec<Value>) -> Value {
    let mut c = boot_config(&probe().pvh, &probe_args(cmds), 1, 128);
    c["drives"] = Value::Array(drives);
    c
}

/// Boots, waits for `PROBE-DONE` and a clean exit; returns the console.
pub fn run_probe(config: &Value, extra_args: &[&str]) -> Xenia {
    let mut x = Xenia::start(config, extra_args);
    x.wait_for_line("PROBE-BOOT-OK", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    x.wait_for_line("PROBE-DONE", RUN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let status = x.wait_exit(RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", x.stderr());
    x
}

// Each test binary that includes this module uses a different subset.
#[allow(unused_imports)]
pub use xenia_integration_tests::probe_lines::{field, ok_line, result_line};

#[test]
fn pattern_matches_the_probes_definition() {
    let p = pattern(1, 2, 1);
    assert_eq!(p.len(), 512);
    let w0 = PATTERN_A.wrapping_add(2u64.wrapping_mul(PATTERN_B));
    assert_eq!(&p[0..8], &w0.to_le_bytes());
    assert_eq!(&p[8..16], &w0.wrapping_add(PATTERN_C).to_le_bytes());
}

/// The counters of drive `id` in the last line xenia wrote to the metrics file `path`
/// (`--metrics-path`; xenia writes a line at exit).
pub fn drive_metrics(path: &Path, id: &str) -> Value {
    let line = xenia_integration_tests::last_metrics(path);
    let key = format!("block_{id}");
    assert!(line[&key].is_object(), "no `{key}` in {line}");
    line[&key].clone()
}

/// Runs `qemu-img` (Debian's qemu-utils, installed by tools/setup) and returns its stdout;
/// a failure fails the test with qemu-img's message.
pub fn qemu_img(args: &[&str]) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("qemu-img missing ({e}): run tools/setup"));
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img create -f qcow2 -b BACKING -F FMT dir/NAME [SIZE]`; `backing` is recorded as
/// given (relative names resolve against the overlay's directory).
pub fn qcow2_overlay(
    dir: &Path,
    name: &str,
    backing: &str,
    fmt: &str,
    size: Option<&str>,
) -> PathBuf {
    let path = dir.join(name);
    let p = path.to_string_lossy().into_owned();
    let mut args = vec!["create", "-q", "-f", "qcow2", "-b", backing, "-F", fmt, &p];
    if let Some(s) = size {
        args.push(s);
    }
    qemu_img(&args);
    path
}

/// `qemu-img check` reports no errors and no leaks.
pub fn assert_qcow2_clean(path: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", &path.to_string_lossy()])
        .output()
        .unwrap_or_else(|e| panic!("qemu-img missing ({e}): run tools/setup"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No errors were found"),
        "qemu-img check {}: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The virtual disk of a qcow2 chain as raw bytes, read by qemu-img (an outside reader).
pub fn qcow2_contents(image: &Path, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("qemu-convert.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        &image.to_string_lossy(),
        &out.to_string_lossy(),
    ]);
    let bytes = std::fs::read(&out).expect("read converted image");
    let _ = std::fs::remove_file(&out);
    bytes
}
