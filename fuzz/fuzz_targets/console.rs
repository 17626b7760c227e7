//! libFuzzer entry point of the `console` target; see `kvmini_fuzz::console`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmini_fuzz::console::run(data));
