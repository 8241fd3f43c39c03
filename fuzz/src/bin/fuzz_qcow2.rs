//! libFuzzer driver for the `qcow2` target (built by `tools/fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenia_fuzz::targets::qcow2::run(data));
