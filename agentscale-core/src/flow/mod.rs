//! Flow control for agent work: ordered sessions, rate limits and
//! concurrency caps by key, and (with the `schedule` feature) scheduled and
//! repeating tasks.
//!
//! * **Ordered sessions** are a queue feature, opt-in per queue
//!   (`ordered_sessions` in the local and Redis queue configs) and declared
//!   in [`Capabilities::ordered_sessions`](crate::Capabilities::ordered_sessions).
//!   Session ids must be identifiers ([`validate_identifier`]).
//! * **Limits** ([`limit`]): a token-bucket rate and a max-in-flight per key,
//!   checked by the worker before a handler runs
//!   ([`WorkerBuilder::limiter`](crate::worker::WorkerBuilder::limiter)); a
//!   task over its limit is deferred ([`Nack::Defer`](crate::Nack::Defer)),
//!   not failed and not charged an attempt.
//!
//! See `docs/flow-control.md` for the guarantees.

pub mod limit;
#[cfg(feature = "schedule")]
#[cfg_attr(docsrs, doc(cfg(feature = "schedule")))]
pub mod schedule;

use crate::error::{Error, Result};

/// Longest identifier accepted (session ids, limit keys, schedule names).
pub const MAX_IDENTIFIER_LEN: usize = 128;

/// Checks that `value` is an identifier: 1 to [`MAX_IDENTIFIER_LEN`] bytes
/// of ASCII letters, digits and `_ - . : @ /`. Session ids, limit keys and
/// schedule names must be, because they become parts of backend key names.
/// `what` names the value in the [`Error::InvalidInput`].
pub fn validate_identifier(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidInput(format!("{what} is empty")));
    }
    if value.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::InvalidInput(format!(
            "{what} is {} bytes long; at most {MAX_IDENTIFIER_LEN} are allowed",
            value.len()
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '/')))
    {
        return Err(Error::InvalidInput(format!(
            "{what} {value:?} contains {c:?}; use ASCII letters, digits and _ - . : @ /"
        )));
    }
    Ok(())
}

/// Checks the session id of a task bound for a queue with ordered sessions
/// (a task without one is fine: it is not ordered).
pub fn validate_session(task: &crate::Task) -> Result<()> {
    match &task.session_id {
        Some(s) => validate_identifier(&format!("task {}: session id", task.id), s),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "conv-42", "tenant:acme/model@v1.2_x", &"x".repeat(128)] {
            assert!(validate_identifier("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "a b", "é", "a\n", "{tag}", &"x".repeat(129)] {
            let e = validate_identifier("id", bad).expect_err(bad);
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        }
    }
}
