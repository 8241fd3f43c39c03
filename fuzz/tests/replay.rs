//! Replays every committed input of every fuzz target: the corpus seeds (`corpus/<target>/`)
//! and the inputs that once found a bug (`regressions/<target>/`). A panic names the file.
//! This is how a fixed fuzz finding stays fixed under plain `cargo test`.
#![allow(clippy::panic)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn replay(name: &str) {
    let target = xenia_fuzz::target(name).unwrap_or_else(|| panic!("no target {name}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = files(&root.join("corpus").join(name));
    assert!(!corpus.is_empty(), "corpus/{name}/ has no seeds");

    // The structured seeds must be the committed ones (else regenerate them, see README).
    for (seed, data) in (target.seeds)() {
        let path = root.join("corpus").join(name).join(format!("seed-{seed}"));
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == data,
            "{} is missing or stale: run `cargo run -p xenia-fuzz --bin fuzz-seeds`",
            path.display()
        );
    }

    let regressions = files(&root.join("regressions").join(name));
    let mut failures = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| (target.run)(&data))).is_err() {
            failures.push(path.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: inputs that panic: {failures:#?}"
    );
}

#[test]
fn http_api() {
    replay("http_api");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn qcow2() {
    replay("qcow2");
}

#[test]
fn rate_limiter() {
    replay("rate_limiter");
}

#[test]
fn virtio_blk() {
    replay("virtio_blk");
}

#[test]
fn virtio_mmio() {
    replay("virtio_mmio");
}

#[test]
fn virtio_net_tx() {
    replay("virtio_net_tx");
}

#[test]
fn every_target_is_replayed_here() {
    let here = include_str!("replay.rs");
    for t in xenia_fuzz::TARGETS {
        assert!(
            here.contains(&format!("replay(\"{}\")", t.name)),
            "add a test calling replay(\"{}\")",
            t.name
        );
    }
}

#[test]
fn snapshot_state() {
    replay("snapshot_state");
}

#[test]
fn mmds() {
    replay("mmds");
}
