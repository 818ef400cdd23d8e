//! What a handler returns: an optional output, bytes with JSON helpers.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The output of one successful handler run.
///
/// [`Output::none`] for a handler that produces nothing a caller reads;
/// [`Output::bytes`] or [`Output::json`] otherwise. A worker configured with
/// a result store records it under the task id (see
/// [`ResultStore`](crate::ResultStore)); without one it is dropped.
///
/// `()` converts into `Output::none()`, so `Ok(().into())` and
/// `result.map(Output::from)` migrate code written for handlers that
/// returned `()`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Output(Option<Bytes>, bool);

impl Output {
    /// No output.
    pub const NONE: Output = Output(None, false);

    /// No output.
    pub const fn none() -> Self {
        Output(None, false)
    }

    /// Raw bytes.
    pub fn bytes(b: impl Into<Bytes>) -> Self {
        Output(Some(b.into()), false)
    }

    /// The output of a coordinator that fanned out: its result is the
    /// continuation's (see [`FannedOut`](crate::orchestrate::FannedOut)).
    pub(crate) const fn deferred() -> Self {
        Output(None, true)
    }

    /// True when the task fanned out and its result will be recorded by its
    /// continuation.
    pub fn is_deferred(&self) -> bool {
        self.1
    }

    /// `value` serialised as JSON; a value that cannot be serialised is
    /// [`Error::InvalidInput`].
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        serde_json::to_vec(value)
            .map(Output::bytes)
            .map_err(|e| Error::InvalidInput(format!("output is not serialisable as JSON: {e}")))
    }

    /// True when there is no output.
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// The bytes, if any.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        self.0.as_ref()
    }

    /// The bytes, consumed.
    pub fn into_bytes(self) -> Option<Bytes> {
        self.0
    }

    /// Size in bytes (0 for none).
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, Bytes::len)
    }

    /// True when there is no output or it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The output parsed as JSON: [`Error::NotFound`] when there is none,
    /// [`Error::Codec`] when it is not valid JSON for `T`.
    pub fn parse_json<T: DeserializeOwned>(&self) -> Result<T> {
        let b = self
            .0
            .as_ref()
            .ok_or_else(|| Error::NotFound("the task produced no output".into()))?;
        serde_json::from_slice(b).map_err(|e| {
            Error::Codec(crate::error::CodecError::Malformed(format!(
                "output is not the expected JSON: {e}"
            )))
        })
    }
}

impl From<()> for Output {
    fn from(_: ()) -> Self {
        Output::none()
    }
}

impl From<Bytes> for Output {
    fn from(b: Bytes) -> Self {
        Output::bytes(b)
    }
}

impl From<Vec<u8>> for Output {
    fn from(b: Vec<u8>) -> Self {
        Output::bytes(b)
    }
}

impl From<String> for Output {
    fn from(s: String) -> Self {
        Output::bytes(s)
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None if self.1 => f.write_str("Output::deferred"),
            None => f.write_str("Output::none"),
            Some(b) => write!(f, "Output({} bytes)", b.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_none() {
        let o = Output::json(&serde_json::json!({"a": 1})).expect("json");
        let v: serde_json::Value = o.parse_json().expect("parse");
        assert_eq!(v["a"], 1);
        assert!(Output::none().is_none());
        assert_eq!(Output::from(()), Output::NONE);
        assert_eq!(
            Output::none().parse_json::<u32>().map_err(|e| e.kind()),
            Err(crate::ErrorKind::NotFound)
        );
        assert_eq!(
            Output::bytes("not json")
                .parse_json::<u32>()
                .map_err(|e| e.kind()),
            Err(crate::ErrorKind::Codec)
        );
    }
}
