//! Writes the structured seeds of every target into `fuzz/corpus/<target>/seed-<name>`.
//! Run after changing a target's input layout: `cargo run -p xenia-fuzz --bin fuzz-seeds`.
//! `tests/replay.rs` checks that the committed seeds match what this writes.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in xenia_fuzz::TARGETS {
        let dir = root.join(target.name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("cannot create {}: {e}", dir.display());
            std::process::exit(1);
        }
        for (name, data) in (target.seeds)() {
            let path = dir.join(format!("seed-{name}"));
            if let Err(e) = std::fs::write(&path, &data) {
                eprintln!("cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
            println!("{} ({} bytes)", path.display(), data.len());
        }
    }
}
