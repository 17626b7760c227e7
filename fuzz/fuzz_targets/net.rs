//! libFuzzer entry point of the `net` target; see `kvmini_fuzz::net`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmini_fuzz::net::run(data));
