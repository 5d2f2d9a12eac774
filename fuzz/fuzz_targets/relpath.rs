//! `cargo fuzz run relpath`: see `haul_fuzz::relpath` for the input layout and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| haul_fuzz::relpath::run(data));
