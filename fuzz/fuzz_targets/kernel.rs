//! libFuzzer entry point of the `kernel` target; see `kvmini_fuzz::kernel`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmini_fuzz::kernel::run(data));
