//! The one error type of agentscale.
//!
//! Backends convert their own errors (redis, rdkafka, tonic, postgres) into
//! [`Error`] at the boundary, so no third-party error type appears in a public
//! signature. Match on [`Error::kind`] to decide what to do; use
//! [`Error::is_retryable`] to decide whether trying again can help.

use std::fmt;

/// A boxed error used as the `source` of backend and availability errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with agentscale's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in agentscale.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thing asked for does not exist (task, session, model, dead letter).
    #[error("not found: {0}")]
    NotFound(String),
    /// A compare-and-set lost: the stored version is not the one expected, or
    /// the key was deleted (tombstoned) and cannot be written again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The lease this operation names is no longer held by the caller (it
    /// expired and was handed to another worker). The operation was refused
    /// (fencing); the task will be, or was, delivered again.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// A deadline passed before the operation finished.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The service is unreachable or refused the connection; trying again later
    /// may succeed.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What was unavailable.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The caller's input is invalid (wrong shape, too large, bad identifier).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A configuration value is invalid; raised at `build()` or load time.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A task envelope or stored value could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The backend failed in a way not covered by the other kinds.
    #[error("backend: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A remote procedure call returned an error status (for example a Triton
    /// gRPC status), with the server's code and message.
    #[error("rpc error {code:?}: {message}")]
    Rpc {
        /// The status code, as the gRPC code name.
        code: RpcCode,
        /// The server's message.
        message: String,
    },
    /// The backend cannot do this (see its `capabilities()`).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The component was shut down.
    #[error("closed: {0}")]
    Closed(String),
    /// A task handler or tool reported a failure.
    #[error("handler failed: {0}")]
    Handler(String),
}

/// The kind of an [`Error`], without its payload: cheap to copy and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::LeaseLost`].
    LeaseLost,
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::InvalidInput`].
    InvalidInput,
    /// See [`Error::InvalidConfig`].
    InvalidConfig,
    /// See [`Error::Codec`].
    Codec,
    /// See [`Error::Backend`].
    Backend,
    /// See [`Error::Rpc`].
    Rpc,
    /// See [`Error::Unsupported`].
    Unsupported,
    /// See [`Error::Closed`].
    Closed,
    /// See [`Error::Handler`].
    Handler,
}

impl ErrorKind {
    /// A short stable name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::Codec => "codec",
            ErrorKind::Backend => "backend",
            ErrorKind::Rpc => "rpc",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Closed => "closed",
            ErrorKind::Handler => "handler",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::LeaseLost(_) => ErrorKind::LeaseLost,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::InvalidConfig(_) => ErrorKind::InvalidConfig,
            Error::Codec(_) => ErrorKind::Codec,
            Error::Backend { .. } => ErrorKind::Backend,
            Error::Rpc { .. } => ErrorKind::Rpc,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Closed(_) => ErrorKind::Closed,
            Error::Handler(_) => ErrorKind::Handler,
        }
    }

    /// Whether trying the same operation again may succeed.
    ///
    /// Timeouts, unavailability, backend faults, CAS conflicts (re-read and
    /// re-apply), handler failures and retryable RPC codes are retryable.
    /// Invalid input or config, codec errors, lost leases, missing things and
    /// unsupported operations are not: repeating them gives the same answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout(_)
            | Error::Unavailable { .. }
            | Error::Backend { .. }
            | Error::Conflict(_)
            | Error::Handler(_) => true,
            Error::Rpc { code, .. } => code.is_retryable(),
            Error::NotFound(_)
            | Error::LeaseLost(_)
            | Error::InvalidInput(_)
            | Error::InvalidConfig(_)
            | Error::Codec(_)
            | Error::Unsupported(_)
            | Error::Closed(_) => false,
        }
    }

    /// Builds an error of `kind` from a message alone (used to replay cached
    /// failures, which keep only kind and message).
    pub fn from_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        match kind {
            ErrorKind::NotFound => Error::NotFound(message),
            ErrorKind::Conflict => Error::Conflict(message),
            ErrorKind::LeaseLost => Error::LeaseLost(message),
            ErrorKind::Timeout => Error::Timeout(message),
            ErrorKind::Unavailable => Error::Unavailable {
                message,
                source: None,
            },
            ErrorKind::InvalidInput => Error::InvalidInput(message),
            ErrorKind::InvalidConfig => Error::InvalidConfig(message),
            ErrorKind::Codec => Error::Codec(CodecError::Malformed(message)),
            ErrorKind::Backend => Error::Backend {
                message,
                source: None,
            },
            ErrorKind::Rpc => Error::Rpc {
                code: RpcCode::Unknown,
                message,
            },
            ErrorKind::Unsupported => Error::Unsupported(message),
            ErrorKind::Closed => Error::Closed(message),
            ErrorKind::Handler => Error::Handler(message),
        }
    }

    /// A [`Error::Backend`] with a source.
    pub fn backend(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An [`Error::Unavailable`] with a source.
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A [`Error::Handler`] failure with a message, for handler code.
    pub fn handler(message: impl Into<String>) -> Self {
        Error::Handler(message.into())
    }

    /// A [`Error::InvalidInput`], for handler code that rejects a payload
    /// (the worker dead-letters such a task without retrying).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }
}

/// Why an envelope or stored value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes do not start with the agentscale envelope magic.
    #[error("not an agentscale envelope (bad magic)")]
    BadMagic,
    /// The envelope names a wire version this build does not understand.
    #[error("unsupported envelope version {found} (this build reads up to {supported})")]
    UnknownVersion {
        /// The version found in the bytes.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    /// The bytes are truncated or the body does not decode.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The value is larger than allowed.
    #[error("too large: {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Size of the value in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

/// gRPC status codes, as carried by [`Error::Rpc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum RpcCode {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl RpcCode {
    /// Maps a numeric gRPC code (0–16); anything else is `Unknown`.
    pub fn from_i32(code: i32) -> Self {
        use RpcCode::*;
        match code {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// Whether a call that failed with this code may succeed when repeated.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RpcCode::Unavailable | RpcCode::ResourceExhausted | RpcCode::Aborted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_from_kind() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::LeaseLost,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::InvalidInput,
            ErrorKind::InvalidConfig,
            ErrorKind::Codec,
            ErrorKind::Backend,
            ErrorKind::Rpc,
            ErrorKind::Unsupported,
            ErrorKind::Closed,
            ErrorKind::Handler,
        ] {
            assert_eq!(Error::from_kind(kind, "m").kind(), kind);
        }
    }

    #[test]
    fn retryability_follows_kind() {
        assert!(Error::Timeout("t".into()).is_retryable());
        assert!(Error::Conflict("c".into()).is_retryable());
        assert!(!Error::InvalidInput("i".into()).is_retryable());
        assert!(!Error::LeaseLost("l".into()).is_retryable());
        assert!(Error::Rpc {
            code: RpcCode::Unavailable,
            message: String::new()
        }
        .is_retryable());
        assert!(!Error::Rpc {
            code: RpcCode::InvalidArgument,
            message: String::new()
        }
        .is_retryable());
    }
}
