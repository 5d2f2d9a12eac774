//! `cargo fuzz run frame_decode`: see `haul_fuzz::frames` for the input layout and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| haul_fuzz::frames::run(data));
