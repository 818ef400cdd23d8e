//! The checks each fuzz target runs on one input, shared with the seed
//! corpus test (`agentscale-infer/tests/fuzz_seeds.rs`), which includes this
//! file by path so the seeds run as ordinary unit tests.

use agentscale_core::{Priority, Task};
use agentscale_infer::{pb, DataType, Element, InferResponse, Tensor};
use bytes::Bytes;
use prost::Message as _;

fn decode<T: Element>(t: &Tensor) {
    let valid = t.validate().is_ok();
    match t.to_vec::<T>() {
        Ok(v) => {
            if valid {
                assert_eq!(Some(v.len()), t.element_count().ok());
            }
        }
        Err(_) => assert!(!valid || t.datatype() != T::DATATYPE),
    }
}

/// Tensor decoding for every datatype (BYTES included) on arbitrary bytes
/// and shapes: validation and every decoder return a value or an error,
/// never panic, and agree with each other.
pub fn tensor_decode(input: &[u8]) {
    let Some((&head, rest)) = input.split_first() else {
        return;
    };
    let dt = DataType::ALL[usize::from(head & 0x0f) % DataType::ALL.len()];
    // Up to three dimensions from the next bytes (signed, so negative and
    // huge ones occur), then the data.
    let ndims = usize::from(head >> 4) % 4;
    if rest.len() < ndims * 2 {
        return;
    }
    let (dims, data) = rest.split_at(ndims * 2);
    let shape: Vec<i64> = dims
        .chunks_exact(2)
        .map(|d| i64::from(i16::from_le_bytes([d[0], d[1]])) * if d[1] & 0x40 != 0 { 1 << 40 } else { 1 })
        .collect();
    let t = Tensor::from_raw("t", dt, shape, Bytes::copy_from_slice(data));
    let _ = t.element_count();
    let valid = t.validate().is_ok();
    decode::<bool>(&t);
    decode::<u8>(&t);
    decode::<u16>(&t);
    decode::<u32>(&t);
    decode::<u64>(&t);
    decode::<i8>(&t);
    decode::<i16>(&t);
    decode::<i32>(&t);
    decode::<i64>(&t);
    decode::<f32>(&t);
    decode::<f64>(&t);
    if let Ok(elements) = t.to_bytes_elements() {
        if valid {
            assert_eq!(Some(elements.len()), t.element_count().ok());
        }
        let _ = t.to_strings();
    }
}

/// A server's `ModelInferResponse` (protobuf bytes) converted to an
/// `InferResponse`: an error or outputs that all validate, never a panic.
pub fn infer_response(input: &[u8]) {
    let Ok(msg) = pb::ModelInferResponse::decode(input) else {
        return;
    };
    if let Ok(r) = InferResponse::try_from(msg) {
        for t in &r.outputs {
            assert!(t.validate().is_ok(), "an accepted output must validate");
            let _ = t.to_bytes_elements();
            let _ = t.to_vec::<f32>();
        }
        let _ = r.is_final();
    }
}

/// The task envelope decoder (`Task::decode`): arbitrary bytes give a task
/// or a `CodecError`, never a panic, and a decoded task survives an
/// encode/decode round trip unchanged.
pub fn task_envelope(input: &[u8]) {
    if let Ok(task) = Task::decode(input) {
        let bytes = task.encode().expect("a decoded task encodes");
        let again = Task::decode(&bytes).expect("an encoded task decodes");
        assert_eq!(again, task);
    }
}

/// Seed inputs for `target` made with the real encoders (written to
/// `fuzz/corpus/` by `scripts/fuzz --seeds`, and run by the seed test).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    fn push(out: &mut Vec<(&'static str, String, Vec<u8>)>, target: &'static str, name: &str, bytes: &[u8]) {
        out.push((target, name.to_string(), bytes.to_vec()));
    }

    // tensor_decode: datatype byte (ndims in the high nibble), dims, data.
    for (i, dt) in DataType::ALL.iter().enumerate() {
        let mut seed = vec![i as u8 | 0x10, 4, 0];
        seed.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        push(&mut out, "tensor_decode", &format!("{}_1d", dt.as_str()), &seed);
    }
    let strings = Tensor::from_strings("s", &["ab", "", "xyz"]);
    let mut seed = vec![13 | 0x10, 3, 0];
    seed.extend_from_slice(strings.raw());
    push(&mut out, "tensor_decode", "BYTES_strings", &seed);

    // infer_response: real responses, raw and typed contents.
    let tensor = |name: &str, dt: &str, shape: Vec<i64>| pb::model_infer_response::InferOutputTensor {
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
        outputs: vec![tensor("OUTPUT0", "FP32", vec![2]), tensor("S", "BYTES", vec![3])],
        raw_output_contents: vec![
            Tensor::from_slice("x", &[1.0f32, 2.0]).raw().clone(),
            strings.raw().clone(),
        ],
    };
    push(&mut out, "infer_response", "raw", &raw.encode_to_vec());
    let mut typed = tensor("T", "INT32", vec![3]);
    typed.contents = Some(pb::InferTensorContents {
        int_contents: vec![1, -2, 3],
        ..Default::default()
    });
    let mut b = tensor("B", "BYTES", vec![2]);
    b.contents = Some(pb::InferTensorContents {
        bytes_contents: vec![Bytes::from_static(b"hi"), Bytes::new()],
        ..Default::default()
    });
    let typed = pb::ModelInferResponse {
        model_name: "m".into(),
        outputs: vec![typed, b],
        ..Default::default()
    };
    push(&mut out, "infer_response", "typed", &typed.encode_to_vec());

    // task_envelope: encoded tasks.
    let task = Task::new("research", b"{\"q\":\"why\"}".to_vec());
    push(
        &mut out,
        "task_envelope",
        "plain",
        &task.encode().expect("encode"),
    );
    let task = Task::new("k", Vec::new()).with_priority(Priority::High);
    push(
        &mut out,
        "task_envelope",
        "attempts",
        &task.encode().expect("encode"),
    );
    out
}
