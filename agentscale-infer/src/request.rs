//! Inference requests and responses (hand-written types over the protocol).

use std::collections::HashMap;
use std::time::Duration;

use agentscale_core::{Error, Result};
use bytes::Bytes;

use crate::pb;
use crate::tensor::{DataType, Tensor};

/// A request, tensor or response parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int64(i64),
    /// An unsigned integer.
    Uint64(u64),
    /// A floating-point number.
    Double(f64),
    /// A string.
    String(String),
}

impl Param {
    pub(crate) fn to_pb(&self) -> pb::InferParameter {
        use pb::infer_parameter::ParameterChoice as C;
        let c = match self {
            Param::Bool(b) => C::BoolParam(*b),
            Param::Int64(v) => C::Int64Param(*v),
            Param::Uint64(v) => C::Uint64Param(*v),
            Param::Double(v) => C::DoubleParam(*v),
            Param::String(s) => C::StringParam(s.clone()),
        };
        pb::InferParameter {
            parameter_choice: Some(c),
        }
    }

    pub(crate) fn from_pb(p: &pb::InferParameter) -> Option<Param> {
        use pb::infer_parameter::ParameterChoice as C;
        Some(match p.parameter_choice.as_ref()? {
            C::BoolParam(b) => Param::Bool(*b),
            C::Int64Param(v) => Param::Int64(*v),
            C::Uint64Param(v) => Param::Uint64(*v),
            C::DoubleParam(v) => Param::Double(*v),
            C::StringParam(s) => Param::String(s.clone()),
        })
    }
}

/// Parameter keys the protocol or this client sets itself; a user parameter
/// with one of these names is rejected with [`Error::InvalidInput`].
pub const RESERVED_PARAMETERS: &[&str] = &[
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
    "binary_data_output",
    "binary_data",
    "binary_data_size",
    "shared_memory_region",
    "shared_memory_offset",
    "shared_memory_byte_size",
    "triton_enable_empty_final_response",
    "headers",
];

/// A sequence (stateful model) correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceId {
    /// A numeric id.
    Int(u64),
    /// A string id.
    Str(String),
}

/// One inference request: model, inputs, requested outputs and parameters.
///
/// ```
/// use agentscale_infer::{InferRequest, Tensor};
/// use std::time::Duration;
/// let req = InferRequest::new("identity_fp32")
///     .input(Tensor::from_slice("INPUT0", &[1.0f32, 2.0]))
///     .output("OUTPUT0")
///     .priority(1)
///     .deadline(Duration::from_secs(2));
/// assert_eq!(req.model(), "identity_fp32");
/// ```
#[derive(Debug, Clone)]
pub struct InferRequest {
    pub(crate) model: String,
    pub(crate) version: String,
    pub(crate) id: String,
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) outputs: Vec<String>,
    pub(crate) params: Vec<(String, Param)>,
    pub(crate) priority: Option<u64>,
    pub(crate) server_timeout: Option<Duration>,
    pub(crate) sequence_id: Option<SequenceId>,
    pub(crate) sequence_start: bool,
    pub(crate) sequence_end: bool,
    pub(crate) deadline: Option<Duration>,
}

impl InferRequest {
    /// A request to `model` (latest version by the server's policy).
    pub fn new(model: impl Into<String>) -> InferRequest {
        InferRequest {
            model: model.into(),
            version: String::new(),
            id: String::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            params: Vec::new(),
            priority: None,
            server_timeout: None,
            sequence_id: None,
            sequence_start: false,
            sequence_end: false,
            deadline: None,
        }
    }

    /// The model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The request id (empty unless set; streams assign one).
    pub fn request_id(&self) -> &str {
        &self.id
    }

    /// The per-call deadline, if set.
    pub fn deadline_value(&self) -> Option<Duration> {
        self.deadline
    }

    /// Pins a model version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the request id (echoed in the response; used to split streams).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Adds an input tensor.
    pub fn input(mut self, tensor: Tensor) -> Self {
        self.inputs.push(tensor);
        self
    }

    /// Requests an output by name (default: all outputs).
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.outputs.push(name.into());
        self
    }

    /// Adds a custom request parameter (reserved names are rejected when sent).
    pub fn param(mut self, key: impl Into<String>, value: Param) -> Self {
        self.params.push((key.into(), value));
        self
    }

    /// Scheduling priority (Triton: 1 is highest; 0 means the model default).
    pub fn priority(mut self, priority: u64) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Server-side queue timeout (Triton's `timeout` parameter, in µs on the wire).
    pub fn server_timeout(mut self, timeout: Duration) -> Self {
        self.server_timeout = Some(timeout);
        self
    }

    /// The sequence id for stateful models.
    pub fn sequence_id(mut self, id: SequenceId) -> Self {
        self.sequence_id = Some(id);
        self
    }

    /// Marks the first request of a sequence.
    pub fn sequence_start(mut self, start: bool) -> Self {
        self.sequence_start = start;
        self
    }

    /// Marks the last request of a sequence.
    pub fn sequence_end(mut self, end: bool) -> Self {
        self.sequence_end = end;
        self
    }

    /// A per-call deadline: sent as `grpc-timeout` and enforced locally; on
    /// expiry the call fails with [`Error::Timeout`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Validates and converts into the protocol message. Tensor data is
    /// shared (reference-counted), not copied.
    pub(crate) fn to_pb(&self, enable_empty_final: bool) -> Result<pb::ModelInferRequest> {
        if self.model.is_empty() {
            return Err(Error::InvalidInput(
                "inference request without a model name".into(),
            ));
        }
        let mut parameters = HashMap::with_capacity(self.params.len() + 4);
        for (k, v) in &self.params {
            if RESERVED_PARAMETERS.contains(&k.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "parameter '{k}' is reserved; use the typed setter (priority, server_timeout, sequence_*)"
                )));
            }
            parameters.insert(k.clone(), v.to_pb());
        }
        if let Some(p) = self.priority {
            parameters.insert("priority".into(), Param::Uint64(p).to_pb());
        }
        if let Some(t) = self.server_timeout {
            let us = i64::try_from(t.as_micros()).unwrap_or(i64::MAX);
            parameters.insert("timeout".into(), Param::Int64(us).to_pb());
        }
        if let Some(id) = &self.sequence_id {
            let p = match id {
                SequenceId::Int(v) => match i64::try_from(*v) {
                    Ok(v) => Param::Int64(v),
                    Err(_) => Param::Uint64(*v),
                },
                SequenceId::Str(s) => Param::String(s.clone()),
            };
            parameters.insert("sequence_id".into(), p.to_pb());
            parameters.insert("sequence_start".into(), Param::Bool(self.sequence_start).to_pb());
            parameters.insert("sequence_end".into(), Param::Bool(self.sequence_end).to_pb());
        } else if self.sequence_start || self.sequence_end {
            return Err(Error::InvalidInput(
                "sequence_start/sequence_end need a sequence_id".into(),
            ));
        }
        if enable_empty_final {
            parameters.insert(
                "triton_enable_empty_final_response".into(),
                Param::Bool(true).to_pb(),
            );
        }
        let mut inputs = Vec::with_capacity(self.inputs.len());
        let mut raw = Vec::with_capacity(self.inputs.len());
        for t in &self.inputs {
            t.validate()?;
            if inputs
                .iter()
                .any(|i: &pb::model_infer_request::InferInputTensor| i.name == t.name())
            {
                return Err(Error::InvalidInput(format!("input '{}' given twice", t.name())));
            }
            inputs.push(pb::model_infer_request::InferInputTensor {
                name: t.name().to_string(),
                datatype: t.datatype().as_str().to_string(),
                shape: t.shape().to_vec(),
                parameters: HashMap::new(),
                contents: None,
            });
            raw.push(t.raw().clone());
        }
        let outputs = self
            .outputs
            .iter()
            .map(|n| pb::model_infer_request::InferRequestedOutputTensor {
                name: n.clone(),
                parameters: HashMap::new(),
            })
            .collect();
        Ok(pb::ModelInferRequest {
            model_name: self.model.clone(),
            model_version: self.version.clone(),
            id: self.id.clone(),
            parameters,
            inputs,
            outputs,
            raw_input_contents: raw,
        })
    }
}

/// The result of one inference (or one response of a stream).
#[derive(Debug, Clone)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The request id it answers.
    pub id: String,
    /// Response parameters (for streams, `triton_final_response`).
    pub parameters: HashMap<String, Param>,
    /// Output tensors, in the server's order.
    pub outputs: Vec<Tensor>,
}

impl InferResponse {
    /// The output named `name`, or [`Error::NotFound`].
    pub fn output(&self, name: &str) -> Result<&Tensor> {
        self.outputs.iter().find(|t| t.name() == name).ok_or_else(|| {
            Error::NotFound(format!(
                "output '{name}' not in the response of model '{}'",
                self.model_name
            ))
        })
    }

    /// Whether this is the last response of a streamed request
    /// (`triton_final_response`).
    pub fn is_final(&self) -> bool {
        matches!(
            self.parameters.get("triton_final_response"),
            Some(Param::Bool(true))
        )
    }

    pub(crate) fn from_pb(r: pb::ModelInferResponse) -> Result<InferResponse> {
        let parameters = r
            .parameters
            .iter()
            .filter_map(|(k, v)| Param::from_pb(v).map(|p| (k.clone(), p)))
            .collect();
        let mut raw = r.raw_output_contents.into_iter();
        let use_raw = raw.len() > 0;
        let mut outputs = Vec::with_capacity(r.outputs.len());
        for o in r.outputs {
            let datatype = DataType::parse(&o.datatype).ok_or_else(|| Error::Backend {
                message: format!("output '{}' has unknown datatype '{}'", o.name, o.datatype),
                source: None,
            })?;
            let data = if use_raw {
                raw.next().ok_or_else(|| Error::Backend {
                    message: format!("output '{}' has no raw contents", o.name),
                    source: None,
                })?
            } else {
                contents_to_raw(datatype, o.contents.unwrap_or_default())
            };
            let t = Tensor::from_raw(o.name, datatype, o.shape, data);
            t.validate().map_err(|e| Error::Backend {
                message: format!("malformed response from the server: {e}"),
                source: None,
            })?;
            outputs.push(t);
        }
        Ok(InferResponse {
            model_name: r.model_name,
            model_version: r.model_version,
            id: r.id,
            parameters,
            outputs,
        })
    }
}

#[cfg(feature = "raw")]
#[cfg_attr(docsrs, doc(cfg(feature = "raw")))]
impl TryFrom<pb::ModelInferResponse> for InferResponse {
    type Error = Error;

    /// Converts a protocol response, checking every output against its
    /// shape and datatype (a malformed one is [`Error::Backend`]).
    fn try_from(r: pb::ModelInferResponse) -> Result<InferResponse> {
        InferResponse::from_pb(r)
    }
}

/// Converts typed `contents` (used by servers that do not send raw bytes)
/// into the raw little-endian layout.
fn contents_to_raw(dt: DataType, c: pb::InferTensorContents) -> Bytes {
    let mut out = Vec::new();
    match dt {
        DataType::Bool => out.extend(c.bool_contents.iter().map(|b| u8::from(*b))),
        DataType::Int8 => c
            .int_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as i8).to_le_bytes())),
        DataType::Int16 => c
            .int_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as i16).to_le_bytes())),
        DataType::Int32 => c
            .int_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Int64 => c
            .int64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Uint8 => c
            .uint_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as u8).to_le_bytes())),
        DataType::Uint16 => c
            .uint_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as u16).to_le_bytes())),
        DataType::Uint32 => c
            .uint_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Uint64 => c
            .uint64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Fp32 => c
            .fp32_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Fp64 => c
            .fp64_contents
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Bytes => c.bytes_contents.iter().for_each(|b| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }),
        // No typed field exists for half-precision types; servers send them raw.
        DataType::Fp16 | DataType::Bf16 => {}
    }
    Bytes::from(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reserved_parameters_are_rejected() {
        let r = InferRequest::new("m").param("priority", Param::Uint64(1));
        assert_eq!(
            r.to_pb(false).unwrap_err().kind(),
            agentscale_core::ErrorKind::InvalidInput
        );
        let r = InferRequest::new("m")
            .param("custom", Param::Bool(true))
            .priority(2);
        let p = r.to_pb(false).unwrap();
        assert_eq!(p.parameters.len(), 2);
        assert_eq!(Param::from_pb(&p.parameters["priority"]), Some(Param::Uint64(2)));
    }

    #[test]
    fn raw_inputs_share_the_tensor_buffer() {
        let t = Tensor::from_slice("x", &[1.0f32; 1024]);
        let ptr = t.raw().as_ptr();
        let p = InferRequest::new("m").input(t).to_pb(false).unwrap();
        assert_eq!(p.raw_input_contents[0].as_ptr(), ptr);
    }

    #[test]
    fn bad_tensors_fail_before_sending() {
        let r = InferRequest::new("m").input(Tensor::new("x", vec![4], &[1i32, 2]));
        assert_eq!(
            r.to_pb(false).unwrap_err().kind(),
            agentscale_core::ErrorKind::InvalidInput
        );
    }
}
