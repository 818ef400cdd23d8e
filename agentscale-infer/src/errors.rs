//! Mapping transport and gRPC failures onto `agentscale_core::Error`, with
//! server-controlled text clipped.

use agentscale_core::{Error, RpcCode};

/// The most bytes of server-controlled text (grpc-message, GOAWAY debug
/// data, a stream's error message) copied into an error.
pub(crate) const MAX_SERVER_TEXT: usize = 4096;

/// `s` cut to at most `max` bytes (on a character boundary), with a note of
/// how much was left out.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &s[..end], s.len() - end)
}

/// An error with whether repeating the call elsewhere is safe (the request
/// never reached a server).
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) error: Error,
    pub(crate) retry_safe: bool,
}

impl From<Error> for CallError {
    fn from(error: Error) -> Self {
        CallError {
            error,
            retry_safe: false,
        }
    }
}

/// Whether a transport error happened before anything was sent: the
/// connection could not be made, or the server refused the stream
/// (`REFUSED_STREAM`, which promises the request was not processed).
fn nothing_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) && h2.is_remote() {
                return true;
            }
        }
        if let Some(t) = e.downcast_ref::<crate::transport::TransportError>() {
            if t.before_sending() {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// An error and its sources, joined by `": "`, clipped.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        cur = e.source();
    }
    clip(&chain, 2 * MAX_SERVER_TEXT)
}

/// A gRPC status (from the server, from tonic's codec, or wrapping a
/// transport error) as a [`CallError`].
pub(crate) fn status_to_call_error(s: tonic::Status, what: &str) -> CallError {
    let message = clip(s.message(), MAX_SERVER_TEXT);
    if let Some(src) = std::error::Error::source(&s) {
        return CallError {
            retry_safe: nothing_sent(src),
            error: Error::Unavailable {
                message: format!("{what}: {}", error_chain(src)),
                source: None,
            },
        };
    }
    let code = RpcCode::from_i32(s.code() as i32);
    let error = match code {
        RpcCode::DeadlineExceeded => Error::Timeout(format!("{what}: {message}")),
        _ => Error::Rpc { code, message },
    };
    CallError {
        error,
        retry_safe: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("abc", 8), "abc");
        let long = "é".repeat(100);
        let c = clip(&long, 5);
        assert!(c.starts_with("éé…"), "{c}");
        assert!(c.contains("196 bytes cut"), "{c}");
    }
}
