//! libFuzzer driver for the `snapshot_state` target (built by `tools/fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenia_fuzz::targets::snapshot_state::run(data));
