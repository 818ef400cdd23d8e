//! Writes the seed corpora (`fuzz/corpus/<target>/`) with the real encoders:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

use std::path::Path;

use agentscale_core::Task;
use agentscale_infer::{pb, DataType, Tensor};
use prost::Message as _;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    // tensor_decode: datatype byte (ndims in the high nibble), dims, data.
    for (i, dt) in DataType::ALL.iter().enumerate() {
        let mut seed = vec![i as u8 | 0x10, 4, 0];
        seed.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        write("tensor_decode", &format!("{}_1d", dt.as_str()), &seed);
    }
    let strings = Tensor::from_strings("s", &["ab", "", "xyz"]);
    let mut seed = vec![13 | 0x10, 3, 0];
    seed.extend_from_slice(strings.raw());
    write("tensor_decode", "BYTES_strings", &seed);

    // infer_response: real responses, raw and typed contents.
    let out = |name: &str, dt: &str, shape: Vec<i64>| pb::model_infer_response::InferOutputTensor {
        name: name.into(),
        datatype: dt.into(),
        shape,
        parameters: Default::default(),
        contents: None,
    };
    let raw = pb::ModelInferResponse {
        model_name: "identity_fp32".into(),
        model_version: "1".into(),
        id: "r1".into(),
        parameters: Default::default(),
        outputs: vec![out("OUTPUT0", "FP32", vec![2]), out("S", "BYTES", vec![3])],
        raw_output_contents: vec![
            Tensor::from_slice("x", &[1.0f32, 2.0]).raw().clone(),
            strings.raw().clone(),
        ],
    };
    write("infer_response", "raw", &raw.encode_to_vec());
    let mut typed = out("T", "INT32", vec![3]);
    typed.contents = Some(pb::InferTensorContents {
        int_contents: vec![1, -2, 3],
        ..Default::default()
    });
    let mut b = out("B", "BYTES", vec![2]);
    b.contents = Some(pb::InferTensorContents {
        bytes_contents: vec![b"hi".to_vec(), vec![]],
        ..Default::default()
    });
    let typed = pb::ModelInferResponse {
        model_name: "m".into(),
        outputs: vec![typed, b],
        ..Default::default()
    };
    write("infer_response", "typed", &typed.encode_to_vec());

    // task_envelope: encoded tasks.
    let task = Task::new("research", b"{\"q\":\"why\"}".to_vec());
    write("task_envelope", "plain", &task.encode().expect("encode"));
    let task = Task::new("k", Vec::new()).with_priority(agentscale_core::Priority::High);
    write("task_envelope", "attempts", &task.encode().expect("encode"));
}
