//! The HTTP exporter: `/metrics`, `/healthz`, `/readyz`.

use std::fmt;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Metrics;
use crate::error::{Error, Result};

/// Content type of the OpenMetrics text that `prometheus-client` writes
/// (Prometheus scrapes it natively).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves a [`Metrics`] registry over HTTP.
///
/// ```no_run
/// # async fn run() -> agentscale_core::Result<()> {
/// use agentscale_core::metrics::{Exporter, Metrics};
/// let metrics = Metrics::new();
/// let exporter = Exporter::bind("0.0.0.0:9090", metrics.clone()).await?;
/// println!("metrics on http://{}/metrics", exporter.local_addr());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Exporter;

impl Exporter {
    /// Binds `addr` (port 0 picks a free port) and serves `/metrics`,
    /// `/healthz` and `/readyz` on a background task until the returned
    /// handle is shut down or dropped.
    pub async fn bind(addr: impl ToSocketAddrs, metrics: Metrics) -> Result<ExporterHandle> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::InvalidConfig(format!("metrics exporter cannot bind: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::backend("metrics exporter has no local address", e))?;
        let app = Router::new()
            .route("/metrics", get(serve_metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(serve_ready))
            .with_state(metrics);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "metrics exporter stopped with an error");
            }
        });
        tracing::info!(%local_addr, "metrics exporter listening");
        Ok(ExporterHandle {
            local_addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }
}

async fn serve_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode())
}

async fn serve_ready(State(metrics): State<Metrics>) -> impl IntoResponse {
    if metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// A running exporter. Dropping it stops the server.
pub struct ExporterHandle {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for ExporterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExporterHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ExporterHandle {
    /// The address the exporter listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ExporterHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
