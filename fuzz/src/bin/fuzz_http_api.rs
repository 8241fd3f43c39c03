//! libFuzzer driver for the `http_api` target (built by `tools/fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenia_fuzz::targets::http_api::run(data));
