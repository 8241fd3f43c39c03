//! libFuzzer driver for the `virtio_mmio` target (built by `tools/fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xenia_fuzz::targets::virtio_mmio::run(data));
