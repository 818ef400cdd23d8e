//! What a backend's `setup` receives and returns: options and parameters
//! with a fresh namespace, fixtures with their cleanup, and [`SetupError`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{ExpiryMode, MemoryStore, Metric, SessionStore, TaskQueue, ToolCache};
use futures::future::BoxFuture;
use futures::FutureExt;

/// Why `setup` could not build a fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupError {
    /// The service is not configured: its environment variable is unset.
    /// Outside `CI=true` the backend's checks are reported as ignored; under
    /// `CI=true` they fail with this reason.
    ServiceMissing {
        /// The environment variable that names the service.
        var: String,
    },
    /// The backend could not be built (bad config, service unreachable):
    /// the check fails with this message.
    Failed(String),
}

impl SetupError {
    /// A setup failure with `message` (use it for errors of a service's own
    /// client: `.map_err(SetupError::failed)`).
    pub fn failed(message: impl fmt::Display) -> Self {
        SetupError::Failed(message.to_string())
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::ServiceMissing { var } => write!(
                f,
                "{var} is not set (start the service, e.g. `eval \"$(scripts/dev-services up)\"`, and export {var})"
            ),
            SetupError::Failed(m) => write!(f, "setup failed: {m}"),
        }
    }
}

impl std::error::Error for SetupError {}

impl From<agentscale_core::Error> for SetupError {
    fn from(e: agentscale_core::Error) -> Self {
        SetupError::Failed(e.to_string())
    }
}

/// What a `setup` function returns.
pub type SetupResult<T> = Result<T, SetupError>;

/// The value of the environment variable `var` that names a service (a URL,
/// a broker list), or [`SetupError::ServiceMissing`] when it is unset or
/// empty. Use it with `?` at the top of `setup`.
pub fn service_env(var: &str) -> SetupResult<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(SetupError::ServiceMissing { var: var.to_string() }),
    }
}

/// Whether this run is under CI (`CI=true` or `CI=1`): then a missing
/// service fails its checks instead of ignoring them.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A fresh random name `{prefix}-{32 hex digits}`, for backend-specific tests
/// that make their own queues, topics or key prefixes.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh namespace for one check: `[a-z0-9_]`, starting with a letter, at
/// most 63 characters (valid as a queue name, Kafka topic, Redis key prefix
/// and unquoted SQL identifier).
pub(crate) fn namespace(suite: &str, check: &str) -> String {
    let mut head: String = format!("{suite}_{check}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    head.truncate(46);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{head}_{}", &random[..16])
}

/// Deletes what a check left behind (keys, streams, topics). Runs after the
/// check whether it passed, failed, panicked or timed out.
pub type Cleanup = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send + Sync>;

/// Plants raw bytes as an entry of the queue under test, bypassing `enqueue`
/// (for backends with a wire format).
pub type RawInjector = Box<dyn Fn(Vec<u8>) -> BoxFuture<'static, ()> + Send + Sync>;

fn boxed_cleanup<F, Fut>(f: F) -> Cleanup
where
    F: FnOnce() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move || f().boxed())
}

// ---------------------------------------------------------------------------
// Queue

/// What the queue suite asks of `setup` for one check.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueueOptions {
    /// A fresh random queue name (see the crate docs for its alphabet); use it
    /// as the queue name, key prefix or topic so checks never see each
    /// other's tasks.
    pub name: String,
    /// The lease timeout to configure.
    pub lease_timeout: Duration,
    /// The envelope limit to configure.
    pub max_envelope_bytes: usize,
    /// Turn ordered sessions on, where the backend has them (always true:
    /// tasks without a session id, which every other check uses, behave the
    /// same either way; the session checks run only when the queue then
    /// declares `ordered_sessions`).
    pub ordered_sessions: bool,
}

/// Lease timeout the queue suite asks for: long enough for a network round
/// trip, short enough that expiry checks stay quick.
pub const QUEUE_LEASE_TIMEOUT: Duration = Duration::from_millis(500);
/// Envelope limit the queue suite asks for.
pub const QUEUE_MAX_ENVELOPE_BYTES: usize = 64 * 1024;

impl QueueOptions {
    pub(crate) fn fresh(check: &str) -> Self {
        QueueOptions {
            name: namespace("asq", check),
            lease_timeout: QUEUE_LEASE_TIMEOUT,
            max_envelope_bytes: QUEUE_MAX_ENVELOPE_BYTES,
            ordered_sessions: true,
        }
    }
}

/// What a queue `setup` returns: the queue under test and its optional hooks.
pub struct QueueFixture {
    /// The queue under test.
    pub queue: Arc<dyn TaskQueue>,
    pub(crate) inject_raw: Option<RawInjector>,
    pub(crate) cleanup: Option<Cleanup>,
}

impl fmt::Debug for QueueFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueFixture")
            .field("queue", &self.queue)
            .field("inject_raw", &self.inject_raw.is_some())
            .field("cleanup", &self.cleanup.is_some())
            .finish()
    }
}

impl QueueFixture {
    /// A fixture for `queue`, without hooks.
    pub fn new(queue: impl TaskQueue + 'static) -> Self {
        QueueFixture::from_arc(Arc::new(queue))
    }

    /// A fixture for a shared queue.
    pub fn from_arc(queue: Arc<dyn TaskQueue>) -> Self {
        QueueFixture {
            queue,
            inject_raw: None,
            cleanup: None,
        }
    }

    /// Adds a raw-entry injector: `f(bytes)` appends `bytes` to the queue as
    /// one entry, exactly as a foreign producer would. Required when the
    /// queue declares `capabilities().wire_format`.
    pub fn with_raw_injector<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inject_raw = Some(Box::new(move |b| f(b).boxed()));
        self
    }

    /// Adds a cleanup that runs after the check, pass, fail or panic.
    pub fn with_cleanup<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.cleanup = Some(boxed_cleanup(f));
        self
    }
}

// ---------------------------------------------------------------------------
// State stores

/// A state store under test (session store, memory store, tool cache) and
/// how to clean up after it.
pub struct Fixture<S: ?Sized> {
    /// The store.
    pub store: Arc<S>,
    pub(crate) cleanup: Option<Cleanup>,
}

impl<S: ?Sized + fmt::Debug> fmt::Debug for Fixture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .field("cleanup", &self.cleanup.is_some())
            .finish()
    }
}

impl<S: ?Sized> Fixture<S> {
    /// A fixture with nothing to clean up (in-process stores).
    pub fn new(store: Arc<S>) -> Self {
        Fixture { store, cleanup: None }
    }

    /// Adds a cleanup that removes what the check wrote; it runs after the
    /// check, pass, fail or panic.
    pub fn with_cleanup<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.cleanup = Some(boxed_cleanup(f));
        self
    }
}

/// A session store fixture.
pub type SessionFixture = Fixture<dyn SessionStore>;
/// A long-term memory store fixture.
pub type MemoryFixture = Fixture<dyn MemoryStore>;
/// A tool cache fixture.
pub type ToolCacheFixture = Fixture<dyn ToolCache>;

/// Parameters of a session store under test.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionParams {
    /// A fresh namespace for this check: use it as the key prefix.
    pub namespace: String,
    /// TTL applied on every write.
    pub ttl: Duration,
    /// History cap.
    pub history_cap: usize,
}

impl SessionParams {
    pub(crate) fn fresh(check: &str) -> Self {
        SessionParams {
            namespace: namespace("st", check),
            ttl: Duration::from_secs(600),
            history_cap: 100,
        }
    }
}

/// Parameters of a long-term memory store under test.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemoryParams {
    /// A fresh namespace for this check: use it as the key prefix or table.
    pub namespace: String,
    /// Vector dimension.
    pub dimensions: usize,
    /// Similarity metric.
    pub metric: Metric,
    /// What the store does with expired records (`MemoryStore::expiry_mode`).
    pub expiry_mode: ExpiryMode,
}

impl MemoryParams {
    pub(crate) fn fresh(check: &str) -> Self {
        MemoryParams {
            namespace: namespace("mem", check),
            dimensions: 2,
            metric: Metric::Cosine,
            expiry_mode: ExpiryMode::Hide,
        }
    }
}

/// Parameters of a tool cache under test.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ToolCacheParams {
    /// A fresh namespace for this check: use it as the key prefix.
    pub namespace: String,
    /// TTL of cached failures.
    pub negative_ttl: Duration,
    /// Per-value size limit.
    pub max_value_bytes: usize,
}

impl ToolCacheParams {
    pub(crate) fn fresh(check: &str) -> Self {
        ToolCacheParams {
            namespace: namespace("tc", check),
            negative_ttl: Duration::from_secs(600),
            max_value_bytes: 64 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_fresh_and_identifier_safe() {
        let long = "a_check_name_that_is_much_longer_than_any_real_check_name";
        let a = namespace("asq", long);
        let b = namespace("asq", long);
        assert_ne!(a, b);
        for n in [&a, &b, &namespace("st", "Tool-Cache check")] {
            assert!(n.len() <= 63, "{n}");
            assert!(n.starts_with(|c: char| c.is_ascii_lowercase()), "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{n}"
            );
        }
    }

    #[test]
    fn service_env_reports_the_variable() {
        let var = "AGENTSCALE_TESTKIT_SURELY_UNSET_VARIABLE";
        let err = service_env(var).expect_err("unset");
        assert_eq!(err, SetupError::ServiceMissing { var: var.into() });
        assert!(err.to_string().contains(var));
    }
}
