//! Helpers shared by the state suites.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

/// Longest time a check waits for something to expire before failing.
pub(crate) const EXPIRY_WAIT: Duration = Duration::from_secs(30);
/// Short TTL used by the expiry checks.
pub(crate) const SHORT_TTL: Duration = Duration::from_millis(1500);

/// Polls `cond` every 50 ms until it holds; panics after [`EXPIRY_WAIT`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EXPIRY_WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true after {EXPIRY_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}
