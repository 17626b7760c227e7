//! libFuzzer entry point of the `share` target; see `kvmini_fuzz::share`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmini_fuzz::share::run(data));
