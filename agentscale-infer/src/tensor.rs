//! Tensors: Triton datatypes, typed constructors and zero-copy decoding.

use std::fmt;

use agentscale_core::{Error, Result};
use bytes::{Bytes, BytesMut};

/// A Triton (KServe v2) tensor datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataType {
    /// `BOOL`, one byte per element (0 or 1).
    Bool,
    /// `UINT8`.
    Uint8,
    /// `UINT16`.
    Uint16,
    /// `UINT32`.
    Uint32,
    /// `UINT64`.
    Uint64,
    /// `INT8`.
    Int8,
    /// `INT16`.
    Int16,
    /// `INT32`.
    Int32,
    /// `INT64`.
    Int64,
    /// `FP16`, IEEE half precision, carried as raw little-endian bytes.
    Fp16,
    /// `FP32`.
    Fp32,
    /// `FP64`.
    Fp64,
    /// `BF16`, bfloat16, carried as raw little-endian bytes.
    Bf16,
    /// `BYTES`: each element is a 4-byte little-endian length then the bytes.
    Bytes,
}

impl DataType {
    /// Every datatype.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bf16,
        DataType::Bytes,
    ];

    /// The protocol name (`"FP32"`, `"BYTES"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a protocol name.
    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Bytes per element, or `None` for `BYTES` (variable length).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust element type with a fixed-size Triton datatype.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The Triton datatype.
    const DATATYPE: DataType;
    /// Appends the little-endian encoding.
    fn put(self, out: &mut BytesMut);
    /// Decodes one element from exactly `size()` little-endian bytes.
    fn get(b: &[u8]) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($t:ty, $dt:ident, $n:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DATATYPE: DataType = DataType::$dt;
            fn put(self, out: &mut BytesMut) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(&b[..$n]);
                <$t>::from_le_bytes(a)
            }
        }
    };
}
element!(u8, Uint8, 1);
element!(u16, Uint16, 2);
element!(u32, Uint32, 4);
element!(u64, Uint64, 8);
element!(i8, Int8, 1);
element!(i16, Int16, 2);
element!(i32, Int32, 4);
element!(i64, Int64, 8);
element!(f32, Fp32, 4);
element!(f64, Fp64, 8);

impl sealed::Sealed for bool {}
impl Element for bool {
    const DATATYPE: DataType = DataType::Bool;
    fn put(self, out: &mut BytesMut) {
        out.extend_from_slice(&[u8::from(self)]);
    }
    fn get(b: &[u8]) -> Self {
        b[0] != 0
    }
}

/// A named tensor: datatype, shape and its raw little-endian bytes (for
/// `BYTES`, the length-prefixed serialization Triton uses).
///
/// The same type is used for inputs and outputs. Outputs share the response
/// buffer ([`Bytes`]), so reading them copies nothing until you decode.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    data: Bytes,
}

impl Tensor {
    /// A tensor of fixed-size elements. Validated against `shape` when sent.
    pub fn new<T: Element>(name: impl Into<String>, shape: impl Into<Vec<i64>>, values: &[T]) -> Tensor {
        let size = T::DATATYPE.size().unwrap_or(1);
        let mut buf = BytesMut::with_capacity(values.len() * size);
        for v in values {
            v.put(&mut buf);
        }
        Tensor {
            name: name.into(),
            datatype: T::DATATYPE,
            shape: shape.into(),
            data: buf.freeze(),
        }
    }

    /// A 1-D tensor of fixed-size elements.
    pub fn from_slice<T: Element>(name: impl Into<String>, values: &[T]) -> Tensor {
        Tensor::new(name, vec![values.len() as i64], values)
    }

    /// A `BYTES` tensor: each element is serialized as a 4-byte little-endian
    /// length followed by its bytes.
    pub fn from_bytes<I, B>(name: impl Into<String>, shape: impl Into<Vec<i64>>, elements: I) -> Tensor
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let mut buf = BytesMut::new();
        for e in elements {
            let e = e.as_ref();
            buf.extend_from_slice(&(e.len() as u32).to_le_bytes());
            buf.extend_from_slice(e);
        }
        Tensor {
            name: name.into(),
            datatype: DataType::Bytes,
            shape: shape.into(),
            data: buf.freeze(),
        }
    }

    /// A 1-D `BYTES` tensor of strings.
    pub fn from_strings<S: AsRef<str>>(name: impl Into<String>, strings: &[S]) -> Tensor {
        Tensor::from_bytes(
            name,
            vec![strings.len() as i64],
            strings.iter().map(|s| s.as_ref().as_bytes()),
        )
    }

    /// A tensor from raw little-endian bytes (the way to send `FP16` and
    /// `BF16`, or data already serialized). No copy is made. For `BYTES` the
    /// bytes must already be length-prefixed.
    pub fn from_raw(
        name: impl Into<String>,
        datatype: DataType,
        shape: impl Into<Vec<i64>>,
        data: Bytes,
    ) -> Tensor {
        Tensor {
            name: name.into(),
            datatype,
            shape: shape.into(),
            data,
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The datatype.
    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    /// The shape.
    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The raw bytes (little-endian; length-prefixed for `BYTES`).
    pub fn raw(&self) -> &Bytes {
        &self.data
    }

    /// Number of elements the shape describes.
    pub fn element_count(&self) -> Result<usize> {
        let mut n: usize = 1;
        for &d in &self.shape {
            if d < 0 {
                return Err(Error::InvalidInput(format!(
                    "tensor '{}': negative dimension {d} in shape {:?}",
                    self.name, self.shape
                )));
            }
            n = n.checked_mul(d as usize).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "tensor '{}': shape {:?} overflows",
                    self.name, self.shape
                ))
            })?;
        }
        Ok(n)
    }

    /// Checks that the bytes match the shape and datatype: for fixed-size
    /// types `elements × size` bytes; for `BYTES` exactly `elements`
    /// well-formed length-prefixed strings and nothing after them.
    pub fn validate(&self) -> Result<()> {
        let n = self.element_count()?;
        match self.datatype.size() {
            Some(size) => {
                let want = n.saturating_mul(size);
                if self.data.len() != want {
                    return Err(Error::InvalidInput(format!(
                        "tensor '{}': {} shape {:?} needs {want} bytes ({n} elements × {size}), got {}",
                        self.name,
                        self.datatype,
                        self.shape,
                        self.data.len()
                    )));
                }
                Ok(())
            }
            None => {
                let count = count_bytes_elements(&self.data).map_err(|e| {
                    Error::InvalidInput(format!("tensor '{}': malformed BYTES data: {e}", self.name))
                })?;
                if count != n {
                    return Err(Error::InvalidInput(format!(
                        "tensor '{}': BYTES shape {:?} needs {n} elements, data holds {count}",
                        self.name, self.shape
                    )));
                }
                Ok(())
            }
        }
    }

    fn expect_type(&self, want: DataType) -> Result<()> {
        if self.datatype != want {
            return Err(Error::InvalidInput(format!(
                "tensor '{}' is {}, not {want}",
                self.name, self.datatype
            )));
        }
        Ok(())
    }

    /// Decodes fixed-size elements (the datatype must be `T`'s).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.expect_type(T::DATATYPE)?;
        let size = T::DATATYPE.size().unwrap_or(1);
        if self.data.len() % size != 0 {
            return Err(Error::InvalidInput(format!(
                "tensor '{}': {} bytes is not a whole number of {} elements",
                self.name,
                self.data.len(),
                T::DATATYPE
            )));
        }
        Ok(self.data.chunks_exact(size).map(T::get).collect())
    }

    /// Decodes a `BYTES` tensor into its elements; each shares the response
    /// buffer (no copy).
    pub fn to_bytes_elements(&self) -> Result<Vec<Bytes>> {
        self.expect_type(DataType::Bytes)?;
        split_bytes_elements(&self.data)
            .map_err(|e| Error::InvalidInput(format!("tensor '{}': malformed BYTES data: {e}", self.name)))
    }

    /// Decodes a `BYTES` tensor of UTF-8 strings.
    pub fn to_strings(&self) -> Result<Vec<String>> {
        self.to_bytes_elements()?
            .into_iter()
            .map(|b| {
                String::from_utf8(b.to_vec())
                    .map_err(|_| Error::InvalidInput(format!("tensor '{}': element is not UTF-8", self.name)))
            })
            .collect()
    }
}

fn count_bytes_elements(mut data: &[u8]) -> std::result::Result<usize, String> {
    let mut n = 0;
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(format!(
                "{} trailing bytes where a 4-byte length was expected",
                data.len()
            ));
        }
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if data.len() - 4 < len {
            return Err(format!(
                "element length {len} exceeds the {} bytes left",
                data.len() - 4
            ));
        }
        data = &data[4 + len..];
        n += 1;
    }
    Ok(n)
}

fn split_bytes_elements(data: &Bytes) -> std::result::Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        if data.len() - at < 4 {
            return Err(format!(
                "{} trailing bytes where a 4-byte length was expected",
                data.len() - at
            ));
        }
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        at += 4;
        if data.len() - at < len {
            return Err(format!(
                "element length {len} exceeds the {} bytes left",
                data.len() - at
            ));
        }
        out.push(data.slice(at..at + len));
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_round_trip() {
        let t = Tensor::new("x", vec![2, 2], &[1.0f32, -2.5, 3.0, 4.0]);
        t.validate().unwrap();
        assert_eq!(t.raw().len(), 16);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, -2.5, 3.0, 4.0]);
        assert!(t.to_vec::<i32>().is_err());
        let b = Tensor::from_slice("b", &[true, false]);
        assert_eq!(b.to_vec::<bool>().unwrap(), vec![true, false]);
    }

    #[test]
    fn bytes_are_length_prefixed() {
        let t = Tensor::from_strings("s", &["ab", "", "xyz"]);
        assert_eq!(&t.raw()[..6], &[2, 0, 0, 0, b'a', b'b']);
        t.validate().unwrap();
        assert_eq!(t.to_strings().unwrap(), vec!["ab", "", "xyz"]);
    }

    #[test]
    fn mismatches_are_rejected() {
        let t = Tensor::new("x", vec![3], &[1.0f32, 2.0]);
        let e = t.validate().unwrap_err();
        assert!(e.to_string().contains("needs 12 bytes"), "{e}");
        assert!(Tensor::new("x", vec![-1], &[1u8]).validate().is_err());
        assert!(Tensor::from_strings("s", &["a", "b"]).validate().is_ok());
        let bad = Tensor::from_raw(
            "s",
            DataType::Bytes,
            vec![1],
            Bytes::from_static(&[9, 0, 0, 0, 1]),
        );
        assert!(bad.validate().is_err());
        let short = Tensor::from_bytes("s", vec![3], ["a", "b"]);
        assert!(short.validate().is_err());
        let half = Tensor::from_raw("h", DataType::Fp16, vec![2], Bytes::from_static(&[0, 0x3c, 0]));
        assert!(half.validate().is_err());
        let bf = Tensor::from_raw(
            "h",
            DataType::Bf16,
            vec![2],
            Bytes::from_static(&[0x80, 0x3f, 0, 0x40]),
        );
        bf.validate().unwrap();
    }

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
    }
}
