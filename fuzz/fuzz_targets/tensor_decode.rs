//! Tensor decoding for every datatype (see `checks::tensor_decode`).
#![no_main]

// Shared by all targets; each uses one of its checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|input: &[u8]| checks::tensor_decode(input));
