//! Opening and using a crafted qcow2 image: the header and table checks xenia runs before the
//! format library sees an image, the backing-chain rules, and reads, writes, discards and a
//! flush through whatever opens (`virtio::block::qcow2::fuzz::open_and_exercise`). A tenant's
//! overlay is a file the tenant wrote: no bytes in it may panic xenia or make it allocate
//! without bound.
//!
//! Input layout: an operations byte (bit 7: open writable; the rest picks the operations),
//! then the image. Seeds are images made by `qemu-img` (`corpus/qcow2/`), with 512-byte
//! clusters so they stay small.

use std::sync::OnceLock;

use crate::scratch_dir;

/// One scratch folder per process, holding the image and the raw base its seeds name.
fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        remove_stale_dirs();
        let d = scratch_dir().join(format!("{PREFIX}{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&d) {
            panic!("cannot create {}: {e}", d.display());
        }
        d
    })
}

const PREFIX: &str = "xenia-fuzz-qcow2-";

/// libFuzzer ends a process without running destructors: folders of processes that are gone
/// are removed by the next one.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(scratch_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

pub fn run(data: &[u8]) {
    virtio::block::qcow2::fuzz::open_and_exercise(data, dir());
}
