//! The policies: the seed's five plus power-of-two-choices, peak-EWMA P2C and
//! least-loaded-of-d (the router's default).
//!
//! Every `pick` is one pass (or less) over the slice and allocates nothing,
//! except [`WeightedRoundRobin`], which grows its per-endpoint state vector
//! when it first sees more endpoints than before.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use super::{EndpointLoad, Policy};

fn os_seeded() -> SmallRng {
    SmallRng::from_rng(&mut rand::rng())
}

/// Index of the healthy endpoint minimising `key`, ties broken uniformly at
/// random by reservoir sampling over the tied endpoints (one pass, no
/// allocation; one cheap RNG draw per tie).
#[inline]
fn argmin_random_tie(
    rng: &mut SmallRng,
    endpoints: &[EndpointLoad],
    key: impl Fn(&EndpointLoad) -> u64,
) -> Option<usize> {
    let mut best = usize::MAX;
    let mut min = u64::MAX;
    let mut ties = 0u64;
    for (i, e) in endpoints.iter().enumerate() {
        if !e.healthy {
            continue;
        }
        let k = key(e);
        if k < min {
            min = k;
            best = i;
            ties = 1;
        } else if k == min {
            ties += 1;
            // Replace with probability 1/ties (multiply-shift: uniform in 0..ties).
            if ((u128::from(rng.next_u64()) * u128::from(ties)) >> 64) == 0 {
                best = i;
            }
        }
    }
    (best != usize::MAX).then_some(best)
}

/// The `k`-th healthy endpoint (0-based), scanning once.
#[inline]
fn nth_healthy(endpoints: &[EndpointLoad], k: usize) -> Option<usize> {
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.healthy)
        .nth(k)
        .map(|(i, _)| i)
}

/// Two distinct healthy endpoints chosen uniformly at random, or one if only
/// one is healthy. Tries direct sampling first (the common, all-healthy case:
/// O(1)) and falls back to counting healthy endpoints (O(n)).
#[inline]
fn two_random_healthy(rng: &mut SmallRng, endpoints: &[EndpointLoad]) -> Option<(usize, Option<usize>)> {
    let n = endpoints.len();
    match n {
        0 => return None,
        1 => return endpoints[0].healthy.then_some((0, None)),
        _ => {}
    }
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    if endpoints[a].healthy && endpoints[b].healthy {
        return Some((a, Some(b)));
    }
    let healthy = endpoints.iter().filter(|e| e.healthy).count();
    match healthy {
        0 => None,
        1 => nth_healthy(endpoints, 0).map(|i| (i, None)),
        h => {
            let ka = rng.random_range(0..h);
            let mut kb = rng.random_range(0..h - 1);
            if kb >= ka {
                kb += 1;
            }
            let (lo, hi) = if ka < kb { (ka, kb) } else { (kb, ka) };
            // One pass finds both.
            let mut first = None;
            for (seen, (i, _)) in endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.healthy)
                .enumerate()
            {
                if seen == lo {
                    first = Some(i);
                } else if seen == hi {
                    return first.map(|f| (f, Some(i)));
                }
            }
            None
        }
    }
}

fn weight_of(e: &EndpointLoad) -> u64 {
    u64::from(e.weight.max(1))
}

// ---------------------------------------------------------------------------

/// Shortest queue: the healthy endpoint with the smallest `queue_depth +
/// in_flight`, ties broken at random. Ignores weights and latency.
///
/// Best with fresh load information and homogeneous replicas; with stale
/// information it herds (every caller sends to the same "emptiest" replica).
#[derive(Debug)]
pub struct ShortestQueue {
    rng: SmallRng,
}

impl ShortestQueue {
    /// A policy with an OS-seeded RNG.
    pub fn new() -> Self {
        Self::from_rng(os_seeded())
    }
    /// A policy using `rng` for tie-breaks.
    pub fn from_rng(rng: SmallRng) -> Self {
        ShortestQueue { rng }
    }
    /// A deterministic policy seeded with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self::from_rng(SmallRng::seed_from_u64(seed))
    }
}

impl Default for ShortestQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for ShortestQueue {
    fn name(&self) -> &'static str {
        "shortest_queue"
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        argmin_random_tie(&mut self.rng, endpoints, |e| {
            u64::from(e.queue_depth) + u64::from(e.in_flight)
        })
    }
}

/// Least connections: the healthy endpoint with the fewest requests in flight
/// from this caller, ties broken at random. Ignores weights and latency.
#[derive(Debug)]
pub struct LeastConnections {
    rng: SmallRng,
}

impl LeastConnections {
    /// A policy with an OS-seeded RNG.
    pub fn new() -> Self {
        Self::from_rng(os_seeded())
    }
    /// A policy using `rng` for tie-breaks.
    pub fn from_rng(rng: SmallRng) -> Self {
        LeastConnections { rng }
    }
    /// A deterministic policy seeded with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self::from_rng(SmallRng::seed_from_u64(seed))
    }
}

impl Default for LeastConnections {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least_connections"
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        argmin_random_tie(&mut self.rng, endpoints, |e| u64::from(e.in_flight))
    }
}

/// Round robin over the healthy endpoints, ignoring load and weights.
///
/// Unhealthy endpoints are skipped; the rotation continues after the last
/// endpoint picked.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// A policy starting at index 0.
    pub fn new() -> Self {
        RoundRobin { next: 0 }
    }
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        for off in 0..n {
            let i = (start + off) % n;
            if endpoints[i].healthy {
                self.next = i + 1;
                return Some(i);
            }
        }
        None
    }
}

/// Smooth weighted round robin (the nginx algorithm).
///
/// Each pick adds every healthy endpoint's weight to its running score,
/// picks the highest score and subtracts the total weight from it. Over a
/// cycle of `sum(weights)` picks an endpoint of weight 3 is picked exactly 3
/// times as often as one of weight 1, interleaved rather than in bursts
/// (weights 3:1 give `a a b a`, not `a a a b`).
///
/// The scores are indexed by position in the slice; if the endpoint set
/// changes, the cycle restarts smoothly from the old scores.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    current: Vec<i64>,
}

impl WeightedRoundRobin {
    /// A policy with empty state.
    pub fn new() -> Self {
        WeightedRoundRobin { current: Vec::new() }
    }
}

impl Policy for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        if self.current.len() < endpoints.len() {
            self.current.resize(endpoints.len(), 0);
        }
        let current = &mut self.current[..endpoints.len()];
        let mut total: i64 = 0;
        let mut best = usize::MAX;
        let mut best_score = i64::MIN;
        for (i, e) in endpoints.iter().enumerate() {
            if !e.healthy {
                continue;
            }
            let w = i64::from(e.weight.max(1));
            total += w;
            let c = current[i] + w;
            current[i] = c;
            if c > best_score {
                best_score = c;
                best = i;
            }
        }
        let best = (best != usize::MAX).then_some(best);
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

/// Uniformly random healthy endpoint, ignoring load and weights.
#[derive(Debug)]
pub struct RandomPick {
    rng: SmallRng,
}

impl RandomPick {
    /// A policy with an OS-seeded RNG.
    pub fn new() -> Self {
        Self::from_rng(os_seeded())
    }
    /// A policy drawing from `rng`.
    pub fn from_rng(rng: SmallRng) -> Self {
        RandomPick { rng }
    }
    /// A deterministic policy seeded with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self::from_rng(SmallRng::seed_from_u64(seed))
    }
}

impl Default for RandomPick {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for RandomPick {
    fn name(&self) -> &'static str {
        "random"
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let i = self.rng.random_range(0..n);
        if endpoints[i].healthy {
            return Some(i);
        }
        let healthy = endpoints.iter().filter(|e| e.healthy).count();
        if healthy == 0 {
            return None;
        }
        let k = self.rng.random_range(0..healthy);
        nth_healthy(endpoints, k)
    }
}

/// Power of two choices: two distinct healthy endpoints at random, the one
/// with fewer requests in flight per unit of weight wins (ties: the first
/// drawn, itself random).
///
/// Nearly as good as least connections with fresh information, much better
/// with stale information (it does not herd), and O(1) when all endpoints are
/// healthy.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    rng: SmallRng,
}

impl PowerOfTwoChoices {
    /// A policy with an OS-seeded RNG.
    pub fn new() -> Self {
        Self::from_rng(os_seeded())
    }
    /// A policy drawing from `rng`.
    pub fn from_rng(rng: SmallRng) -> Self {
        PowerOfTwoChoices { rng }
    }
    /// A deterministic policy seeded with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self::from_rng(SmallRng::seed_from_u64(seed))
    }
}

impl Default for PowerOfTwoChoices {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for PowerOfTwoChoices {
    fn name(&self) -> &'static str {
        "p2c"
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        let (a, b) = two_random_healthy(&mut self.rng, endpoints)?;
        let Some(b) = b else { return Some(a) };
        let (ea, eb) = (&endpoints[a], &endpoints[b]);
        // (in_flight + 1) / weight, compared without division.
        let ca = (u64::from(ea.in_flight) + 1) * weight_of(eb);
        let cb = (u64::from(eb.in_flight) + 1) * weight_of(ea);
        Some(if cb < ca { b } else { a })
    }
}

/// Power of two choices on peak-EWMA cost (the default before
/// [`LeastLoadedOfD`]; still the best choice for endpoints of very different
/// speeds).
///
/// Two distinct healthy endpoints are drawn at random; the one with the lower
/// cost `ewma_latency × (in_flight + 1) / weight` wins. The latency estimate
/// (a [`PeakEwma`](super::PeakEwma), kept by the [`Router`](super::Router))
/// jumps up at once when an endpoint slows down or fails, so a slow or failing
/// replica stops attracting traffic after one observation, while the
/// in-flight factor spreads load among equally fast replicas. An endpoint
/// without an estimate yet (`ewma_latency` zero) is costed at
/// `default_latency`, so a new replica is neither flooded nor starved.
#[derive(Debug)]
pub struct PeakEwmaP2c {
    rng: SmallRng,
    default_latency_ns: f64,
}

impl PeakEwmaP2c {
    /// The latency assumed for an endpoint with no estimate yet.
    pub const DEFAULT_LATENCY: Duration = Duration::from_millis(30);

    /// A policy with an OS-seeded RNG.
    pub fn new() -> Self {
        Self::from_rng(os_seeded())
    }
    /// A policy drawing from `rng`.
    pub fn from_rng(rng: SmallRng) -> Self {
        PeakEwmaP2c {
            rng,
            default_latency_ns: Self::DEFAULT_LATENCY.as_nanos() as f64,
        }
    }
    /// A deterministic policy seeded with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self::from_rng(SmallRng::seed_from_u64(seed))
    }
    /// Sets the latency assumed for endpoints with no estimate yet
    /// (default [`Self::DEFAULT_LATENCY`]); a zero duration is taken as 1 ns.
    pub fn default_latency(mut self, latency: Duration) -> Self {
        self.default_latency_ns = (latency.as_nanos() as f64).max(1.0);
        self
    }

    #[inline]
    fn cost(&self, e: &EndpointLoad) -> f64 {
        let lat = e.ewma_latency.as_nanos() as f64;
        let lat = if lat > 0.0 { lat } else { self.default_latency_ns };
        lat * (f64::from(e.in_flight) + 1.0) / weight_of(e) as f64
    }
}

impl Default for PeakEwmaP2c {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for PeakEwmaP2c {
    fn name(&self) -> &'static str {
        "p2c_peak_ewma"
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        let (a, b) = two_random_healthy(&mut self.rng, endpoints)?;
        let Some(b) = b else { return Some(a) };
        Some(if self.cost(&endpoints[b]) < self.cost(&endpoints[a]) {
            b
        } else {
            a
        })
    }
}

/// Power of d choices on weight-scaled in-flight load, peak-EWMA as tie-break
/// — the [`Router`](super::Router)'s default policy.
///
/// `d` distinct healthy endpoints are drawn at random; the one with the fewest
/// requests in flight per unit of weight (`(in_flight + 1) / weight`) wins,
/// ties going to the lower `ewma_latency / weight` (an endpoint without an
/// estimate is costed at `default_latency`), then to the first drawn (itself
/// random).
///
/// * Looking at `d > 2` endpoints gets close to least connections when the
///   load information is fresh: with a heavy-tailed agent mix the tail is set
///   by how often a short task lands behind a long one, and with 4 of 16
///   replicas sampled that rarely happens while an idle slot exists.
/// * A slow replica piles up in-flight requests and loses comparisons; among
///   equally loaded replicas the faster one (lower peak EWMA) wins.
/// * **Stale snapshots:** the policy remembers, per endpoint, a fingerprint of
///   the last snapshot it saw (`in_flight`, `queue_depth`, `ewma_latency`) and
///   how many times it picked the endpoint since; while the snapshot has not
///   changed, those picks are added to `in_flight`. So a snapshot refreshed
///   only every few seconds does not make every pick herd onto the replica
///   that looked emptiest at the last refresh. With live snapshots (the
///   `Router`'s own in-flight counts) the fingerprint changes after every
///   pick and the correction is zero. Random subsets additionally bound
///   herding among independent routers.
///
/// The default `d` is [`Self::DEFAULT_D`]; `with_d` sets it (`d` ≥ the number
/// of healthy endpoints is an exact least-loaded scan). O(d²) per pick when
/// all endpoints are healthy (d is at most [`Self::MAX_D`]); no allocation
/// except growing the per-endpoint state when the policy first sees more
/// endpoints than before (as [`WeightedRoundRobin`]).
#[derive(Debug)]
pub struct LeastLoadedOfD {
    rng: SmallRng,
    d: usize,
    default_latency_ns: u64,
    /// Per endpoint (by position): fingerprint of the last snapshot seen and
    /// the picks made since, which that snapshot does not show yet.
    pending: Vec<(u64, u32)>,
}

impl LeastLoadedOfD {
    /// The default number of choices.
    pub const DEFAULT_D: usize = 4;
    /// The largest `d` accepted (larger values are clamped).
    pub const MAX_D: usize = 16;
    /// The latency assumed for an endpoint with no estimate yet (tie-break only).
    pub const DEFAULT_LATENCY: Duration = Duration::from_millis(30);

    /// A policy with an OS-seeded RNG.
    pub fn new() -> Self {
        Self::from_rng(os_seeded())
    }
    /// A policy drawing from `rng`.
    pub fn from_rng(rng: SmallRng) -> Self {
        LeastLoadedOfD {
            rng,
            d: Self::DEFAULT_D,
            default_latency_ns: Self::DEFAULT_LATENCY.as_nanos() as u64,
            pending: Vec::new(),
        }
    }
    /// A deterministic policy seeded with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self::from_rng(SmallRng::seed_from_u64(seed))
    }
    /// Sets the number of choices, clamped to `1..=MAX_D`.
    pub fn with_d(mut self, d: usize) -> Self {
        self.d = d.clamp(1, Self::MAX_D);
        self
    }
    /// The number of choices.
    pub fn d(&self) -> usize {
        self.d
    }
    /// Sets the latency assumed for endpoints with no estimate yet (default
    /// [`Self::DEFAULT_LATENCY`]).
    pub fn default_latency(mut self, latency: Duration) -> Self {
        self.default_latency_ns = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        self
    }

    #[inline]
    fn latency_ns(&self, e: &EndpointLoad) -> u64 {
        let l = e.ewma_latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        if l == 0 {
            self.default_latency_ns
        } else {
            l
        }
    }

    /// In-flight count of endpoint `i` plus this policy's picks of it that
    /// the snapshot does not show yet (the snapshot has not changed since).
    #[inline]
    fn load_of(&mut self, i: usize, e: &EndpointLoad) -> u64 {
        let fp = (u64::from(e.in_flight) << 32 | u64::from(e.queue_depth))
            ^ (e.ewma_latency.as_nanos() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = &mut self.pending[i];
        if slot.0 != fp {
            *slot = (fp, 0);
        }
        u64::from(e.in_flight) + u64::from(slot.1)
    }

    /// True if `c` (load `fc`) is strictly better than `b` (load `fb`).
    #[inline]
    fn better(&self, fc: u64, c: &EndpointLoad, fb: u64, b: &EndpointLoad) -> bool {
        // (in_flight + 1) / weight, compared without division.
        let lc = (fc + 1) * weight_of(b);
        let lb = (fb + 1) * weight_of(c);
        if lc != lb {
            return lc < lb;
        }
        // Tie: lower latency per unit of weight.
        u128::from(self.latency_ns(c)) * u128::from(weight_of(b))
            < u128::from(self.latency_ns(b)) * u128::from(weight_of(c))
    }
}

impl Default for LeastLoadedOfD {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for LeastLoadedOfD {
    fn name(&self) -> &'static str {
        "least_loaded_of_d"
    }
    fn pick(&mut self, endpoints: &[EndpointLoad]) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        if self.pending.len() < n {
            self.pending.resize(n, (u64::MAX, 0));
        }
        let d = self.d.min(n);
        let mut drawn = [usize::MAX; Self::MAX_D];
        let mut k = 0usize;
        let mut best = usize::MAX;
        let mut best_load = 0u64;
        if d < n {
            // Rejection sampling of distinct healthy endpoints; bounded tries,
            // then the exact fallback below.
            let mut tries = 0;
            while k < d && tries < 4 * d {
                tries += 1;
                let i = self.rng.random_range(0..n);
                if !endpoints[i].healthy || drawn[..k].contains(&i) {
                    continue;
                }
                drawn[k] = i;
                k += 1;
                let f = self.load_of(i, &endpoints[i]);
                if best == usize::MAX || self.better(f, &endpoints[i], best_load, &endpoints[best]) {
                    best = i;
                    best_load = f;
                }
            }
            if k == d || k >= 2 {
                self.pending[best].1 = self.pending[best].1.saturating_add(1);
                return Some(best);
            }
        }
        // Few healthy endpoints (or d ≥ n): scan all, starting at a random
        // offset so ties do not always go to the same endpoint.
        let start = self.rng.random_range(0..n);
        best = usize::MAX;
        for off in 0..n {
            let i = (start + off) % n;
            if !endpoints[i].healthy {
                continue;
            }
            let f = self.load_of(i, &endpoints[i]);
            if best == usize::MAX || self.better(f, &endpoints[i], best_load, &endpoints[best]) {
                best = i;
                best_load = f;
            }
        }
        let best = (best != usize::MAX).then_some(best)?;
        self.pending[best].1 = self.pending[best].1.saturating_add(1);
        Some(best)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
