//! `cargo fuzz run session`: see `haul_fuzz::session` for the input layout and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = haul_fuzz::session::run(data);
});
