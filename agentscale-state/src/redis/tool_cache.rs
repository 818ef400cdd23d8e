//! Two-level tool cache: in-process moka over Redis, single-flight fleet-wide.

use std::fmt;
use std::time::Duration;

use agentscale_core::{ComputeFuture, Error, ErrorKind, Result, ToolCache, ToolKey};
use agentscale_redis::RedisConnection;
use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;
use redis::{Script, Value};

use super::config::{millis, RedisStateConfig};
use super::{connect, redis_error};
use crate::cached::{check_size, check_ttl, clone_error, Cached, Outcome};
use crate::local::{compute_outcome, new_cache};
use agentscale_redis::Redis;

/// `KEYS`: value, lock. `ARGV`: token, lease ms.
/// `{1, value, pttl}` on a hit, `{2}` if this caller took the lock, `{3}` if
/// another caller holds it.
const GET_OR_LOCK: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return {1, v, redis.call('PTTL', KEYS[1])} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
";

/// `KEYS`: value, lock. `ARGV`: token, encoded value ('' = store nothing),
/// ttl ms. Stores the outcome (if any) and releases the lock if still ours.
const STORE_AND_UNLOCK: &str = r"
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
";

/// `KEYS`: lock. `ARGV`: token, lease ms. Renews the lease if still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// First poll interval while another replica computes; doubles up to `MAX_POLL`.
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(50);

/// Tool results cached in two levels: an in-process moka cache (level 1, short
/// TTL) over Redis (level 2, shared by every replica).
///
/// * **Single-flight across replicas**: on a miss, a caller takes a lock key
///   (`SET NX PX lease`) in the same Lua script that checks for the value;
///   callers on other replicas poll (2 ms doubling to 50 ms) until the value
///   appears. Within one process, concurrent callers of a key share one such
///   attempt (moka's coalescing). So one computation runs per key
///   fleet-wide. The computing replica renews its lease while computing; if
///   the computing caller is cancelled the lock is released at once, and if
///   its process crashes the lease runs out and a waiting replica takes over.
/// * Values live for the TTL given with them; non-retryable failures for the
///   negative TTL (replayed with kind and message); retryable failures are not
///   cached. Level 1 keeps an entry for `min(tool_local_ttl, remaining TTL)`,
///   so an `invalidate` on another replica is seen here after at most
///   `tool_local_ttl`.
/// * Values larger than `tool_max_value_bytes` are [`Error::InvalidInput`].
/// * If Redis is unreachable, calls fail with [`Error::Unavailable`]
///   (retryable); a value computed just before Redis failed is still returned.
#[derive(Clone)]
pub struct RedisToolCache {
    conn: RedisConnection,
    local: Cache<ToolKey, Cached>,
    prefix: String,
    local_ttl: Duration,
    negative_ttl: Duration,
    max_value_bytes: usize,
    lock_lease: Duration,
    wait_timeout: Duration,
    get_or_lock: Script,
    store_and_unlock: Script,
    renew: Script,
}

impl fmt::Debug for RedisToolCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisToolCache")
            .field("prefix", &self.prefix)
            .field("local_ttl", &self.local_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("lock_lease", &self.lock_lease)
            .finish()
    }
}

/// What the first poll of a miss found.
enum Probe {
    Hit(Vec<u8>, i64),
    Locked,
    Busy,
}

impl RedisToolCache {
    /// Validates `config`, opens its own connection and loads the scripts.
    /// Each instance has its own level-1 cache.
    pub async fn connect(config: RedisStateConfig) -> Result<Self> {
        let redis = connect(&config).await?;
        Self::new(redis, config).await
    }

    /// The same on an existing [`Redis`] handle, sharing its connection with
    /// other backends; the connection settings of `config` (`url`,
    /// timeouts) are not used.
    pub async fn new(redis: Redis, config: RedisStateConfig) -> Result<Self> {
        config.validate()?;
        let conn = redis.connection();
        let cache = RedisToolCache {
            conn,
            local: new_cache(config.tool_local_capacity_bytes),
            prefix: config.key_prefix.clone(),
            local_ttl: config.tool_local_ttl,
            negative_ttl: config.tool_negative_ttl,
            max_value_bytes: config.tool_max_value_bytes,
            lock_lease: config.tool_lock_lease,
            wait_timeout: config.tool_wait_timeout,
            get_or_lock: Script::new(GET_OR_LOCK),
            store_and_unlock: Script::new(STORE_AND_UNLOCK),
            renew: Script::new(RENEW),
        };
        let mut conn = cache.conn.clone();
        for s in [&cache.get_or_lock, &cache.store_and_unlock, &cache.renew] {
            s.prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| redis_error("SCRIPT LOAD", e))?;
        }
        Ok(cache)
    }

    /// The value and lock keys of `key`.
    fn keys(&self, key: &ToolKey) -> (String, String) {
        let base = format!(
            "{}:{{{}:tool:{}:{}:{}}}",
            self.prefix,
            key.tenant(),
            key.tool(),
            key.version(),
            key.args_digest()
        );
        (format!("{base}:val"), format!("{base}:lock"))
    }

    /// Level-1 entry for an outcome that Redis holds for `remaining` more.
    fn local_entry(&self, outcome: Outcome, remaining: Duration) -> Cached {
        Cached {
            outcome,
            ttl: remaining.min(self.local_ttl).max(Duration::from_millis(1)),
        }
    }

    async fn probe(&self, value_key: &str, lock_key: &str, token: &str) -> Result<Probe> {
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self
            .get_or_lock
            .key(value_key)
            .key(lock_key)
            .arg(token)
            .arg(millis(self.lock_lease))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("tool cache lookup", e))?;
        match reply.as_slice() {
            [Value::Int(1), Value::BulkString(v), Value::Int(pttl)] => Ok(Probe::Hit(v.clone(), *pttl)),
            [Value::Int(2)] => Ok(Probe::Locked),
            [Value::Int(3)] => Ok(Probe::Busy),
            other => Err(Error::Backend {
                message: format!("unexpected tool cache reply {other:?}"),
                source: None,
            }),
        }
    }

    /// Runs `compute` while renewing the lock lease.
    async fn compute_holding_lock(
        &self,
        lock_key: &str,
        token: &str,
        compute: ComputeFuture<'_>,
        ttl: Duration,
    ) -> Result<Cached> {
        let outcome = compute_outcome(compute, ttl, self.negative_ttl, self.max_value_bytes);
        tokio::pin!(outcome);
        let every = self.lock_lease / 3;
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                r = &mut outcome => return r,
                _ = renew.tick() => {
                    let mut conn = self.conn.clone();
                    let r: redis::RedisResult<i64> = self
                        .renew
                        .key(lock_key)
                        .arg(token)
                        .arg(millis(self.lock_lease))
                        .invoke_async(&mut conn)
                        .await;
                    match r {
                        Ok(1) => {}
                        Ok(_) => tracing::warn!(lock_key, "tool cache lock lease lost while computing; another replica may compute too"),
                        Err(e) => tracing::warn!(lock_key, error = %e, "tool cache lock renewal failed"),
                    }
                }
            }
        }
    }

    /// Stores `outcome` (or nothing) and releases the lock. Failures are
    /// logged: the caller already has its result.
    async fn store_and_unlock(
        &self,
        value_key: &str,
        lock_key: &str,
        token: &str,
        stored: Option<(&Cached, u64)>,
    ) {
        let (encoded, ttl_ms) = match stored {
            Some((c, ttl_ms)) => (encode(&c.outcome), ttl_ms),
            None => (Vec::new(), 1),
        };
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .store_and_unlock
            .key(value_key)
            .key(lock_key)
            .arg(token)
            .arg(encoded)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(value_key, error = %e, "tool cache could not store a result or release its lock");
        }
    }

    /// The level-2 path of a miss: find the value, or compute it under the
    /// fleet-wide lock, or wait for the replica that computes it.
    async fn fetch_or_compute(
        &self,
        key: &ToolKey,
        ttl: Duration,
        compute: ComputeFuture<'_>,
    ) -> Result<Cached> {
        let (value_key, lock_key) = self.keys(key);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let deadline = tokio::time::Instant::now() + self.wait_timeout;
        let mut poll = FIRST_POLL;
        loop {
            match self.probe(&value_key, &lock_key, &token).await? {
                Probe::Hit(raw, pttl) => {
                    let outcome = decode(&raw)?;
                    let remaining = Duration::from_millis(u64::try_from(pttl).unwrap_or(1).max(1));
                    return Ok(self.local_entry(outcome, remaining));
                }
                Probe::Locked => {
                    // If this caller is cancelled (task timeout, shutdown) while
                    // computing, the guard releases the lock in the background
                    // so other replicas need not wait for the lease to run out.
                    let mut guard = ReleaseOnDrop {
                        conn: self.conn.clone(),
                        script: self.store_and_unlock.clone(),
                        keys: Some((value_key.clone(), lock_key.clone(), token.clone())),
                    };
                    let result = self.compute_holding_lock(&lock_key, &token, compute, ttl).await;
                    guard.keys = None;
                    return match result {
                        Ok(c) => {
                            self.store_and_unlock(&value_key, &lock_key, &token, Some((&c, millis(c.ttl))))
                                .await;
                            let ttl = c.ttl;
                            Ok(self.local_entry(c.outcome, ttl))
                        }
                        Err(e) => {
                            self.store_and_unlock(&value_key, &lock_key, &token, None).await;
                            Err(e)
                        }
                    };
                }
                Probe::Busy => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::Timeout(format!(
                            "{key:?}: waited {:?} for another replica's computation",
                            self.wait_timeout
                        )));
                    }
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(MAX_POLL);
                }
            }
        }
    }
}

/// Releases a computation lock whose holder was dropped before finishing.
struct ReleaseOnDrop {
    conn: RedisConnection,
    script: Script,
    /// (value key, lock key, token); `None` once the holder finished normally.
    keys: Option<(String, String, String)>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some((value_key, lock_key, token)) = self.keys.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (mut conn, script) = (self.conn.clone(), self.script.clone());
        runtime.spawn(async move {
            let r: redis::RedisResult<i64> = script
                .key(&value_key)
                .key(&lock_key)
                .arg(&token)
                .arg("")
                .arg(1)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = r {
                tracing::warn!(lock_key, error = %e, "could not release the lock of a cancelled tool computation");
            }
        });
    }
}

/// `V` + value, or `E` + kind + `\n` + message.
fn encode(outcome: &Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Value(b) => {
            let mut out = Vec::with_capacity(b.len() + 1);
            out.push(b'V');
            out.extend_from_slice(b);
            out
        }
        Outcome::Failure { kind, message } => format!("E{}\n{message}", kind.as_str()).into_bytes(),
    }
}

fn decode(raw: &[u8]) -> Result<Outcome> {
    match raw.split_first() {
        Some((b'V', rest)) => Ok(Outcome::Value(Bytes::copy_from_slice(rest))),
        Some((b'E', rest)) => {
            let text = String::from_utf8_lossy(rest);
            let (kind, message) = text.split_once('\n').unwrap_or((&text, ""));
            Ok(Outcome::Failure {
                kind: kind_from_str(kind),
                message: message.to_string(),
            })
        }
        _ => Err(Error::Backend {
            message: "tool cache entry in Redis is not in agentscale's format".into(),
            source: None,
        }),
    }
}

fn kind_from_str(s: &str) -> ErrorKind {
    use ErrorKind as K;
    [
        K::NotFound,
        K::Conflict,
        K::LeaseLost,
        K::Timeout,
        K::Unavailable,
        K::InvalidInput,
        K::InvalidConfig,
        K::Codec,
        K::Backend,
        K::Rpc,
        K::Unsupported,
        K::Closed,
        K::Handler,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
    .unwrap_or(K::Backend)
}

#[async_trait]
impl ToolCache for RedisToolCache {
    async fn get(&self, key: &ToolKey) -> Result<Option<Bytes>> {
        if let Some(c) = self.local.get(key).await {
            return c.into_result().map(Some);
        }
        let (value_key, _) = self.keys(key);
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&value_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("tool cache get", e))?;
        match raw {
            Some(raw) => Cached {
                outcome: decode(&raw)?,
                ttl: Duration::ZERO,
            }
            .into_result()
            .map(Some),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &ToolKey, value: Bytes, ttl: Duration) -> Result<()> {
        check_ttl(ttl)?;
        check_size(value.len(), self.max_value_bytes)?;
        let (value_key, _) = self.keys(key);
        let outcome = Outcome::Value(value);
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(&value_key)
            .arg(encode(&outcome))
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error("tool cache put", e))?;
        self.local
            .insert(key.clone(), self.local_entry(outcome, ttl))
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
        let init = self.fetch_or_compute(key, ttl, compute);
        match self.local.try_get_with_by_ref(key, init).await {
            Ok(c) => c.into_result(),
            Err(e) => Err(clone_error(&e)),
        }
    }

    async fn invalidate(&self, key: &ToolKey) -> Result<()> {
        let (value_key, _) = self.keys(key);
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(&value_key)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error("tool cache invalidate", e))?;
        self.local.invalidate(key).await;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        let v = Outcome::Value(Bytes::from_static(b"\x00\xffE\nx"));
        assert!(matches!(decode(&encode(&v)).unwrap(), Outcome::Value(b) if &b[..] == b"\x00\xffE\nx"));
        let f = Outcome::Failure {
            kind: ErrorKind::NotFound,
            message: "no\nsuch".into(),
        };
        match decode(&encode(&f)).unwrap() {
            Outcome::Failure { kind, message } => {
                assert_eq!((kind, message.as_str()), (ErrorKind::NotFound, "no\nsuch"))
            }
            Outcome::Value(_) => panic!("decoded as a value"),
        }
        assert!(decode(b"").is_err());
        assert!(decode(b"Zjunk").is_err());
    }
}
