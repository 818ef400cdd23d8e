//! The tick-based fleet simulator: one tick is one second.
//!
//! Each second: tasks arrive (Poisson with the trace's rate), finished
//! tasks free their slots, started pods become ready, free slots take
//! waiting tasks (FIFO), the queue-depth metric is recorded, and the
//! autoscaler acts on its own schedule (HPA every 15 s on the metric as the
//! Prometheus pipeline shows it, KEDA every `pollingInterval`).

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal, Poisson};

use crate::hpa::{HpaController, HpaSpec, DEFAULT_SYNC_PERIOD_S};
use crate::keda::{KedaAction, KedaController, KedaSpec, TriggerModel, TriggerSignal};
use crate::queue::{ArrivalTrace, Backlog, RunLengthBacklog};
use crate::{Error, Result};

/// Which controller scales the Deployment (never both at once).
#[derive(Debug, Clone)]
pub enum Autoscaler {
    /// A fixed replica count.
    Fixed(i32),
    /// An HPA on the External queue-depth metric.
    Hpa(HpaSpec),
    /// KEDA: its scale loop plus the HPA it creates.
    Keda(KedaSpec),
}

/// Service time of one task: log-normal with this mean and coefficient of
/// variation, rounded up to whole seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceTime {
    /// Mean, seconds.
    pub mean_s: f64,
    /// Standard deviation / mean.
    pub cv: f64,
}

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Handler slots per pod (the worker's concurrency).
    pub concurrency: u32,
    /// Task run time.
    pub service: ServiceTime,
    /// Pod start-up: scheduling + image pull, seconds.
    pub image_pull_s: u32,
    /// Pod start-up: model / client warm-up after the process starts, seconds.
    pub model_load_s: u32,
    /// A deleted pod stays billed while it drains, seconds.
    pub drain_s: u32,
    /// Kafka partitions: pods beyond this many get no work (`None`: no cap).
    pub partitions: Option<u32>,
    /// Age of the metric the HPA sees (scrape + depth poll + adapter), seconds.
    pub metric_delay_s: u32,
    /// Initial replicas.
    pub initial_replicas: i32,
    /// RNG seed (arrivals and service times).
    pub seed: u64,
    /// Output sampling step for the time series, seconds.
    pub sample_every_s: u32,
    /// Two scale events in opposite directions closer than this count as a flap.
    pub flap_window_s: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            concurrency: 8,
            service: ServiceTime { mean_s: 4.0, cv: 0.8 },
            image_pull_s: 20,
            model_load_s: 10,
            drain_s: 5,
            partitions: None,
            metric_delay_s: 15,
            initial_replicas: 2,
            seed: 42,
            sample_every_s: 60,
            flap_window_s: 600,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidConfig(format!("sim config: {m}")));
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return bad("concurrency must be in 1..=10000");
        }
        if !(self.service.mean_s.is_finite() && self.service.mean_s > 0.0 && self.service.mean_s <= 3600.0) {
            return bad("service.mean_s must be in (0, 3600]");
        }
        if !(self.service.cv.is_finite() && self.service.cv >= 0.0 && self.service.cv <= 10.0) {
            return bad("service.cv must be in [0, 10]");
        }
        if self.sample_every_s == 0 {
            return bad("sample_every_s must be > 0");
        }
        if self.initial_replicas < 0 || self.partitions == Some(0) {
            return bad("initial_replicas must be >= 0 and partitions > 0");
        }
        if self.metric_delay_s > 3600 {
            return bad("metric_delay_s must be <= 3600");
        }
        Ok(())
    }
}

/// One point of the output time series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Second.
    pub t: u32,
    /// `spec.replicas`.
    pub desired: i32,
    /// Ready pods.
    pub ready: u32,
    /// Waiting tasks.
    pub backlog: u64,
    /// Tasks running.
    pub in_flight: u64,
    /// Arrival rate.
    pub rate: f64,
}

/// One rescale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleChange {
    /// Second.
    pub t: u32,
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Sampled time series.
    pub samples: Vec<Sample>,
    /// Every rescale.
    pub events: Vec<ScaleChange>,
    /// Direction reversals within the flap window.
    pub flaps: u32,
    /// Billed pod-seconds (starting, ready and draining pods).
    pub pod_seconds: u64,
    /// Tasks arrived.
    pub arrived: u64,
    /// Tasks started.
    pub started: u64,
    /// Tasks still waiting at the end.
    pub backlog_end: u64,
    /// Largest backlog seen.
    pub backlog_max: u64,
    /// Queue wait p50, seconds.
    pub wait_p50_s: u32,
    /// Queue wait p95, seconds.
    pub wait_p95_s: u32,
    /// Queue wait p99, seconds.
    pub wait_p99_s: u32,
}

/// Longest service time simulated (a task is capped here), seconds.
pub const MAX_SERVICE_S: usize = 4096;

struct Fleet {
    /// Ready-at second of each live pod, oldest first.
    pods: Vec<u32>,
    /// Billing end of each draining pod.
    draining: Vec<u32>,
}

impl Fleet {
    fn resize(&mut self, now: u32, to: usize, startup: u32, drain: u32) {
        while self.pods.len() < to {
            self.pods.push(now + startup);
        }
        while self.pods.len() > to {
            // The ReplicaSet deletes not-ready pods first, then the newest.
            let idx = self
                .pods
                .iter()
                .rposition(|&r| r > now)
                .unwrap_or(self.pods.len() - 1);
            self.pods.remove(idx);
            self.draining.push(now + drain);
        }
    }
    fn ready(&self, now: u32) -> u32 {
        self.pods.iter().filter(|&&r| r <= now).count() as u32
    }
}

/// Runs the simulation with the default store ([`RunLengthBacklog`]).
pub fn simulate(trace: &ArrivalTrace, scaler: &Autoscaler, cfg: &SimConfig) -> Result<SimReport> {
    simulate_with(trace, scaler, cfg, RunLengthBacklog::default())
}

/// Runs the simulation with the given backlog store.
pub fn simulate_with<B: Backlog>(
    trace: &ArrivalTrace,
    scaler: &Autoscaler,
    cfg: &SimConfig,
    mut backlog: B,
) -> Result<SimReport> {
    cfg.validate()?;
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let sigma2 = (1.0 + cfg.service.cv * cfg.service.cv).ln();
    let service = LogNormal::new(cfg.service.mean_s.ln() - sigma2 / 2.0, sigma2.sqrt())
        .map_err(|e| Error::InvalidConfig(format!("sim config: service time: {e}")))?;
    let startup = cfg.image_pull_s + cfg.model_load_s;
    let mut wheel = vec![0u64; MAX_SERVICE_S + 1];
    let mut busy: u64 = 0;
    let mut fleet = Fleet {
        pods: Vec::new(),
        draining: Vec::new(),
    };
    let mut desired = cfg.initial_replicas;
    // Initial pods are already running.
    fleet.pods.extend(std::iter::repeat_n(0, desired.max(0) as usize));
    let (mut hpa, mut keda) = match scaler {
        Autoscaler::Fixed(n) => {
            desired = *n;
            fleet.pods = vec![0; (*n).max(0) as usize];
            (None, None)
        }
        Autoscaler::Hpa(spec) => (Some(HpaController::new(spec.clone())), None),
        Autoscaler::Keda(spec) => (
            Some(HpaController::new(spec.hpa.clone())),
            Some(KedaController::new(spec.clone())),
        ),
    };
    let triggers: Vec<TriggerModel> = match scaler {
        Autoscaler::Keda(s) => s.triggers.clone(),
        _ => Vec::new(),
    };
    let keda_poll = match scaler {
        Autoscaler::Keda(s) => s.polling_interval_s.max(1) as u32,
        _ => u32::MAX,
    };
    let delay = cfg.metric_delay_s as usize;
    let mut history = vec![(0u64, 0u64); delay + 1];
    let mut report = SimReport {
        samples: Vec::new(),
        events: Vec::new(),
        flaps: 0,
        pod_seconds: 0,
        arrived: 0,
        started: 0,
        backlog_end: 0,
        backlog_max: 0,
        wait_p50_s: 0,
        wait_p95_s: 0,
        wait_p99_s: 0,
    };
    let mut poissons: Vec<(u64, Poisson<f64>)> = Vec::new();
    let n = trace.len();
    for ti in 0..n {
        let t = ti as u32;
        // Arrivals.
        let rate = trace.rate(ti);
        let arrivals = if rate > 0.0 {
            let key = rate.to_bits();
            let d = match poissons.iter().find(|(k, _)| *k == key) {
                Some((_, d)) => *d,
                None => {
                    let d = Poisson::new(rate)
                        .map_err(|e| Error::InvalidInput(format!("arrival rate {rate}: {e}")))?;
                    if poissons.len() >= 64 {
                        poissons.remove(0);
                    }
                    poissons.push((key, d));
                    d
                }
            };
            d.sample(&mut rng) as u64
        } else {
            0
        };
        report.arrived += arrivals;
        backlog.push(t, arrivals);
        // Completions.
        let slot = ti % wheel.len();
        busy -= wheel[slot];
        wheel[slot] = 0;
        // Pods.
        fleet.draining.retain(|&end| end > t);
        let ready = fleet.ready(t);
        let useful = match cfg.partitions {
            Some(p) => ready.min(p),
            None => ready,
        };
        let capacity = u64::from(useful) * u64::from(cfg.concurrency);
        if capacity > busy && !backlog.is_empty() {
            let k = backlog.start(t, capacity - busy);
            for _ in 0..k {
                let s: f64 = service.sample(&mut rng);
                let secs = (s.ceil() as usize).clamp(1, MAX_SERVICE_S);
                let w = wheel.len();
                wheel[(ti + secs) % w] += 1;
            }
            busy += k;
        }
        let waiting = backlog.len();
        report.backlog_max = report.backlog_max.max(waiting);
        let hl = history.len();
        history[ti % hl] = (waiting, busy);
        let (seen_ready, seen_busy) = if ti >= delay {
            history[(ti - delay) % history.len()]
        } else {
            (0, 0)
        };
        // Autoscaling.
        let before = desired;
        let pods_now = fleet.pods.len() as i32;
        if let Some(k) = keda.as_mut() {
            if t % keda_poll == 0 {
                let active = triggers
                    .iter()
                    .any(|tr| signal(tr, seen_ready, seen_busy, cfg) > tr.activation_milli);
                if let KedaAction::Scale(r) = k.request_scale(i64::from(t), desired, active) {
                    desired = r;
                }
            }
        }
        if let Some(h) = hpa.as_mut() {
            if i64::from(t) % DEFAULT_SYNC_PERIOD_S == 0 && desired == before {
                let usage = match scaler {
                    Autoscaler::Keda(_) => {
                        // KEDA's HPA has one metric per trigger; the largest proposal wins.
                        let spec_target = h.spec().target_average_milli;
                        triggers
                            .iter()
                            .map(|tr| {
                                let v = signal(tr, seen_ready, seen_busy, cfg);
                                // Rescale onto the first trigger's target.
                                ((v as f64) * spec_target as f64 / tr.target_milli as f64) as i64
                            })
                            .max()
                            .unwrap_or(0)
                    }
                    _ => (seen_ready + seen_busy) as i64 * 1000,
                };
                desired = h.reconcile(i64::from(t), desired, pods_now, usage);
            }
        }
        if desired != before {
            let ev = ScaleChange {
                t,
                from: before,
                to: desired,
            };
            if let Some(prev) = report.events.last() {
                let prev_up = prev.to > prev.from;
                let up = desired > before;
                if prev_up != up && t - prev.t < cfg.flap_window_s {
                    report.flaps += 1;
                }
            }
            report.events.push(ev);
            fleet.resize(t, desired.max(0) as usize, startup, cfg.drain_s);
        }
        report.pod_seconds += (fleet.pods.len() + fleet.draining.len()) as u64;
        if t % cfg.sample_every_s == 0 {
            report.samples.push(Sample {
                t,
                desired,
                ready: fleet.ready(t),
                backlog: waiting,
                in_flight: busy,
                rate,
            });
        }
    }
    report.started = backlog.started();
    report.backlog_end = backlog.len();
    report.wait_p50_s = backlog.wait_percentile(50.0);
    report.wait_p95_s = backlog.wait_percentile(95.0);
    report.wait_p99_s = backlog.wait_percentile(99.0);
    Ok(report)
}

/// A trigger's metric (milli) from the backlog the scaler sees.
fn signal(tr: &TriggerModel, ready: u64, busy: u64, cfg: &SimConfig) -> i64 {
    let v = match tr.signal {
        TriggerSignal::RedisStreamLag => ready as i64 * 1000,
        TriggerSignal::PrometheusDepth => (ready + busy) as i64 * 1000,
        TriggerSignal::KafkaLag { allow_idle_consumers } => {
            let lag = (ready + busy) as i64 * 1000;
            match (allow_idle_consumers, cfg.partitions) {
                (false, Some(p)) => lag.min(i64::from(p) * tr.target_milli),
                _ => lag,
            }
        }
    };
    v.max(0)
}
