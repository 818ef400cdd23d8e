//! Rollout decisions over HTTP (JSON) and as Prometheus metrics, so Argo
//! Rollouts (web metric) or Flagger (webhooks) can use the analysis as a
//! gate.
//!
//! | route | answers |
//! |---|---|
//! | `GET /rollouts` | every rollout's [`RolloutStatus`] |
//! | `GET /rollouts/{name}` | status and the last 50 decisions |
//! | `GET /rollouts/{name}/verdict` | `{"verdict": "successful"\|"failed"\|"inconclusive"\|null, "phase": …, "weight": …, "ok": bool, "failed": bool}`, always `200` — for an Argo `web` metric (`jsonPath: "{$.verdict}"`) |
//! | `GET\|POST /rollouts/{name}/check` | `200` unless the analysis failed (last verdict failed or rolled back): `409` — a Flagger `rollout` webhook; inconclusive is **not** a failure here |
//! | `GET\|POST /rollouts/{name}/gate` | `200` only when the last verdict was successful or the rollout was promoted, else `412` — a Flagger `confirm-promotion` webhook (Flagger waits, it does not fail) |
//!
//! Metrics, registered on the process' [`Metrics`] by [`register_metrics`]:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `agentscale_rollout_weight_percent` | gauge | `rollout` |
//! | `agentscale_rollout_step` | gauge | `rollout` |
//! | `agentscale_rollout_phase` | gauge (1 for the current phase) | `rollout`, `phase` |
//! | `agentscale_rollout_decisions` | counter | `rollout`, `verdict` |
//! | `agentscale_rollout_failures` | gauge | `rollout` |

use std::net::SocketAddr;
use std::sync::Arc;

use agentscale_core::metrics::prometheus_client::collector::Collector;
use agentscale_core::metrics::prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use agentscale_core::metrics::prometheus_client::metrics::MetricType;
use agentscale_core::metrics::Metrics;
use agentscale_core::{Error, Result};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router as HttpRouter;
use serde::Serialize;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::analysis::{Decision, Phase, Rollout, RolloutStatus, Verdict};

type Rollouts = Arc<Vec<Arc<Rollout>>>;

/// The axum routes for these rollouts (merge them into your own server, or
/// use [`serve`]).
pub fn routes(rollouts: Vec<Arc<Rollout>>) -> HttpRouter {
    HttpRouter::new()
        .route("/rollouts", get(list))
        .route("/rollouts/{name}", get(detail))
        .route("/rollouts/{name}/verdict", get(verdict))
        .route("/rollouts/{name}/check", get(check).post(check))
        .route("/rollouts/{name}/gate", get(gate).post(gate))
        .with_state(Arc::new(rollouts))
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn find<'a>(all: &'a Rollouts, name: &str) -> Option<&'a Arc<Rollout>> {
    all.iter().find(|r| r.name() == name)
}

fn not_found(name: &str) -> Response {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({ "error": format!("no rollout named {name:?}") }),
    )
}

async fn list(State(all): State<Rollouts>) -> Response {
    let v: Vec<RolloutStatus> = all.iter().map(|r| r.status()).collect();
    json(StatusCode::OK, &v)
}

#[derive(Serialize)]
struct Detail {
    status: RolloutStatus,
    decisions: Vec<Decision>,
}

async fn detail(State(all): State<Rollouts>, Path(name): Path<String>) -> Response {
    match find(&all, &name) {
        Some(r) => {
            let mut decisions = r.decisions();
            let skip = decisions.len().saturating_sub(50);
            decisions.drain(..skip);
            json(
                StatusCode::OK,
                &Detail {
                    status: r.status(),
                    decisions,
                },
            )
        }
        None => not_found(&name),
    }
}

/// The answer of `/verdict`.
#[derive(Debug, Serialize)]
struct VerdictBody {
    verdict: Option<Verdict>,
    phase: Phase,
    weight: f64,
    /// Successful last interval, or promoted.
    ok: bool,
    /// Failed last interval, or rolled back.
    failed: bool,
}

fn verdict_of(r: &Rollout) -> VerdictBody {
    let s = r.status();
    VerdictBody {
        ok: s.phase == Phase::Promoted
            || (s.phase != Phase::RolledBack && s.verdict == Some(Verdict::Successful)),
        failed: s.phase == Phase::RolledBack || s.verdict == Some(Verdict::Failed),
        verdict: s.verdict,
        phase: s.phase,
        weight: s.weight,
    }
}

async fn verdict(State(all): State<Rollouts>, Path(name): Path<String>) -> Response {
    match find(&all, &name) {
        Some(r) => json(StatusCode::OK, &verdict_of(r)),
        None => not_found(&name),
    }
}

async fn check(State(all): State<Rollouts>, Path(name): Path<String>) -> Response {
    match find(&all, &name) {
        Some(r) => {
            let v = verdict_of(r);
            let code = if v.failed {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            json(code, &v)
        }
        None => not_found(&name),
    }
}

async fn gate(State(all): State<Rollouts>, Path(name): Path<String>) -> Response {
    match find(&all, &name) {
        Some(r) => {
            let v = verdict_of(r);
            let code = if v.ok {
                StatusCode::OK
            } else {
                StatusCode::PRECONDITION_FAILED
            };
            json(code, &v)
        }
        None => not_found(&name),
    }
}

/// A running rollout HTTP server; dropping it stops the server.
#[derive(Debug)]
pub struct HttpHandle {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl HttpHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for HttpHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves [`routes`] on `addr` (port 0 picks a free one) in the background.
pub async fn serve(addr: impl ToSocketAddrs, rollouts: Vec<Arc<Rollout>>) -> Result<HttpHandle> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidConfig(format!("rollout HTTP server cannot bind: {e}")))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::backend("rollout HTTP server has no local address", e))?;
    let app = routes(rollouts);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "rollout HTTP server stopped with an error");
        }
    });
    Ok(HttpHandle {
        local_addr,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Registers the rollout metrics of `rollout` on `metrics` (served on
/// `/metrics` by the exporter).
pub fn register_metrics(metrics: &Metrics, rollout: Arc<Rollout>) {
    metrics.with_registry(|r| r.register_collector(Box::new(RolloutCollector(rollout))));
}

#[derive(Debug)]
struct RolloutCollector(Arc<Rollout>);

impl Collector for RolloutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::result::Result<(), std::fmt::Error> {
        let s = self.0.status();
        let name = s.name.as_str();
        let labels = [("rollout", name)];
        encoder
            .encode_descriptor(
                "agentscale_rollout_weight_percent",
                "Candidate share of new tasks",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&labels)?
            .encode_gauge(&s.weight)?;
        encoder
            .encode_descriptor(
                "agentscale_rollout_step",
                "Current step (0-based)",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&labels)?
            .encode_gauge(&(s.step as i64))?;
        encoder
            .encode_descriptor(
                "agentscale_rollout_failures",
                "Failed analysis intervals",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&labels)?
            .encode_gauge(&i64::from(s.failures))?;
        let mut phase = encoder.encode_descriptor(
            "agentscale_rollout_phase",
            "1 for the rollout's current phase",
            None,
            MetricType::Gauge,
        )?;
        for p in Phase::ALL {
            phase
                .encode_family(&[("rollout", name), ("phase", p.as_str())])?
                .encode_gauge(&i64::from(p == s.phase))?;
        }
        let counts = self.0.verdict_counts();
        let mut decisions = encoder.encode_descriptor(
            "agentscale_rollout_decisions",
            "Analysis decisions by verdict",
            None,
            MetricType::Counter,
        )?;
        for (v, n) in [Verdict::Successful, Verdict::Failed, Verdict::Inconclusive]
            .iter()
            .zip(counts)
        {
            decisions
                .encode_family(&[("rollout", name), ("verdict", v.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
}
