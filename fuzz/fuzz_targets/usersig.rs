//! Fuzz target `usersig`: the checks in `fuzz/checks/usersig.rs` on every input.
#![no_main]

#[path = "../checks/usersig.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
