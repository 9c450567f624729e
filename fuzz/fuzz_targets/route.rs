//! Fuzz target `route`: the checks in `fuzz/checks/route.rs` on every input.
#![no_main]

#[path = "../checks/route.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
