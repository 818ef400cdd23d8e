//! In-process [`ToolCache`] on a `moka` cache.

use std::time::{Duration, Instant};

use agentscale_core::{ComputeFuture, Error, Result, ToolCache, ToolKey};
use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;

use crate::cached::{check_size, check_ttl, clone_error, Cached, Outcome};

/// Default time a non-retryable failure stays cached.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Default per-value size limit (1 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// Default total capacity (256 MiB of values).
pub const DEFAULT_CAPACITY_BYTES: u64 = 256 << 20;

/// Tool results cached in this process.
///
/// * Each entry lives for the TTL given with it.
/// * Concurrent `get_or_compute` calls for one key run **one** computation
///   (single-flight within this process); if that caller is cancelled, a
///   waiting caller takes over.
/// * Non-retryable failures are cached for the negative TTL and replayed with
///   the same kind and message; retryable ones are returned to the waiting
///   callers of that computation but not cached.
/// * A value over the per-value limit is [`Error::InvalidInput`] and not
///   cached; the total size of values is bounded by the capacity, least
///   recently/frequently used entries are evicted first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> agentscale_core::Result<()> {
/// use std::time::Duration;
/// use agentscale_core::{ToolCache, ToolKey};
/// use agentscale_state::local::LocalToolCache;
///
/// let cache = LocalToolCache::builder().build()?;
/// let key = ToolKey::new("acme", "weather", "v1", &serde_json::json!({"city": "Oslo"}))?;
/// let v = cache
///     .get_or_compute(&key, Duration::from_secs(60), Box::pin(async { Ok("rain".into()) }))
///     .await?;
/// assert_eq!(&v[..], b"rain");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LocalToolCache {
    cache: Cache<ToolKey, Cached>,
    negative_ttl: Duration,
    max_value_bytes: usize,
}

impl std::fmt::Debug for LocalToolCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalToolCache")
            .field("entries", &self.cache.entry_count())
            .field("negative_ttl", &self.negative_ttl)
            .field("max_value_bytes", &self.max_value_bytes)
            .finish()
    }
}

/// Builder for [`LocalToolCache`].
#[derive(Debug, Clone)]
pub struct LocalToolCacheBuilder {
    negative_ttl: Duration,
    max_value_bytes: usize,
    capacity_bytes: u64,
}

impl Default for LocalToolCacheBuilder {
    fn default() -> Self {
        LocalToolCacheBuilder {
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            capacity_bytes: DEFAULT_CAPACITY_BYTES,
        }
    }
}

impl LocalToolCacheBuilder {
    /// How long a non-retryable failure stays cached (default
    /// [`DEFAULT_NEGATIVE_TTL`]). Must be greater than zero.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Largest value accepted, in bytes (default [`DEFAULT_MAX_VALUE_BYTES`]).
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = n;
        self
    }

    /// Total bytes of values held before eviction (default
    /// [`DEFAULT_CAPACITY_BYTES`]). Must be at least `max_value_bytes`.
    pub fn capacity_bytes(mut self, n: u64) -> Self {
        self.capacity_bytes = n;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<LocalToolCache> {
        validate(self.negative_ttl, self.max_value_bytes, self.capacity_bytes)?;
        Ok(LocalToolCache {
            cache: new_cache(self.capacity_bytes),
            negative_ttl: self.negative_ttl,
            max_value_bytes: self.max_value_bytes,
        })
    }
}

pub(crate) fn validate(negative_ttl: Duration, max_value_bytes: usize, capacity_bytes: u64) -> Result<()> {
    if negative_ttl.is_zero() {
        return Err(Error::InvalidConfig(
            "tool cache negative_ttl must be greater than zero".into(),
        ));
    }
    if max_value_bytes == 0 || max_value_bytes > u32::MAX as usize - 1024 {
        return Err(Error::InvalidConfig(format!(
            "tool cache max_value_bytes must be in 1..{}",
            u32::MAX as usize - 1024
        )));
    }
    if capacity_bytes < max_value_bytes as u64 {
        return Err(Error::InvalidConfig(format!(
            "tool cache capacity_bytes ({capacity_bytes}) is smaller than max_value_bytes ({max_value_bytes})"
        )));
    }
    Ok(())
}

/// Each entry expires after the TTL it was stored with.
struct PerEntryTtl;

impl moka::Expiry<ToolKey, Cached> for PerEntryTtl {
    fn expire_after_create(&self, _: &ToolKey, value: &Cached, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &ToolKey,
        value: &Cached,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub(crate) fn new_cache(capacity_bytes: u64) -> Cache<ToolKey, Cached> {
    Cache::builder()
        .max_capacity(capacity_bytes)
        .weigher(|_, v: &Cached| v.weight())
        .expire_after(PerEntryTtl)
        .build()
}

impl LocalToolCache {
    /// A builder with the defaults.
    pub fn builder() -> LocalToolCacheBuilder {
        LocalToolCacheBuilder::default()
    }

    /// Entries currently held (approximate, as moka counts lazily).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// Runs `compute` and decides what to cache: values (size-checked) and
/// non-retryable failures; retryable failures and oversize values are errors
/// that are not cached.
pub(crate) async fn compute_outcome(
    compute: ComputeFuture<'_>,
    ttl: Duration,
    negative_ttl: Duration,
    max_value_bytes: usize,
) -> Result<Cached> {
    match compute.await {
        Ok(value) => {
            check_size(value.len(), max_value_bytes)?;
            Ok(Cached {
                outcome: Outcome::Value(value),
                ttl,
            })
        }
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Ok(Cached::failure(&e, negative_ttl)),
    }
}

#[async_trait]
impl ToolCache for LocalToolCache {
    async fn get(&self, key: &ToolKey) -> Result<Option<Bytes>> {
        match self.cache.get(key).await {
            Some(c) => c.into_result().map(Some),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &ToolKey, value: Bytes, ttl: Duration) -> Result<()> {
        check_ttl(ttl)?;
        check_size(value.len(), self.max_value_bytes)?;
        self.cache
            .insert(
                key.clone(),
                Cached {
                    outcome: Outcome::Value(value),
                    ttl,
                },
            )
            .await;
        Ok(())
    }

    async fn get_or_compute<'a>(
        &'a self,
        key: &'a ToolKey,
        ttl: Duration,
        compute: ComputeFuture<'a>,
    ) -> Result<Bytes> {
        check_ttl(ttl)?;
        let init = compute_outcome(compute, ttl, self.negative_ttl, self.max_value_bytes);
        match self.cache.try_get_with_by_ref(key, init).await {
            Ok(c) => c.into_result(),
            Err(e) => Err(clone_error(&e)),
        }
    }

    async fn invalidate(&self, key: &ToolKey) -> Result<()> {
        self.cache.invalidate(key).await;
        Ok(())
    }
}
