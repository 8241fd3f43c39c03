//! Fuzz targets for xenia's untrusted inputs.
//!
//! Each target is a plain function from bytes to nothing that panics on a bug (a panic in
//! the code under test, or a broken property the target checks). The same functions run
//! under two drivers:
//!
//! - libFuzzer, coverage-guided, through the `fuzz_*` binaries (`tools/fuzz`, feature
//!   `libfuzzer`, instrumented with stable rustc's `-C passes=sancov-module`);
//! - `cargo test` (`tests/replay.rs`), which replays every committed corpus seed and every
//!   regression input.
//!
//! The seed writer (`cargo run -p xenia-fuzz --bin fuzz-seeds`) writes the structured seeds
//! of the binary targets into `corpus/`.
//!
//! Adding a target (for example the snapshot state decoder): a module in `src/targets/`
//! with `pub fn run(data: &[u8])`, an entry in [`TARGETS`], a driver in `src/bin/`, a
//! `[[bin]]` entry in `Cargo.toml`, and seeds in `corpus/<name>/`. See `README.md`.

// A panic is how a fuzz target reports a finding (and how the harness refuses to run
// without what it needs): that is this crate's job, not an error path.
#![allow(clippy::panic)]

pub mod device;
pub mod guest;
pub mod input;
pub mod targets;

/// A fuzz target: its name (also the folder of its corpus and the suffix of its driver
/// binary `fuzz_<name>`) and its entry point.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Structured seeds made by code (binary formats); text seeds live in `corpus/` only.
    pub seeds: fn() -> Vec<(&'static str, Vec<u8>)>,
}

fn no_seeds() -> Vec<(&'static str, Vec<u8>)> {
    Vec::new()
}

/// Every target, in the order `tools/fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "http_api",
        run: targets::http_api::run,
        seeds: no_seeds,
    },
    Target {
        name: "config",
        run: targets::config::run,
        seeds: targets::config::seeds,
    },
    Target {
        name: "rate_limiter",
        run: targets::rate_limiter::run,
        seeds: targets::rate_limiter::seeds,
    },
    Target {
        name: "virtio_blk",
        run: targets::virtio_blk::run,
        seeds: targets::virtio_blk::seeds,
    },
    Target {
        name: "virtio_mmio",
        run: targets::virtio_mmio::run,
        seeds: targets::virtio_mmio::seeds,
    },
    Target {
        name: "virtio_net_tx",
        run: targets::virtio_net_tx::run,
        seeds: targets::virtio_net_tx::seeds,
    },
    Target {
        name: "qcow2",
        run: targets::qcow2::run,
        seeds: no_seeds,
    },
    Target {
        name: "snapshot_state",
        run: targets::snapshot_state::run,
        seeds: no_seeds,
    },
    Target {
        name: "mmds",
        run: targets::mmds::run,
        seeds: targets::mmds::seeds,
    },
];

/// Where targets keep their scratch files (disk images): memory-backed `/dev/shm` when the
/// host has it, so that a fuzzed FLUSH (`fdatasync`) costs nothing, else the temp folder.
pub fn scratch_dir() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
