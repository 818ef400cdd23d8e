//! Typed helpers over the state contracts: what every service otherwise
//! writes by hand.
//!
//! * [`SessionStoreExt::update_json`]: read → decode → modify →
//!   compare-and-set, retried on conflict a bounded number of times.
//! * [`SessionStoreExt::apply_once`]: the same, but a task's effect is applied
//!   to the session **at most once** even when at-least-once delivery runs the
//!   handler again (the ids of applied tasks are kept inside the same
//!   compare-and-set write, so the effect and the record of it cannot part).
//! * [`ToolCacheExt::get_or_compute_json`]: a typed, single-flight tool call
//!   that says whether it was a hit, a miss or coalesced with another caller.
//!
//! All of them are extension traits with blanket implementations, so they
//! work on every backend, `Arc<dyn SessionStore>` and `Arc<dyn ToolCache>`
//! included.
//!
//! ```
//! # async fn demo(sessions: &dyn agentscale_core::SessionStore) -> agentscale_core::Result<()> {
//! use agentscale_core::{SessionKey, SessionStoreExt, TaskId};
//! let key = SessionKey::new("acme", "chat-1")?;
//! let task = TaskId::generate();
//! // The first run counts the message…
//! let n = sessions.apply_once(&key, &task, |n: Option<u64>| Ok(n.unwrap_or(0) + 1)).await?;
//! assert_eq!((n.value, n.applied), (1, true));
//! // …a redelivery of the same task does not count it again.
//! let n = sessions.apply_once(&key, &task, |n: Option<u64>| Ok(n.unwrap_or(0) + 1)).await?;
//! assert_eq!((n.value, n.applied), (1, false));
//! # Ok(()) }
//! # let _ = demo;
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{SessionKey, SessionStore, ToolCache, ToolKey};
use crate::task::TaskId;

/// Compare-and-set attempts [`SessionStoreExt::update_json`] and
/// [`SessionStoreExt::apply_once`] make before giving up with
/// [`Error::Conflict`].
pub const DEFAULT_UPDATE_ATTEMPTS: u32 = 16;

/// How many applied task ids [`SessionStoreExt::apply_once`] remembers per
/// session. A redelivery older than the last this-many distinct tasks of the
/// session would be applied again; raise it with
/// [`SessionStoreExt::apply_once_with`] for sessions with more concurrent work.
pub const DEFAULT_APPLIED_IDS: usize = 256;

/// The result of a typed session update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated<T> {
    /// The value now stored.
    pub value: T,
    /// The version now stored.
    pub version: u64,
    /// False when nothing was written: [`SessionStoreExt::apply_once`] found
    /// the task already applied.
    pub applied: bool,
    /// Compare-and-set conflicts met (and retried) on the way.
    pub conflicts: u32,
}

/// What [`SessionStoreExt::apply_once`] stores: the value and the ids of the
/// last tasks applied to it, oldest first.
#[derive(Debug, Serialize, Deserialize)]
struct Applied<T> {
    value: T,
    applied: VecDeque<String>,
}

fn decode<T: DeserializeOwned>(key: &SessionKey, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| {
        Error::InvalidInput(format!(
            "session {key:?}: stored state is not the expected JSON: {e}"
        ))
    })
}

fn encode<T: Serialize>(key: &SessionKey, value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::InvalidInput(format!("session {key:?}: cannot encode state as JSON: {e}")))
}

/// A short pause between compare-and-set attempts: grows with the attempt and
/// is jittered so that racing writers spread out. Bounded by 50 ms.
fn conflict_pause(attempt: u32) -> Duration {
    let base_us = 200u64.saturating_mul(1 << attempt.min(8));
    let jitter = rand::random::<u64>() % base_us.max(1);
    Duration::from_micros((base_us / 2 + jitter).min(50_000))
}

/// Typed updates of a session. Implemented for every [`SessionStore`].
#[async_trait]
pub trait SessionStoreExt: SessionStore {
    /// The session decoded from JSON, with its version; `None` when absent.
    async fn get_json<T>(&self, key: &SessionKey) -> Result<Option<(T, u64)>>
    where
        T: DeserializeOwned + Send,
    {
        match self.get(key).await? {
            Some(s) => Ok(Some((decode(key, &s.data)?, s.version))),
            None => Ok(None),
        }
    }

    /// Reads the session (JSON), applies `f` to it (`None` when it does not
    /// exist yet) and writes the result with compare-and-set; on a conflict
    /// it reads again and reapplies `f`, up to [`DEFAULT_UPDATE_ATTEMPTS`]
    /// times, then fails with [`Error::Conflict`]. An error from `f` stops
    /// the update and is returned as is; nothing is written.
    ///
    /// `f` may run more than once, so it must only compute (no side effects).
    async fn update_json<T, F>(&self, key: &SessionKey, mut f: F) -> Result<Updated<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnMut(Option<T>) -> Result<T> + Send,
    {
        let mut conflicts = 0;
        for attempt in 0..DEFAULT_UPDATE_ATTEMPTS {
            let (current, version) = match self.get(key).await? {
                Some(s) => (Some(decode::<T>(key, &s.data)?), s.version),
                None => (None, 0),
            };
            let value = f(current)?;
            match self.put(key, version, encode(key, &value)?).await {
                Ok(version) => {
                    return Ok(Updated {
                        value,
                        version,
                        applied: true,
                        conflicts,
                    })
                }
                Err(Error::Conflict(_)) => {
                    conflicts += 1;
                    tokio::time::sleep(conflict_pause(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "session {key:?}: still conflicting after {DEFAULT_UPDATE_ATTEMPTS} compare-and-set attempts"
        )))
    }

    /// [`update_json`](Self::update_json) that applies `task`'s effect at most
    /// once: the ids of the last [`DEFAULT_APPLIED_IDS`] tasks applied are
    /// stored with the value, in the same compare-and-set write, and a task
    /// found there is not applied again (`applied: false`, the stored value
    /// returned). Use it for the effects of an at-least-once handler on its
    /// session (counters, appended turns, balances).
    ///
    /// The stored JSON is `{"value": …, "applied": […]}`; read it with
    /// [`get_applied`](Self::get_applied).
    async fn apply_once<T, F>(&self, key: &SessionKey, task: &TaskId, f: F) -> Result<Updated<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnMut(Option<T>) -> Result<T> + Send,
    {
        self.apply_once_with(key, task, DEFAULT_APPLIED_IDS, f).await
    }

    /// [`apply_once`](Self::apply_once) remembering the last `remember` task
    /// ids (at least 1).
    async fn apply_once_with<T, F>(
        &self,
        key: &SessionKey,
        task: &TaskId,
        remember: usize,
        mut f: F,
    ) -> Result<Updated<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnMut(Option<T>) -> Result<T> + Send,
    {
        if remember == 0 {
            return Err(Error::InvalidInput(
                "apply_once: remember at least one task id".into(),
            ));
        }
        let id = task.as_str();
        let mut conflicts = 0;
        for attempt in 0..DEFAULT_UPDATE_ATTEMPTS {
            let (current, version) = match self.get(key).await? {
                Some(s) => (Some(decode::<Applied<T>>(key, &s.data)?), s.version),
                None => (None, 0),
            };
            let (value, mut applied) = match current {
                Some(c) if c.applied.iter().any(|a| a == id) => {
                    return Ok(Updated {
                        value: c.value,
                        version,
                        applied: false,
                        conflicts,
                    })
                }
                Some(c) => (f(Some(c.value))?, c.applied),
                None => (f(None)?, VecDeque::new()),
            };
            applied.push_back(id.to_owned());
            while applied.len() > remember {
                applied.pop_front();
            }
            let stored = Applied { value, applied };
            match self.put(key, version, encode(key, &stored)?).await {
                Ok(version) => {
                    return Ok(Updated {
                        value: stored.value,
                        version,
                        applied: true,
                        conflicts,
                    })
                }
                Err(Error::Conflict(_)) => {
                    conflicts += 1;
                    tokio::time::sleep(conflict_pause(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "session {key:?}: still conflicting after {DEFAULT_UPDATE_ATTEMPTS} compare-and-set attempts"
        )))
    }

    /// The value written by [`apply_once`](Self::apply_once), with its version.
    async fn get_applied<T>(&self, key: &SessionKey) -> Result<Option<(T, u64)>>
    where
        T: DeserializeOwned + Send,
    {
        match self.get(key).await? {
            Some(s) => Ok(Some((decode::<Applied<T>>(key, &s.data)?.value, s.version))),
            None => Ok(None),
        }
    }
}

impl<S: SessionStore + ?Sized> SessionStoreExt for S {}

/// How a cached tool call was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// The value was cached.
    Hit,
    /// This caller computed the value.
    Miss,
    /// Another caller was computing the same key; this one waited for it.
    Coalesced,
}

impl CacheOutcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
        }
    }
}

/// A typed tool call result and how it was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<T> {
    /// The tool's result.
    pub value: T,
    /// Hit, miss or coalesced.
    pub outcome: CacheOutcome,
}

/// Typed tool calls. Implemented for every [`ToolCache`].
#[async_trait]
pub trait ToolCacheExt: ToolCache {
    /// The tool's result for `key` as JSON: from the cache, or computed by
    /// `compute` (single-flight: concurrent callers of one key run it once)
    /// and cached for `ttl`. A non-retryable error of `compute` is cached
    /// negatively as the backend does for [`ToolCache::get_or_compute`].
    ///
    /// The outcome is also counted in
    /// [`Metrics`](crate::metrics::Metrics) when one is given
    /// (`agentscale_tool_cache_total{outcome}`). Telling a hit from a
    /// coalesced wait costs one cache read before the single-flight call.
    async fn get_or_compute_json<T, Fut>(
        &self,
        key: &ToolKey,
        ttl: Duration,
        metrics: Option<&crate::metrics::Metrics>,
        compute: Fut,
    ) -> Result<Cached<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        Fut: Future<Output = Result<T>> + Send,
    {
        let decode = |bytes: &[u8]| -> Result<T> {
            serde_json::from_slice(bytes).map_err(|e| {
                Error::InvalidInput(format!(
                    "tool cache {key:?}: cached value is not the expected JSON: {e}"
                ))
            })
        };
        let outcome = if let Some(bytes) = self.get(key).await? {
            Cached {
                value: decode(&bytes)?,
                outcome: CacheOutcome::Hit,
            }
        } else {
            let ran = Arc::new(AtomicBool::new(false));
            let flag = ran.clone();
            let compute = async move {
                flag.store(true, Ordering::Release);
                let value = compute.await?;
                serde_json::to_vec(&value)
                    .map(Bytes::from)
                    .map_err(|e| Error::InvalidInput(format!("tool result cannot be encoded as JSON: {e}")))
            };
            let bytes = self.get_or_compute(key, ttl, Box::pin(compute)).await?;
            Cached {
                value: decode(&bytes)?,
                outcome: if ran.load(Ordering::Acquire) {
                    CacheOutcome::Miss
                } else {
                    CacheOutcome::Coalesced
                },
            }
        };
        if let Some(m) = metrics {
            m.record_tool_cache(outcome.outcome);
        }
        Ok(outcome)
    }
}

impl<C: ToolCache + ?Sized> ToolCacheExt for C {}
