//! The simulated queue: an arrival trace, and two interchangeable stores of
//! waiting tasks (a run-length FIFO with a wait histogram, and a per-task
//! reference implementation used to cross-check it and as the benchmark
//! baseline).

use crate::{Error, Result};

/// One segment of an arrival trace: `rate` tasks per second during
/// `[start_s, end_s)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// First second.
    pub start_s: u32,
    /// One past the last second.
    pub end_s: u32,
    /// Mean arrivals per second (Poisson).
    pub rate: f64,
}

/// A validated arrival trace: contiguous from second 0, rates finite and >= 0.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrivalTrace {
    per_second: Vec<f64>,
}

/// Longest trace accepted (7 days of seconds).
pub const MAX_TRACE_SECONDS: u32 = 7 * 86_400;

impl ArrivalTrace {
    /// Validates segments: they must start at 0, follow each other without
    /// gaps or overlaps, be non-empty, and carry finite non-negative rates.
    pub fn from_segments(segments: &[Segment]) -> Result<Self> {
        if segments.is_empty() {
            return Err(Error::InvalidInput("arrival trace: no segments".into()));
        }
        let mut per_second = Vec::new();
        let mut expected = 0u32;
        for (i, s) in segments.iter().enumerate() {
            if s.start_s > expected {
                return Err(Error::InvalidInput(format!(
                    "arrival trace: gap from {expected} s to {} s before segment {i}",
                    s.start_s
                )));
            }
            if s.start_s < expected {
                return Err(Error::InvalidInput(format!(
                    "arrival trace: segment {i} starts at {} s, overlapping the previous one (ends at {expected} s)",
                    s.start_s
                )));
            }
            if s.end_s <= s.start_s {
                return Err(Error::InvalidInput(format!(
                    "arrival trace: segment {i} is empty or reversed"
                )));
            }
            if !s.rate.is_finite() || s.rate < 0.0 {
                return Err(Error::InvalidInput(format!(
                    "arrival trace: segment {i} has rate {} (must be finite and >= 0)",
                    s.rate
                )));
            }
            if s.end_s > MAX_TRACE_SECONDS {
                return Err(Error::InvalidInput(format!(
                    "arrival trace: longer than {MAX_TRACE_SECONDS} s"
                )));
            }
            per_second.extend(std::iter::repeat_n(s.rate, (s.end_s - s.start_s) as usize));
            expected = s.end_s;
        }
        Ok(ArrivalTrace { per_second })
    }

    /// Parses CSV lines `start_s,end_s,rate` (`#` comments and blank lines skipped).
    pub fn parse_csv(text: &str) -> Result<Self> {
        let mut segs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = || {
                Error::InvalidInput(format!(
                    "arrival trace line {}: expected start_s,end_s,rate",
                    n + 1
                ))
            };
            let [a, b, c] = f.as_slice() else {
                return Err(bad());
            };
            segs.push(Segment {
                start_s: a.parse().map_err(|_| bad())?,
                end_s: b.parse().map_err(|_| bad())?,
                rate: c.parse().map_err(|_| bad())?,
            });
        }
        Self::from_segments(&segs)
    }

    /// A day shaped like interactive agent traffic: a night trough, a
    /// morning ramp, a midday plateau with a burst, an evening decline.
    pub fn diurnal_day(peak_rate: f64) -> Self {
        let pts: [(u32, f64); 12] = [
            (0, 0.05),
            (6, 0.05),
            (8, 0.5),
            (9, 0.8),
            (11, 1.0),
            (12, 0.7),
            (13, 1.0),
            (15, 0.9),
            (18, 0.6),
            (20, 0.3),
            (22, 0.1),
            (24, 0.05),
        ];
        let mut per_second = Vec::with_capacity(86_400);
        for s in 0..86_400u32 {
            let h = f64::from(s) / 3600.0;
            let i = pts
                .iter()
                .rposition(|(ph, _)| f64::from(*ph) <= h)
                .unwrap_or(0)
                .min(pts.len() - 2);
            let (h0, r0) = pts[i];
            let (h1, r1) = pts[i + 1];
            let x = (h - f64::from(h0)) / f64::from(h1 - h0);
            let mut r = r0 + (r1 - r0) * x;
            // A 20-minute burst at 14:00 (a batch job enqueuing).
            if (50_400..51_600).contains(&s) {
                r *= 2.5;
            }
            per_second.push(peak_rate * r);
        }
        ArrivalTrace { per_second }
    }

    /// Seconds covered.
    pub fn len(&self) -> usize {
        self.per_second.len()
    }

    /// Always false: a trace has at least one second.
    pub fn is_empty(&self) -> bool {
        self.per_second.is_empty()
    }

    /// Rate at second `t`.
    pub fn rate(&self, t: usize) -> f64 {
        self.per_second[t]
    }
}

/// Waiting tasks, FIFO, and the queue-wait distribution of started ones.
pub trait Backlog {
    /// `n` tasks arrive at second `t`.
    fn push(&mut self, t: u32, n: u64);
    /// Starts up to `n` tasks at second `now`; returns how many.
    fn start(&mut self, now: u32, n: u64) -> u64;
    /// Tasks waiting.
    fn len(&self) -> u64;
    /// Whether no task waits.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Queue-wait percentile (0..=100) of started tasks, whole seconds.
    fn wait_percentile(&mut self, p: f64) -> u32;
    /// Tasks started so far.
    fn started(&self) -> u64;
}

/// Run-length FIFO (one entry per arrival second) and a histogram of waits
/// with one-second buckets: O(1) per second, not per task.
#[derive(Debug, Clone, Default)]
pub struct RunLengthBacklog {
    runs: std::collections::VecDeque<(u32, u64)>,
    len: u64,
    hist: Vec<u64>,
    started: u64,
}

impl Backlog for RunLengthBacklog {
    fn push(&mut self, t: u32, n: u64) {
        if n == 0 {
            return;
        }
        match self.runs.back_mut() {
            Some((bt, c)) if *bt == t => *c += n,
            _ => self.runs.push_back((t, n)),
        }
        self.len += n;
    }

    fn start(&mut self, now: u32, mut n: u64) -> u64 {
        let mut done = 0;
        while n > 0 {
            let Some((t, c)) = self.runs.front_mut() else {
                break;
            };
            let k = n.min(*c);
            let wait = (now - *t) as usize;
            if self.hist.len() <= wait {
                self.hist.resize(wait + 1, 0);
            }
            self.hist[wait] += k;
            *c -= k;
            n -= k;
            done += k;
            if *c == 0 {
                self.runs.pop_front();
            }
        }
        self.len -= done;
        self.started += done;
        done
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn wait_percentile(&mut self, p: f64) -> u32 {
        if self.started == 0 {
            return 0;
        }
        // Nearest rank, the same rule as the per-task store's sorted index.
        let rank = ((p / 100.0) * self.started as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (w, c) in self.hist.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return w as u32;
            }
        }
        (self.hist.len().saturating_sub(1)) as u32
    }

    fn started(&self) -> u64 {
        self.started
    }
}

/// The straightforward store: one entry per waiting task, every wait kept
/// and sorted for percentiles. Same answers as [`RunLengthBacklog`].
#[derive(Debug, Clone, Default)]
pub struct PerTaskBacklog {
    tasks: std::collections::VecDeque<u32>,
    waits: Vec<u32>,
    sorted: bool,
}

impl Backlog for PerTaskBacklog {
    fn push(&mut self, t: u32, n: u64) {
        for _ in 0..n {
            self.tasks.push_back(t);
        }
    }

    fn start(&mut self, now: u32, n: u64) -> u64 {
        let mut done = 0;
        while done < n {
            let Some(t) = self.tasks.pop_front() else { break };
            self.waits.push(now - t);
            done += 1;
        }
        if done > 0 {
            self.sorted = false;
        }
        done
    }

    fn len(&self) -> u64 {
        self.tasks.len() as u64
    }

    fn wait_percentile(&mut self, p: f64) -> u32 {
        if self.waits.is_empty() {
            return 0;
        }
        if !self.sorted {
            self.waits.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.waits.len() as f64).ceil().max(1.0) as usize;
        self.waits[rank.min(self.waits.len()) - 1]
    }

    fn started(&self) -> u64 {
        self.waits.len() as u64
    }
}
