//! The fuzz targets' seeds (`checks::seeds`, made with the real encoders)
//! and any inputs saved under `fuzz/corpus/<target>/` (regressions) run
//! through the same checks as `cargo fuzz` (`fuzz/checks.rs`), as ordinary
//! tests, with every prefix of each input.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/checks.rs"]
mod checks;

fn run(target: &str, check: fn(&[u8])) {
    let mut inputs: Vec<Vec<u8>> = checks::seeds()
        .into_iter()
        .filter(|(t, _, _)| *t == target)
        .map(|(_, _, b)| b)
        .collect();
    assert!(!inputs.is_empty(), "no seeds for {target}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries {
            inputs.push(std::fs::read(entry.unwrap().path()).unwrap());
        }
    }
    for input in &inputs {
        check(input);
        // Every prefix too: truncated inputs are the commonest defect.
        for end in 0..input.len() {
            check(&input[..end]);
        }
    }
}

#[test]
fn tensor_decode_seeds() {
    run("tensor_decode", checks::tensor_decode);
}

#[test]
fn infer_response_seeds() {
    run("infer_response", checks::infer_response);
}

#[test]
fn task_envelope_seeds() {
    run("task_envelope", checks::task_envelope);
}
