//! In-process [`JoinStore`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use agentscale_core::join::{
    ChildReport, ChildStatus, Decision, JoinSpec, JoinState, Reported, Slot, DEFAULT_JOIN_TTL,
};
use agentscale_core::task::now_ms;
use agentscale_core::{Error, JoinId, JoinStore, Result, TaskId};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

/// Default most joins kept at once (the oldest go first beyond it).
pub const DEFAULT_MAX_JOINS: usize = 100_000;

/// Joins in this process: one slot per child, decision by compare-and-set
/// under a lock, decided-signal through a `watch` channel per join.
#[derive(Debug)]
pub struct LocalJoinStore {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_joins: usize,
}

#[derive(Debug, Default)]
struct Inner {
    joins: HashMap<JoinId, Join>,
    order: VecDeque<(Instant, JoinId)>,
}

#[derive(Debug)]
struct Join {
    spec: JoinSpec,
    index: HashMap<TaskId, usize>,
    slots: Vec<Option<ChildStatus>>,
    ok: u32,
    failed: u32,
    decision: Option<Decision>,
    decisions: u64,
    enqueued: bool,
    duplicates: u64,
    late: u64,
    expires: Instant,
    decided: watch::Sender<bool>,
}

impl Join {
    fn decide(&mut self, d: Decision) {
        self.decision = Some(d);
        self.decisions += 1;
        self.decided.send_replace(true);
    }

    fn reported(&self, slot: Slot, decided_now: bool) -> Reported {
        Reported {
            slot,
            decision: self.decision,
            decided_now,
            continuation: (self.decision.is_some() && !self.enqueued).then(|| {
                (
                    self.spec.continuation_queue.clone(),
                    self.spec.continuation.clone(),
                )
            }),
        }
    }

    fn state(&self) -> JoinState {
        let children = self
            .spec
            .children
            .iter()
            .zip(&self.slots)
            .map(|((id, label), slot)| ChildReport {
                id: id.clone(),
                label: label.clone(),
                status: match slot {
                    Some(s) => s.clone(),
                    None if self.decision.is_some() => ChildStatus::TimedOut,
                    None => ChildStatus::Pending,
                },
            })
            .collect();
        JoinState {
            id: self.spec.id.clone(),
            policy: self.spec.policy,
            deadline_ms: self.spec.deadline_ms,
            decision: self.decision,
            continuation_enqueued: self.enqueued,
            children,
            duplicates: self.duplicates,
            late: self.late,
            decisions: self.decisions,
        }
    }
}

impl Inner {
    fn live(&mut self, id: &JoinId) -> Result<&mut Join> {
        let now = Instant::now();
        match self.joins.get_mut(id) {
            Some(j) if j.expires > now => Ok(j),
            _ => Err(Error::NotFound(format!("join {id} is unknown or expired"))),
        }
    }

    fn purge(&mut self, now: Instant, max: usize) {
        while let Some((at, id)) = self.order.front() {
            if *at > now && self.joins.len() < max {
                break;
            }
            let (at, id) = (*at, id.clone());
            self.order.pop_front();
            if self.joins.get(&id).is_some_and(|j| j.expires == at) {
                self.joins.remove(&id);
            }
        }
    }
}

/// Builds a [`LocalJoinStore`].
#[derive(Debug, Clone)]
pub struct LocalJoinStoreBuilder {
    ttl: Duration,
    max_joins: usize,
}

impl LocalJoinStoreBuilder {
    /// How long a join is kept after creation (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Most joins kept; beyond it the oldest are dropped (default 100 000).
    pub fn max_joins(mut self, n: usize) -> Self {
        self.max_joins = n;
        self
    }

    /// [`Error::InvalidConfig`] for a zero TTL or capacity.
    pub fn build(self) -> Result<LocalJoinStore> {
        if self.ttl.is_zero() || self.max_joins == 0 {
            return Err(Error::InvalidConfig(
                "join store ttl and max_joins must be greater than zero".into(),
            ));
        }
        Ok(LocalJoinStore {
            inner: Mutex::new(Inner::default()),
            ttl: self.ttl,
            max_joins: self.max_joins,
        })
    }
}

impl LocalJoinStore {
    /// Starts configuring a store.
    pub fn builder() -> LocalJoinStoreBuilder {
        LocalJoinStoreBuilder {
            ttl: DEFAULT_JOIN_TTL,
            max_joins: DEFAULT_MAX_JOINS,
        }
    }
}

#[async_trait]
impl JoinStore for LocalJoinStore {
    async fn create(&self, spec: &JoinSpec) -> Result<bool> {
        spec.validate()?;
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.purge(now, self.max_joins);
        if inner.live(&spec.id).is_ok() {
            return Ok(false);
        }
        let expires = now + self.ttl;
        let index = spec
            .children
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), i))
            .collect();
        let join = Join {
            slots: vec![None; spec.children.len()],
            spec: spec.clone(),
            index,
            ok: 0,
            failed: 0,
            decision: None,
            decisions: 0,
            enqueued: false,
            duplicates: 0,
            late: 0,
            expires,
            decided: watch::channel(false).0,
        };
        inner.joins.insert(spec.id.clone(), join);
        inner.order.push_back((expires, spec.id.clone()));
        Ok(true)
    }

    async fn report(&self, join: &JoinId, child: &TaskId, status: ChildStatus) -> Result<Reported> {
        let is_ok = match &status {
            ChildStatus::Ok(_) => true,
            ChildStatus::Failed(_) => false,
            other => return Err(Error::InvalidInput(format!("a child cannot report {other:?}"))),
        };
        let mut inner = self.inner.lock();
        let j = inner.live(join)?;
        let Some(&i) = j.index.get(child) else {
            return Err(Error::NotFound(format!(
                "task {child} is not a child of join {join}"
            )));
        };
        if j.slots[i].is_some() {
            j.duplicates += 1;
            return Ok(j.reported(Slot::Duplicate, false));
        }
        if j.decision.is_some() {
            j.late += 1;
            return Ok(j.reported(Slot::Late, false));
        }
        j.slots[i] = Some(status);
        if is_ok {
            j.ok += 1;
        } else {
            j.failed += 1;
        }
        let n = j.slots.len() as u32;
        let decided_now = match j.spec.policy.decide(n, j.ok, j.failed) {
            Some(d) => {
                j.decide(d);
                true
            }
            None => false,
        };
        Ok(j.reported(Slot::Filled, decided_now))
    }

    async fn expire(&self, join: &JoinId) -> Result<Reported> {
        let mut inner = self.inner.lock();
        let j = inner.live(join)?;
        let due = j.spec.deadline_ms.is_some_and(|d| now_ms() >= d);
        if j.decision.is_none() && due {
            j.decide(Decision::Deadline);
            return Ok(j.reported(Slot::None, true));
        }
        Ok(j.reported(Slot::None, false))
    }

    async fn mark_enqueued(&self, join: &JoinId) -> Result<()> {
        let mut inner = self.inner.lock();
        let j = inner.live(join)?;
        if j.decision.is_none() {
            return Err(Error::Conflict(format!("join {join} is not decided")));
        }
        j.enqueued = true;
        Ok(())
    }

    async fn state(&self, join: &JoinId) -> Result<Option<JoinState>> {
        let mut inner = self.inner.lock();
        Ok(inner.live(join).ok().map(|j| j.state()))
    }

    async fn wait_decided(&self, join: &JoinId, timeout: Duration) -> Result<bool> {
        let mut rx = {
            let mut inner = self.inner.lock();
            inner.live(join)?.decided.subscribe()
        };
        if *rx.borrow_and_update() {
            return Ok(true);
        }
        if timeout.is_zero() {
            return Ok(false);
        }
        let waited =
            tokio::time::timeout(timeout, async move { rx.wait_for(|d| *d).await.map(|_| ()) }).await;
        match waited {
            Ok(Ok(())) => Ok(true),
            // Sender gone: the join was purged.
            Ok(Err(_)) => Err(Error::NotFound(format!("join {join} expired"))),
            Err(_) => Ok(false),
        }
    }
}
