//! The task envelope decoder (see `checks::task_envelope`).
#![no_main]

// Shared by all targets; each uses one of its checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|input: &[u8]| checks::task_envelope(input));
