//! Kubernetes for agentscale worker fleets: typed, strictly-checked loading
//! of the shipped manifests (`deploy/`), and a deterministic simulator of
//! the autoscalers that scale them (the Kubernetes HPA on the External
//! queue-depth metric, and KEDA), to compare policies before a rollout.
//!
//! ```
//! use agentscale_autoscale::queue::{ArrivalTrace, Segment};
//! use agentscale_autoscale::sim::{simulate, Autoscaler, SimConfig};
//!
//! let trace = ArrivalTrace::from_segments(&[
//!     Segment { start_s: 0, end_s: 600, rate: 5.0 },
//!     Segment { start_s: 600, end_s: 1200, rate: 40.0 },
//! ])?;
//! let report = simulate(&trace, &Autoscaler::Fixed(4), &SimConfig::default())?;
//! assert_eq!(report.arrived, report.started + report.backlog_end);
//! # Ok::<(), agentscale_core::Error>(())
//! ```
//!
//! The controller logic is ported from the upstream controllers (Kubernetes
//! `pkg/controller/podautoscaler`, KEDA `pkg/scaling/executor`) and checked
//! against their test tables; see `docs/kubernetes.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod hpa;
pub mod keda;
pub mod manifest;
pub mod monitoring;
pub mod quantity;
pub mod queue;
pub mod sim;

pub use agentscale_core::{Error, Result};

use manifest::{Document, Object};

/// Reads the autoscaler of `deployment` from loaded manifests: its HPA or
/// its KEDA ScaledObject. Both at once is an error (they would fight).
pub fn autoscaler_for(docs: &[Document], deployment: &str) -> Result<sim::Autoscaler> {
    let mut found = Vec::new();
    for d in docs {
        match &d.object {
            Object::HorizontalPodAutoscaler(h) => {
                let spec = hpa::HpaSpec::from_k8s(h)?;
                if spec.target == deployment {
                    found.push(sim::Autoscaler::Hpa(spec));
                }
            }
            Object::ScaledObject(s) => {
                let spec = keda::KedaSpec::from_scaled_object(s)?;
                if spec.target == deployment {
                    found.push(sim::Autoscaler::Keda(spec));
                }
            }
            _ => {}
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::InvalidConfig(format!(
            "no HPA or ScaledObject targets {deployment}"
        ))),
        n => Err(Error::InvalidConfig(format!(
            "{n} autoscalers target {deployment}: use an HPA or a KEDA ScaledObject, never both"
        ))),
    }
}
