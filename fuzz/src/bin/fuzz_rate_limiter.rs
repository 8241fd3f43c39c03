//! libFuzzer driver for the `rate_limiter` target (built by `tools/fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenia_fuzz::targets::rate_limiter::run(data));
