//! libFuzzer entry point of the `mmio` target; see `kvmini_fuzz::mmio`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmini_fuzz::mmio::run(data));
