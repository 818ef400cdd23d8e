//! What a tool cache stores per key: a value or a replayable failure.

use std::time::Duration;

use agentscale_core::{Error, ErrorKind};
use bytes::Bytes;

/// A cached tool outcome with the TTL it was stored for.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) outcome: Outcome,
    pub(crate) ttl: Duration,
}

/// A value, or a non-retryable failure cached negatively.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Value(Bytes),
    Failure { kind: ErrorKind, message: String },
}

impl Cached {
    /// Bytes this entry accounts for in a size-bounded cache.
    pub(crate) fn weight(&self) -> u32 {
        let n = match &self.outcome {
            Outcome::Value(b) => b.len(),
            Outcome::Failure { message, .. } => message.len(),
        };
        // Fixed overhead for the key and bookkeeping so empty values still count.
        u32::try_from(n.saturating_add(128)).unwrap_or(u32::MAX)
    }

    /// The value, or the cached failure replayed as an error.
    pub(crate) fn into_result(self) -> Result<Bytes, Error> {
        match self.outcome {
            Outcome::Value(b) => Ok(b),
            Outcome::Failure { kind, message } => Err(Error::from_kind(kind, message)),
        }
    }

    /// A negative entry for `err`.
    pub(crate) fn failure(err: &Error, ttl: Duration) -> Cached {
        Cached {
            outcome: Outcome::Failure {
                kind: err.kind(),
                message: error_message(err),
            },
            ttl,
        }
    }
}

/// The message of an error without its kind prefix, so that replaying it with
/// [`Error::from_kind`] reproduces the same `Display`.
pub(crate) fn error_message(err: &Error) -> String {
    match err {
        Error::NotFound(m)
        | Error::Conflict(m)
        | Error::LeaseLost(m)
        | Error::Timeout(m)
        | Error::InvalidInput(m)
        | Error::InvalidConfig(m)
        | Error::Unsupported(m)
        | Error::Closed(m)
        | Error::Handler(m) => m.clone(),
        Error::Unavailable { message, .. } | Error::Backend { message, .. } | Error::Rpc { message, .. } => {
            message.clone()
        }
        Error::Codec(c) => c.to_string(),
        other => other.to_string(),
    }
}

/// A copy of an error shared between single-flight waiters (sources are
/// dropped; kind, message and RPC code are kept).
pub(crate) fn clone_error(err: &Error) -> Error {
    match err {
        Error::Codec(c) => Error::Codec(c.clone()),
        Error::Rpc { code, message } => Error::Rpc {
            code: *code,
            message: message.clone(),
        },
        other => Error::from_kind(other.kind(), error_message(other)),
    }
}

/// Refuses values larger than `limit` bytes.
pub(crate) fn check_size(len: usize, limit: usize) -> Result<(), Error> {
    if len > limit {
        return Err(Error::InvalidInput(format!(
            "tool result is {len} bytes, larger than the cache's per-value limit of {limit} bytes; \
             raise max_value_bytes or cache a smaller result"
        )));
    }
    Ok(())
}

/// Refuses a zero TTL.
pub(crate) fn check_ttl(ttl: Duration) -> Result<(), Error> {
    if ttl.is_zero() {
        return Err(Error::InvalidInput(
            "tool cache ttl must be greater than zero".into(),
        ));
    }
    Ok(())
}
