//! A server's `ModelInferResponse` (protobuf bytes) converted to an
//! `InferResponse`: an error or outputs that all validate, never a panic.
#![no_main]

use agentscale_infer::{pb, InferResponse};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|input: &[u8]| {
    let Ok(msg) = pb::ModelInferResponse::decode(input) else { return };
    if let Ok(r) = InferResponse::try_from(msg) {
        for t in &r.outputs {
            assert!(t.validate().is_ok(), "an accepted output must validate");
            let _ = t.to_bytes_elements();
            let _ = t.to_vec::<f32>();
        }
        let _ = r.is_final();
    }
});
