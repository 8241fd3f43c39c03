//! libFuzzer driver for the `config` target (built by `tools/fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenia_fuzz::targets::config::run(data));
