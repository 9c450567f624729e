//! Fuzz target `http`: the checks in `fuzz/checks/http.rs` on every input.
#![no_main]

#[path = "../checks/http.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
