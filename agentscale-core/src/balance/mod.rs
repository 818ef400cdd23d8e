//! Load-balancing policies: pick one endpoint (an inference replica, an agent
//! replica) from load snapshots.
//!
//! A [`Policy`] is a small synchronous trait over a slice of
//! [`EndpointLoad`]s. Policies that need randomness own an RNG that is injected
//! at construction (`from_rng` / `with_seed`), so tests and simulations are
//! deterministic.

use std::fmt::Debug;
use std::time::Duration;

mod ewma;
mod policies;
mod router;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;

pub use ewma::PeakEwma;
pub use policies::{
    LeastConnections, LeastLoadedOfD, PeakEwmaP2c, PowerOfTwoChoices, RandomPick, RoundRobin, ShortestQueue,
    WeightedRoundRobin,
};
pub use router::{EndpointStatus, PickGuard, Router, RouterBuilder, MAX_WEIGHT};

/// A load snapshot of one endpoint, as seen by the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointLoad {
    /// Requests this caller has in flight to the endpoint.
    pub in_flight: u32,
    /// Queue depth reported by the endpoint (or read from its queue backend).
    pub queue_depth: u32,
    /// Peak-EWMA of observed latency (with the failure penalty applied).
    pub ewma_latency: Duration,
    /// Relative capacity (a GPU replica 3, a CPU replica 1); at least 1.
    pub weight: u32,
    /// False while the endpoint is ejected; policies never pick it.
    pub healthy: bool,
}

impl Default for EndpointLoad {
    fn default() -> Self {
        EndpointLoad {
            in_flight: 0,
            queue_depth: 0,
            ewma_latency: Duration::ZERO,
            weight: 1,
            healthy: true,
        }
    }
}

/// Chooses an endpoint for the next request.
///
/// `pick` returns the index of a healthy endpoint in `endpoints`, or `None`
/// when there is none (empty slice, all unhealthy). It takes `&mut self` so
/// stateful policies (round robin, smooth weighted round robin, RNGs) need no
/// locks; wrap a shared policy in a mutex.
pub trait Policy: Send + Sync + Debug {
    /// A short stable name for metrics and reports.
    fn name(&self) -> &'static str;
    /// Picks an endpoint, or `None` if none is healthy.
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize>;
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        (**self).pick(endpoints)
    }
}

#[allow(dead_code)]
fn _object_safe(_: Box<dyn Policy>) {}
