//! Response-to-output conversion (see `checks::infer_response`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|input: &[u8]| checks::infer_response(input));
