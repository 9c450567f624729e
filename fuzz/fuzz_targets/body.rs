//! Fuzz target `body`: the checks in `fuzz/checks/body.rs` on every input.
#![no_main]

#[path = "../checks/body.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
