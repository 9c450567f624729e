//! Fuzz target `config`: the checks in `fuzz/checks/config.rs` on every input.
#![no_main]

#[path = "../checks/config.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
