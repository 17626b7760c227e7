//! libFuzzer entry point of the `block` target; see `kvmini_fuzz::block`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmini_fuzz::block::run(data));
