//! Response-to-output conversion (see `checks::infer_response`).
#![no_main]

// Shared by all targets; each uses one of its checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|input: &[u8]| checks::infer_response(input));
