//! A pool of Triton replicas behind an `agentscale_core::balance::Router`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::balance::{PeakEwmaP2c, Policy, Router};
use agentscale_core::{Error, Result, RpcCode};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::TritonClient;
use crate::errors::CallError;
use crate::request::{InferRequest, InferResponse};
use crate::stream::ResponseStream;

struct Replica {
    id: String,
    client: TritonClient,
    weight: u32,
    in_router: AtomicBool,
    failed_checks: AtomicU32,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    ejections: AtomicU64,
    readmissions: AtomicU64,
}

/// Counters of a [`TritonPool`] (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Calls made through the pool.
    pub requests: u64,
    /// Calls that succeeded.
    pub succeeded: u64,
    /// Calls that failed (after any retries).
    pub failed: u64,
    /// Extra attempts made after a connection-level failure.
    pub retries: u64,
    /// Replicas ejected by the health check.
    pub ejections: u64,
    /// Replicas re-admitted by the health check.
    pub readmissions: u64,
}

struct Inner {
    router: Router<TritonClient>,
    replicas: Vec<Replica>,
    counters: Counters,
    max_attempts: u32,
    health_timeout: Duration,
    unhealthy_after: u32,
}

struct HealthTask(JoinHandle<()>);

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Many Triton replicas; one is chosen per request by a core
/// [`Policy`](agentscale_core::balance::Policy) — by default peak-EWMA
/// power-of-two-choices, which weighs in-flight requests, latency and replica
/// weights (a GPU replica 3, a CPU replica 1).
///
/// * **Health:** every `health_interval` each replica's `ServerReady` is
///   checked; after `unhealthy_after` failed checks it is ejected (removed from
///   the router; never the last one), after one passing check it is re-admitted. In-band failures
///   also eject through the router (`eject_after`).
/// * **Retries:** only when safe — the connection to the replica could not be
///   established, so the request never left this process. A call that reached
///   a server is never repeated (not after a response, a reset or a timeout).
/// * **Deadlines:** a request deadline covers all attempts; each attempt gets
///   what is left.
///
/// Must be built inside a Tokio runtime (it spawns the health checker, which
/// stops when the last clone of the pool is dropped).
#[derive(Clone)]
pub struct TritonPool {
    inner: Arc<Inner>,
    _health: Arc<HealthTask>,
}

impl std::fmt::Debug for TritonPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TritonPool")
            .field(
                "replicas",
                &self
                    .inner
                    .replicas
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("router", &self.inner.router)
            .finish()
    }
}

/// Builds a [`TritonPool`]; see [`TritonPool::builder`].
pub struct TritonPoolBuilder {
    replicas: Vec<(String, std::result::Result<TritonClient, Error>, u32)>,
    policy: Option<Box<dyn Policy>>,
    health_interval: Duration,
    health_timeout: Duration,
    unhealthy_after: u32,
    max_attempts: u32,
    eject_after: (u32, Duration),
}

impl std::fmt::Debug for TritonPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TritonPoolBuilder")
            .field(
                "replicas",
                &self.replicas.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            )
            .field("health_interval", &self.health_interval)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl TritonPoolBuilder {
    /// Adds a replica by URL with default client settings.
    pub fn endpoint(mut self, url: impl Into<String>, weight: u32) -> Self {
        let url = url.into();
        let client = TritonClient::new(url.clone());
        self.replicas.push((url, client, weight));
        self
    }

    /// Adds a replica with a configured client (TLS, headers, gzip, ...).
    pub fn client(mut self, client: TritonClient, weight: u32) -> Self {
        self.replicas.push((client.url().to_string(), Ok(client), weight));
        self
    }

    /// The balancing policy (default [`PeakEwmaP2c`]).
    pub fn policy(mut self, policy: impl Policy + 'static) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// How often `ServerReady` is checked (default 1 s) and its timeout
    /// (default 1 s).
    pub fn health_check(mut self, interval: Duration, timeout: Duration) -> Self {
        self.health_interval = interval;
        self.health_timeout = timeout;
        self
    }

    /// Failed health checks in a row before a replica is ejected (default 2).
    /// The last replica in the router is never ejected (fail open).
    pub fn unhealthy_after(mut self, checks: u32) -> Self {
        self.unhealthy_after = checks;
        self
    }

    /// Attempts per call, counting the first (default 3); extra attempts are
    /// only made after connection-level failures.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// In-band ejection: after `failures` consecutive failed calls a replica
    /// is ejected for `cooldown` (default 3, 5 s).
    pub fn eject_after(mut self, failures: u32, cooldown: Duration) -> Self {
        self.eject_after = (failures, cooldown);
        self
    }

    /// Validates and builds; starts the health checker.
    pub fn build(self) -> Result<TritonPool> {
        if self.replicas.is_empty() {
            return Err(Error::InvalidConfig("triton pool: no endpoints".into()));
        }
        if self.max_attempts == 0 || self.unhealthy_after == 0 {
            return Err(Error::InvalidConfig(
                "triton pool: max_attempts and unhealthy_after must be ≥ 1".into(),
            ));
        }
        if self.health_interval.is_zero() || self.health_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "triton pool: health check interval/timeout must be positive".into(),
            ));
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::InvalidConfig("triton pool: build() needs a Tokio runtime".into()))?;
        let mut builder = Router::builder()
            .eject_after(self.eject_after.0, self.eject_after.1)
            .allow_empty();
        builder = match self.policy {
            Some(p) => builder.boxed_policy(p),
            None => builder.policy(PeakEwmaP2c::default()),
        };
        let mut replicas = Vec::new();
        for (i, (url, client, weight)) in self.replicas.into_iter().enumerate() {
            let client = client?;
            let id = format!("{i}:{url}");
            if replicas.iter().any(|r: &Replica| r.client.url() == client.url()) {
                return Err(Error::InvalidConfig(format!(
                    "triton pool: endpoint {url} given twice"
                )));
            }
            builder = builder.endpoint(id.clone(), client.clone(), weight);
            replicas.push(Replica {
                id,
                client,
                weight,
                in_router: AtomicBool::new(true),
                failed_checks: AtomicU32::new(0),
            });
        }
        let router = builder.build()?;
        let inner = Arc::new(Inner {
            router,
            replicas,
            counters: Counters::default(),
            max_attempts: self.max_attempts,
            health_timeout: self.health_timeout,
            unhealthy_after: self.unhealthy_after,
        });
        let weak = Arc::downgrade(&inner);
        let interval = self.health_interval;
        let task = handle.spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.check_health().await;
            }
        });
        Ok(TritonPool {
            inner,
            _health: Arc::new(HealthTask(task)),
        })
    }
}

impl Inner {
    async fn check_health(&self) {
        let checks = self.replicas.iter().map(|r| async move {
            let ok = matches!(
                r.client.server_ready_within(Some(self.health_timeout)).await,
                Ok(true)
            );
            (r, ok)
        });
        for (r, ok) in futures::future::join_all(checks).await {
            if ok {
                r.failed_checks.store(0, Ordering::Relaxed);
                if !r.in_router.load(Ordering::Relaxed)
                    && self
                        .router
                        .add_endpoint(r.id.clone(), r.client.clone(), r.weight)
                        .is_ok()
                {
                    r.in_router.store(true, Ordering::Relaxed);
                    self.counters.readmissions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(replica = %r.id, "triton replica passed its health check; re-admitted");
                }
            } else {
                let n = r.failed_checks.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.unhealthy_after && r.in_router.load(Ordering::Relaxed) {
                    // Fail open: the last replica stays (an empty router would
                    // refuse every call, a flaky health check must not).
                    if self.router.len() <= 1 {
                        tracing::warn!(replica = %r.id, "triton replica not ready, but it is the last one; kept");
                        continue;
                    }
                    if self.router.remove_endpoint(&r.id).is_err() {
                        continue;
                    }
                    r.in_router.store(false, Ordering::Relaxed);
                    self.counters.ejections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(replica = %r.id, failed_checks = n, "triton replica not ready; ejected");
                }
            }
        }
    }
}

/// Whether an error says the replica itself is in trouble (as opposed to the
/// request being refused by a healthy server).
fn replica_fault(e: &Error) -> bool {
    match e {
        Error::Unavailable { .. } | Error::Timeout(_) => true,
        Error::Rpc { code, .. } => matches!(code, RpcCode::Unavailable | RpcCode::ResourceExhausted),
        _ => false,
    }
}

impl TritonPool {
    /// A builder; add replicas with [`TritonPoolBuilder::endpoint`].
    pub fn builder() -> TritonPoolBuilder {
        TritonPoolBuilder {
            replicas: Vec::new(),
            policy: None,
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            max_attempts: 3,
            eject_after: (3, Duration::from_secs(5)),
        }
    }

    /// The router (in-flight, latency estimates, ejection state per replica).
    pub fn router(&self) -> &Router<TritonClient> {
        &self.inner.router
    }

    /// Counters since the pool was built.
    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        PoolStats {
            requests: c.requests.load(Ordering::Relaxed),
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            ejections: c.ejections.load(Ordering::Relaxed),
            readmissions: c.readmissions.load(Ordering::Relaxed),
        }
    }

    /// Runs the health check once now (the background checker runs it every
    /// interval).
    pub async fn check_health(&self) {
        self.inner.check_health().await;
    }

    /// Runs one inference on a replica chosen by the policy, retrying on
    /// another pick only after a connection-level failure.
    pub async fn infer(&self, req: &InferRequest) -> Result<InferResponse> {
        let c = &self.inner.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let res = self.infer_with_retries(req).await;
        match &res {
            Ok(_) => c.succeeded.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.failed.fetch_add(1, Ordering::Relaxed),
        };
        res
    }

    async fn infer_with_retries(&self, req: &InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut this = req.clone();
            if let Some(d) = req.deadline {
                let left = d.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(Error::Timeout(format!(
                        "deadline of {d:?} expired after {} attempts",
                        attempt - 1
                    )));
                }
                this.deadline = Some(left);
            }
            let guard = self.inner.router.pick()?;
            let client = guard.value().clone();
            match client.infer_inner(&this).await {
                Ok(r) => {
                    guard.success_elapsed();
                    return Ok(r);
                }
                Err(CallError { error, retry_safe }) => {
                    if replica_fault(&error) {
                        guard.failure();
                    } else {
                        guard.success_elapsed();
                    }
                    if retry_safe && attempt < self.inner.max_attempts {
                        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%error, attempt, "triton connect failed; retrying on another pick");
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Streams one request on a replica chosen by the policy (its own gRPC
    /// stream; dropping it cancels the call). The time to the first response
    /// is recorded as the replica's latency; a stream is never retried.
    pub async fn infer_stream(&self, req: InferRequest) -> Result<ResponseStream> {
        use futures::StreamExt;
        let c = &self.inner.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let guard = self.inner.router.pick()?;
        let client = guard.value().clone();
        let mut stream = match client.infer_stream(req).await {
            Ok(s) => s,
            Err(e) => {
                guard.failure();
                c.failed.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let first = stream.next().await;
        match &first {
            Some(Err(e)) => {
                if replica_fault(e) {
                    guard.failure();
                } else {
                    guard.success_elapsed();
                }
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                guard.success_elapsed();
                c.succeeded.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(stream.with_first(first))
    }
}
