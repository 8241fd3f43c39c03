//! qcow2 through imago, against images made and checked by QEMU's `qemu-img` (tools/setup
//! installs Debian's qemu-utils).

use std::path::{Path, PathBuf};
use std::process::Command;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::test_utils::guest_memory;

const MIB: u64 = 1 << 20;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("xenia-qcow2-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img missing: run tools/setup (Debian package qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-io -c CMD image` (same package as qemu-img).
fn qemu_io(image: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-c", cmd, s(image)])
        .output()
        .expect("qemu-io missing: run tools/setup (Debian package qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-io {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A raw base whose sector `i` is filled with byte `i % 251 + 1`.
fn raw_base(path: &Path, len: u64) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|b| ((b / 512) % 251 + 1) as u8).collect();
    std::fs::write(path, &data).unwrap();
    data
}

fn overlay(path: &Path, backing: &str, fmt: &str) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        backing,
        "-F",
        fmt,
        s(path),
    ]);
}

fn read(d: &mut Qcow2Disk, off: u64, len: u32) -> Result<Vec<u8>, DiskError> {
    let mem = guest_memory();
    // Two guest buffers, the second at a distant address, to exercise the vector path.
    let half = len / 2;
    d.read_into(
        &mem,
        off,
        &[
            (GuestAddress(0x1000), half),
            (GuestAddress(0x80_0000), len - half),
        ],
    )?;
    let mut out = vec![0u8; len as usize];
    mem.read_slice(&mut out[..half as usize], GuestAddress(0x1000))
        .unwrap();
    mem.read_slice(&mut out[half as usize..], GuestAddress(0x80_0000))
        .unwrap();
    Ok(out)
}

fn write(d: &mut Qcow2Disk, off: u64, data: &[u8]) {
    let mem = guest_memory();
    mem.write_slice(data, GuestAddress(0x4000)).unwrap();
    d.write_from(&mem, off, &[(GuestAddress(0x4000), data.len() as u32)])
        .unwrap();
}

fn check_clean(path: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "-q", s(path)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn overlay_reads_through_writes_on_top_and_qemu_agrees() {
    let dir = Dir::new("rw");
    let base = dir.path("base.raw");
    let mut expect = raw_base(&base, 4 * MIB);
    let ov = dir.path("ov.qcow2");
    overlay(&ov, "base.raw", "raw");
    let ov_len_before = std::fs::metadata(&ov).unwrap().len();

    let mut d = Qcow2Disk::open(&ov, false).unwrap();
    assert_eq!(d.nsectors(), 4 * MIB / 512);
    assert_eq!(d.chain_len(), 2);
    assert_eq!(read(&mut d, 0, 8192).unwrap(), expect[..8192]);
    // A write inside a cluster (copy-on-write of the rest) and one spanning two clusters.
    let a = vec![0xAAu8; 4096];
    write(&mut d, 70_000 & !511, &a);
    let at = (70_000 & !511) as usize;
    expect[at..at + 4096].copy_from_slice(&a);
    let b = vec![0xBBu8; 65536];
    write(&mut d, 3 * 65536 - 4096, &b);
    let at = (3 * 65536 - 4096) as usize;
    expect[at..at + 65536].copy_from_slice(&b);
    d.flush().unwrap();
    assert_eq!(read(&mut d, 0, 4 * MIB as u32).unwrap(), expect);
    drop(d);

    assert_eq!(
        std::fs::read(&base).unwrap(),
        raw_base(&dir.path("again.raw"), 4 * MIB),
        "the base is never written"
    );
    check_clean(&ov);
    let out = dir.path("out.raw");
    qemu_img(&["convert", "-O", "raw", s(&ov), s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), expect);
    // Only the touched clusters (plus an L2 table and refcount data) went to the overlay.
    let grown = std::fs::metadata(&ov).unwrap().len() - ov_len_before;
    assert!(grown <= 6 * 65536, "overlay grew by {grown} bytes");

    // A fresh open sees the same data.
    let mut d = Qcow2Disk::open(&ov, true).unwrap();
    assert_eq!(read(&mut d, 0, 4 * MIB as u32).unwrap(), expect);
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeroes() {
    let dir = Dir::new("zero");
    let base = dir.path("base.raw");
    let mut expect = raw_base(&base, 2 * MIB);
    let ov = dir.path("ov.qcow2");
    overlay(&ov, "base.raw", "raw");
    let mut d = Qcow2Disk::open(&ov, false).unwrap();
    write(&mut d, 0, &[7u8; 65536 * 2]);
    expect[..65536 * 2].fill(7);
    // Whole cluster discarded, a partial range, write-zeroes without unmap over the base.
    d.discard(65536, 65536).unwrap();
    expect[65536..65536 * 2].fill(0);
    d.discard(512, 1024).unwrap();
    expect[512..1536].fill(0);
    d.write_zeroes(4 * 65536 + 512, 3 * 65536, false).unwrap();
    expect[4 * 65536 + 512..7 * 65536 + 512].fill(0);
    d.write_zeroes(10 * 65536, 65536, true).unwrap();
    expect[10 * 65536..11 * 65536].fill(0);
    d.flush().unwrap();
    assert_eq!(read(&mut d, 0, 2 * MIB as u32).unwrap(), expect);
    drop(d);
    check_clean(&ov);
    let out = dir.path("out.raw");
    qemu_img(&["convert", "-O", "raw", s(&ov), s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), expect);
}

#[test]
fn three_level_chain_and_a_v2_image() {
    let dir = Dir::new("chain");
    let base = dir.path("base.raw");
    let mut expect = raw_base(&base, MIB);
    let mid = dir.path("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&mid),
    ]);
    qemu_io(&mid, "write -P 0x55 0 64k");
    expect[..65536].fill(0x55);
    std::fs::create_dir(dir.path("tenant")).unwrap();
    let top = dir.path("tenant/top.qcow2");
    // The top lives in a subdirectory: its backing name climbs out of it, which is refused.
    overlay(&top, "../mid.qcow2", "qcow2");
    let e = Qcow2Disk::open(&top, false).unwrap_err();
    assert!(matches!(e, Qcow2Error::OutsideRoot { .. }), "{e}");
    // Same chain with the top beside its backing files.
    let top = dir.path("top.qcow2");
    overlay(&top, "mid.qcow2", "qcow2");
    let mut d = Qcow2Disk::open(&top, false).unwrap();
    assert_eq!(d.chain_len(), 3);
    write(&mut d, 65536 + 512, &[0x66u8; 512]);
    expect[65536 + 512..65536 + 1024].fill(0x66);
    d.flush().unwrap();
    assert_eq!(read(&mut d, 0, MIB as u32).unwrap(), expect);
}

#[test]
fn chain_policy_refuses_escapes_loops_length_and_unrecorded_formats() {
    let dir = Dir::new("policy");
    raw_base(&dir.path("base.raw"), MIB);
    // No backing format recorded: never probed. (qemu-img 7 refuses to create such an image,
    // older ones did not: turn the backing-format extension into an unknown one.)
    let ov = dir.path("nofmt.qcow2");
    overlay(&ov, "base.raw", "raw");
    let bytes = std::fs::read(&ov).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == 0xe279_2acau32.to_be_bytes())
        .unwrap();
    patch(&ov, at as u64, &0x1234_5678u32.to_be_bytes());
    let e = Qcow2Disk::open(&ov, false).unwrap_err();
    assert!(e.to_string().contains("never guesses"), "{e}");
    // Absolute backing path outside the image's tree.
    let outside = Dir::new("policy-outside");
    raw_base(&outside.path("host.raw"), MIB);
    let ov = dir.path("abs.qcow2");
    overlay(&ov, s(&outside.path("host.raw")), "raw");
    let e = Qcow2Disk::validate(&ov, false).unwrap_err();
    assert!(matches!(e, Qcow2Error::OutsideRoot { .. }), "{e}");
    // An absolute name inside the image's (absolute) directory is fine.
    let ov = dir.path("abs-in.qcow2");
    overlay(&ov, s(&dir.path("base.raw")), "raw");
    assert_eq!(Qcow2Disk::open(&ov, true).unwrap().chain_len(), 2);
    // A symlink inside the tree that points out of it.
    std::os::unix::fs::symlink(outside.path("host.raw"), dir.path("link.raw")).unwrap();
    let ov = dir.path("sym.qcow2");
    overlay(&ov, "link.raw", "raw");
    let e = Qcow2Disk::open(&ov, true).unwrap_err();
    assert!(matches!(e, Qcow2Error::OutsideRoot { .. }), "{e}");
    // a -> b -> a.
    let a = dir.path("a.qcow2");
    let b = dir.path("b.qcow2");
    overlay(&b, "base.raw", "raw");
    overlay(&a, "b.qcow2", "qcow2");
    qemu_img(&["rebase", "-q", "-u", "-b", "a.qcow2", "-F", "qcow2", s(&b)]);
    let e = Qcow2Disk::open(&a, false).unwrap_err();
    assert!(matches!(e, Qcow2Error::Loop { .. }), "{e}");
    // MAX_CHAIN + 1 images.
    let mut below = "base.raw".to_owned();
    let mut fmt = "raw";
    for i in 0..MAX_CHAIN {
        let name = format!("l{i}.qcow2");
        overlay(&dir.path(&name), &below, fmt);
        below = name;
        fmt = "qcow2";
    }
    let e = Qcow2Disk::open(&dir.path(&below), false).unwrap_err();
    assert!(matches!(e, Qcow2Error::ChainTooLong { .. }), "{e}");
    // One shorter is fine.
    let ok = format!("l{}.qcow2", MAX_CHAIN - 2);
    assert_eq!(
        Qcow2Disk::open(&dir.path(&ok), true).unwrap().chain_len(),
        MAX_CHAIN
    );
}

/// Patches big-endian bytes into a file.
fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn be64_at(path: &Path, at: u64) -> u64 {
    let b = std::fs::read(path).unwrap();
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

#[test]
fn hostile_images_fail_cleanly() {
    let dir = Dir::new("hostile");
    let img = |name: &str| {
        let p = dir.path(name);
        qemu_img(&["create", "-q", "-f", "qcow2", s(&p), "4M"]);
        p
    };
    let header_err = |p: &Path| match Qcow2Disk::open(p, false).unwrap_err() {
        Qcow2Error::Header { source, .. } => source,
        e => panic!("expected a header error, got {e}"),
    };
    // Truncated inside the header, and before the tables.
    let p = img("trunc.qcow2");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(50)
        .unwrap();
    assert!(matches!(header_err(&p), HeaderError::Truncated(50)));
    let p = img("trunc2.qcow2");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(65536)
        .unwrap();
    assert!(matches!(header_err(&p), HeaderError::PastEnd { .. }));
    // Absurd virtual size.
    let p = img("huge.qcow2");
    patch(&p, 24, &(1u64 << 62).to_be_bytes());
    assert!(matches!(header_err(&p), HeaderError::VirtualSize(_)));
    // Refcount table size overflowing any sane bound.
    let p = img("rt.qcow2");
    patch(&p, 56, &u32::MAX.to_be_bytes());
    assert!(matches!(header_err(&p), HeaderError::RefTableTooBig(_)));
    // Not a qcow2 file at all.
    let p = dir.path("raw.img");
    std::fs::write(&p, vec![0u8; 65536]).unwrap();
    assert!(matches!(header_err(&p), HeaderError::Magic(0)));

    // An L2 entry pointing far past the end of the file: the read fails, nothing panics.
    let p = img("l2.qcow2");
    qemu_io(&p, "write -P 0x11 0 64k");
    let l1 = be64_at(&p, 40);
    let l2 = be64_at(&p, l1) & 0x00ff_ffff_ffff_fe00;
    patch(&p, l2, &((1u64 << 63) | (1u64 << 50)).to_be_bytes());
    let mut d = Qcow2Disk::open(&p, false).unwrap();
    // Past the end of the file reads like a hole (zeroes) or fails; never another file.
    match read(&mut d, 0, 4096) {
        Ok(v) => assert_eq!(v, vec![0u8; 4096]),
        Err(e) => assert!(matches!(e, DiskError::Io { .. }), "{e}"),
    }
    // A write there fails (EFBIG on ext4) or lands sparsely in the same file.
    let mem = guest_memory();
    let blocks = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap());
    let before = blocks(&p);
    let _ = d.write_from(&mem, 0, &[(GuestAddress(0), 4096)]);
    d.flush().unwrap();
    assert!(
        blocks(&p) <= before + 2 * 128,
        "at most a cluster or two allocated"
    );
    // Other clusters still work.
    assert_eq!(read(&mut d, 65536, 512).unwrap(), vec![0u8; 512]);
    drop(d);

    // Refcounts at their maximum on every cluster: allocating must not wrap them.
    let p = img("rc.qcow2");
    let rt = be64_at(&p, 48);
    let rb = be64_at(&p, rt);
    patch(&p, rb, &[0xffu8; 64]);
    if let Ok(mut d) = Qcow2Disk::open(&p, false) {
        let mem = guest_memory();
        let _ = d.write_from(&mem, 0, &[(GuestAddress(0), 4096)]);
        let _ = d.flush();
    }
}

#[test]
fn a_raw_image_with_a_qcow2_header_is_not_a_qcow2_image_unless_configured() {
    // The format comes from the caller: a raw file is opened as qcow2 only when asked, and a
    // raw file that merely starts with a qcow2 header reads back byte for byte through
    // `Disk` in Raw format (see block::disk).
    let dir = Dir::new("probe");
    let p = dir.path("q.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&p), "1M"]);
    let bytes = std::fs::read(&p).unwrap();
    let mut raw = super::super::disk::Disk::open(
        &p,
        crate::block::ImageFormat::Raw,
        crate::block::IoEngine::Sync,
        true,
        "x",
    )
    .unwrap();
    assert_eq!(raw.nsectors(), bytes.len() as u64 / 512);
    let mem = guest_memory();
    raw.read_into(&mem, 0, &[(GuestAddress(0), 512)]).unwrap();
    let mut first = [0u8; 512];
    mem.read_slice(&mut first, GuestAddress(0)).unwrap();
    assert_eq!(first[..], bytes[..512]);
    // Async with qcow2 is refused.
    let e = super::super::disk::Disk::open(
        &p,
        crate::block::ImageFormat::Qcow2,
        crate::block::IoEngine::Async,
        false,
        "x",
    )
    .unwrap_err();
    assert!(matches!(e, DiskError::Qcow2Async));
}

/// Iterations of the in-tree mutation run (`XENIA_QCOW2_FUZZ_ITERS` and
/// `XENIA_QCOW2_FUZZ_SEED` override it and the mutation seed for longer campaigns).
const DEFAULT_ITERATIONS: u32 = 1500;

#[test]
fn mutated_qemu_images_never_panic() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let iterations = env("XENIA_QCOW2_FUZZ_ITERS").map_or(DEFAULT_ITERATIONS, |n| n as u32);
    // A bounded in-tree run of the fuzz entry point over images qemu-img made (plain, with a
    // backing file, with data and zero clusters) with a few bytes overwritten each time.
    // On tmpfs when there is one: the entry point's flushes then cost no disk syncs.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        let p = shm.join(format!("xenia-qcow2-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    } else {
        Dir::new("fuzz")
    };
    let seeds_dir = Dir::new("fuzz-seeds");
    raw_base(&seeds_dir.path("base.raw"), 65536);
    let plain = seeds_dir.path("plain.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&plain),
        "1M",
    ]);
    qemu_io(&plain, "write -P 0x33 0 12k");
    qemu_io(&plain, "write -z 64k 8k");
    let ov = seeds_dir.path("ov.qcow2");
    overlay(&ov, "base.raw", "raw");
    qemu_io(&ov, "write -P 0x44 4k 4k");
    let seeds: Vec<Vec<u8>> = [plain, ov]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let mut x: u64 = env("XENIA_QCOW2_FUZZ_SEED").unwrap_or(0x1234_5678_9abc_def1) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..iterations {
        let seed = &seeds[i as usize % seeds.len()];
        let mut data = vec![next() as u8];
        data.extend_from_slice(seed);
        // Mostly the metadata: header, L1, refcount table and the first L2 / refblocks.
        let span = (data.len() - 1).min(6 * 4096 + 65536 * 3);
        for _ in 0..(1 + next() % 6) {
            let at = 1 + (next() as usize) % span;
            data[at] = next() as u8;
        }
        if i % 50 == 0 {
            data.truncate(1 + (next() as usize) % (data.len() - 1));
        }
        fuzz::open_and_exercise(&data, &dir.0);
    }
}

/// An image whose refcounts say its own metadata is free is refused for writing (imago's
/// allocator recursed without bound on it: the `qcow2` fuzz target's finding), and still
/// opens read-only; refcount widths from 1 to 64 bits are read correctly on good images.
#[test]
fn metadata_with_refcount_zero_is_refused_for_writing() {
    let dir = Dir::new("refcheck");
    for bits in ["1", "8", "16", "64"] {
        let good = dir.path(&format!("good-{bits}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("refcount_bits={bits}"),
            s(&good),
            "1M",
        ]);
        qemu_io(&good, "write -P 0x33 0 64k");
        Qcow2Disk::open(&good, false).unwrap_or_else(|e| panic!("{bits}-bit refcounts: {e}"));
    }
    let bad = dir.path("bad.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&bad), "1M"]);
    // Zero the whole refcount table (its offset is at byte 48 of the header).
    let mut bytes = std::fs::read(&bad).unwrap();
    let rt = u64::from_be_bytes(bytes[48..56].try_into().unwrap()) as usize;
    bytes[rt..rt + 4096].fill(0);
    std::fs::write(&bad, &bytes).unwrap();
    let e = Qcow2Disk::open(&bad, false).unwrap_err().to_string();
    assert!(
        e.contains("refcount 0") && e.contains("qemu-img check -r all"),
        "{e}"
    );
    assert!(
        Qcow2Disk::open(&bad, true).is_ok(),
        "read-only use needs no refcounts"
    );
}
