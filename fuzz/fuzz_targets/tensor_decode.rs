//! Tensor decoding for every datatype (BYTES included) on arbitrary bytes
//! and shapes: validation and every decoder return a value or an error,
//! never panic, and agree with each other.
#![no_main]

use agentscale_infer::{DataType, Element, Tensor};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|input: &[u8]| {
    let Some((&head, rest)) = input.split_first() else { return };
    let dt = DataType::ALL[usize::from(head) % DataType::ALL.len()];
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
});
