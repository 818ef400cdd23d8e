//! Join state for fan-out / fan-in: the contract of the store that decides,
//! exactly once, when a set of child tasks is done.
//!
//! A join has one **slot per child id**. A child's report fills its slot at
//! most once: a redelivered child that reports again changes nothing and is
//! counted as a duplicate (a counter alone would count it twice). After each
//! filled slot the store evaluates the [`JoinPolicy`]; the first report (or
//! deadline) that satisfies it **decides** the join by compare-and-set, and
//! only that call sees [`Reported::decided_now`]. Reports after the decision
//! fill no slot and are counted as late.
//!
//! The continuation (the task to enqueue once the join is decided) is stored
//! with the join. Whoever sees a decided join whose continuation is not yet
//! marked enqueued gets it back in [`Reported::continuation`] and enqueues it
//! (with the join id as idempotency key), then calls
//! [`JoinStore::mark_enqueued`]; see [`crate::orchestrate`].

use std::fmt::{self, Debug};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{CodecError, Error, Result};
use crate::output::Output;
use crate::task::{Task, TaskId};

/// Default TTL of a join record (24 h after creation).
pub const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most children one join accepts.
pub const MAX_JOIN_CHILDREN: usize = 10_000;

/// The id of a join (derived from the coordinator task's id, so a coordinator
/// that runs twice creates the same join).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JoinId(String);

impl JoinId {
    /// Wraps an id.
    pub fn new(id: impl Into<String>) -> Self {
        JoinId(id.into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinId({})", self.0)
    }
}

impl fmt::Display for JoinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// When a join is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinPolicy {
    /// Every child reported (ok or failed): like `Promise.allSettled`.
    All,
    /// `k` children succeeded; decided as failed as soon as `k` can no longer
    /// be reached.
    Quorum(u32),
    /// The first child that succeeds; decided as failed when all failed.
    FirstSuccess,
}

impl JoinPolicy {
    /// A short stable name (`all`, `quorum`, `first`).
    pub fn name(&self) -> &'static str {
        match self {
            JoinPolicy::All => "all",
            JoinPolicy::Quorum(_) => "quorum",
            JoinPolicy::FirstSuccess => "first",
        }
    }

    /// Successes needed (`k`) for `n` children.
    pub fn needed(&self, n: u32) -> u32 {
        match self {
            JoinPolicy::All => n,
            JoinPolicy::Quorum(k) => *k,
            JoinPolicy::FirstSuccess => 1,
        }
    }

    /// The decision for `ok` successes and `failed` failures out of `n`
    /// children, or `None` while the join stays open. The Redis store runs
    /// the same rule in Lua.
    pub fn decide(&self, n: u32, ok: u32, failed: u32) -> Option<Decision> {
        match self {
            JoinPolicy::All => (ok + failed >= n).then_some(Decision::Settled),
            _ => {
                let k = self.needed(n);
                if ok >= k {
                    Some(Decision::Met)
                } else if failed > n.saturating_sub(k) {
                    Some(Decision::Unmet)
                } else {
                    None
                }
            }
        }
    }
}

/// Why a join was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// [`JoinPolicy::All`]: every child reported.
    Settled,
    /// Enough children succeeded (quorum, first success).
    Met,
    /// Too many children failed for the policy to be met.
    Unmet,
    /// The deadline passed first; unreported children count as timed out.
    Deadline,
}

impl Decision {
    /// A short stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Settled => "settled",
            Decision::Met => "met",
            Decision::Unmet => "unmet",
            Decision::Deadline => "deadline",
        }
    }

    /// Parses [`Decision::as_str`].
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "settled" => Decision::Settled,
            "met" => Decision::Met,
            "unmet" => Decision::Unmet,
            "deadline" => Decision::Deadline,
            other => {
                return Err(Error::Codec(CodecError::Malformed(format!(
                    "unknown join decision {other:?}"
                ))))
            }
        })
    }
}

/// What a child reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildStatus {
    /// Succeeded with this output.
    Ok(Output),
    /// Failed for good (dead-lettered, expired, cancelled); the reason.
    Failed(String),
    /// Not reported when the join was decided (in a decided join's report).
    TimedOut,
    /// Not reported yet (in an open join's report).
    Pending,
}

impl ChildStatus {
    /// Slot encoding: `o` + output bytes, or `f` + reason. Only `Ok` and
    /// `Failed` are ever stored.
    pub fn encode_slot(&self) -> Result<Vec<u8>> {
        match self {
            ChildStatus::Ok(o) => {
                let mut v = Vec::with_capacity(1 + o.len());
                v.push(b'o');
                v.extend_from_slice(o.as_bytes().map(|b| &b[..]).unwrap_or_default());
                Ok(v)
            }
            ChildStatus::Failed(r) => {
                let mut v = Vec::with_capacity(1 + r.len());
                v.push(b'f');
                v.extend_from_slice(r.as_bytes());
                Ok(v)
            }
            other => Err(Error::InvalidInput(format!("a child cannot report {other:?}"))),
        }
    }

    /// Decodes [`ChildStatus::encode_slot`].
    pub fn decode_slot(v: &[u8]) -> Result<Self> {
        match v.split_first() {
            Some((b'o', [])) => Ok(ChildStatus::Ok(Output::none())),
            Some((b'o', rest)) => Ok(ChildStatus::Ok(Output::bytes(rest.to_vec()))),
            Some((b'f', rest)) => Ok(ChildStatus::Failed(String::from_utf8_lossy(rest).into_owned())),
            _ => Err(Error::Codec(CodecError::Malformed(
                "join slot is not o/f + data".into(),
            ))),
        }
    }

    /// True for [`ChildStatus::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, ChildStatus::Ok(_))
    }
}

/// One child in a join's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildReport {
    /// The child's id.
    pub id: TaskId,
    /// The label the coordinator gave it (for example `research`).
    pub label: String,
    /// What it reported.
    pub status: ChildStatus,
}

/// Everything a store needs to create a join.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// The join.
    pub id: JoinId,
    /// When it is decided.
    pub policy: JoinPolicy,
    /// The children: id and label, ids unique.
    pub children: Vec<(TaskId, String)>,
    /// When the join is decided with what it has (ms since the epoch).
    pub deadline_ms: Option<u64>,
    /// The task to enqueue once decided.
    pub continuation: Task,
    /// The name of the queue the continuation goes to.
    pub continuation_queue: String,
}

impl JoinSpec {
    /// Refuses an empty or oversize child list, duplicate child ids, or a
    /// quorum that can never be met, with [`Error::InvalidInput`].
    pub fn validate(&self) -> Result<()> {
        let n = self.children.len();
        if n == 0 {
            return Err(Error::InvalidInput(format!("join {}: no children", self.id)));
        }
        if n > MAX_JOIN_CHILDREN {
            return Err(Error::InvalidInput(format!(
                "join {}: {n} children, more than {MAX_JOIN_CHILDREN}",
                self.id
            )));
        }
        let mut ids: Vec<&str> = self.children.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::InvalidInput(format!(
                "join {}: duplicate child ids",
                self.id
            )));
        }
        if let JoinPolicy::Quorum(k) = self.policy {
            if k == 0 || k as usize > n {
                return Err(Error::InvalidInput(format!(
                    "join {}: quorum {k} of {n} children can never be met",
                    self.id
                )));
            }
        }
        self.continuation.validate()
    }
}

/// A join as stored.
#[derive(Debug, Clone)]
pub struct JoinState {
    /// The join.
    pub id: JoinId,
    /// Its policy.
    pub policy: JoinPolicy,
    /// Its deadline, if any.
    pub deadline_ms: Option<u64>,
    /// The decision, once made.
    pub decision: Option<Decision>,
    /// Whether the continuation was marked enqueued.
    pub continuation_enqueued: bool,
    /// Every child in creation order, with its status.
    pub children: Vec<ChildReport>,
    /// Reports for a child that had reported already (ignored).
    pub duplicates: u64,
    /// Reports that arrived after the decision (ignored).
    pub late: u64,
    /// How many times the store decided this join (1 once decided; anything
    /// else is a bug, checked by the benchmark).
    pub decisions: u64,
}

impl JoinState {
    /// Children that succeeded.
    pub fn succeeded(&self) -> impl Iterator<Item = &ChildReport> {
        self.children.iter().filter(|c| c.status.is_ok())
    }
}

/// What happened to one filled-or-not slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The slot was empty and now holds the report.
    Filled,
    /// The child had reported before: ignored, counted.
    Duplicate,
    /// The join was decided before this report: ignored, counted.
    Late,
    /// No slot was involved (a deadline check).
    None,
}

/// The answer to [`JoinStore::report`] and [`JoinStore::expire`].
#[derive(Debug, Clone)]
pub struct Reported {
    /// What happened to the child's slot.
    pub slot: Slot,
    /// The decision, if the join is decided (by this call or earlier).
    pub decision: Option<Decision>,
    /// True only for the one call that decided the join.
    pub decided_now: bool,
    /// Set when the join is decided and its continuation is not marked
    /// enqueued: the caller enqueues it on the named queue, then calls
    /// [`JoinStore::mark_enqueued`].
    pub continuation: Option<(String, Task)>,
}

/// Where joins are kept. Object-safe: use it as `Arc<dyn JoinStore>`.
#[async_trait]
pub trait JoinStore: Send + Sync + Debug {
    /// Creates the join; `Ok(false)` and no change when it exists already
    /// (a coordinator that ran twice). Validates the spec first.
    async fn create(&self, spec: &JoinSpec) -> Result<bool>;

    /// Fills `child`'s slot with `status` (`Ok` or `Failed`) and decides the
    /// join if the policy is now satisfied. [`Error::NotFound`] for an unknown
    /// (or expired) join or a task that is not one of its children.
    async fn report(&self, join: &JoinId, child: &TaskId, status: ChildStatus) -> Result<Reported>;

    /// Decides the join by its deadline if it is still open and the deadline
    /// has passed; otherwise reports the current decision (and the
    /// continuation to re-drive, if not yet enqueued).
    async fn expire(&self, join: &JoinId) -> Result<Reported>;

    /// Marks the continuation enqueued.
    async fn mark_enqueued(&self, join: &JoinId) -> Result<()>;

    /// The join with its children's statuses (`TimedOut` for the unreported
    /// ones of a decided join), or `None` if unknown or expired.
    async fn state(&self, join: &JoinId) -> Result<Option<JoinState>>;

    /// Waits up to `timeout` for the join to be decided; `Ok(true)` once it
    /// is (for cancelling the remaining children), `Ok(false)` at the timeout.
    async fn wait_decided(&self, join: &JoinId, timeout: Duration) -> Result<bool>;
}

/// Compile-time check that the trait stays object-safe.
#[allow(dead_code)]
fn _object_safe(_: Box<dyn JoinStore>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_decide() {
        assert_eq!(JoinPolicy::All.decide(3, 2, 0), None);
        assert_eq!(JoinPolicy::All.decide(3, 2, 1), Some(Decision::Settled));
        assert_eq!(JoinPolicy::Quorum(2).decide(3, 2, 0), Some(Decision::Met));
        assert_eq!(JoinPolicy::Quorum(2).decide(3, 1, 1), None);
        assert_eq!(JoinPolicy::Quorum(2).decide(3, 1, 2), Some(Decision::Unmet));
        assert_eq!(JoinPolicy::FirstSuccess.decide(3, 0, 2), None);
        assert_eq!(JoinPolicy::FirstSuccess.decide(3, 0, 3), Some(Decision::Unmet));
        assert_eq!(JoinPolicy::FirstSuccess.decide(3, 1, 0), Some(Decision::Met));
    }

    #[test]
    fn slots_round_trip() {
        for s in [
            ChildStatus::Ok(Output::bytes("x")),
            ChildStatus::Ok(Output::none()),
            ChildStatus::Failed("r".into()),
        ] {
            assert_eq!(
                ChildStatus::decode_slot(&s.encode_slot().expect("enc")).expect("dec"),
                s
            );
        }
        assert!(ChildStatus::decode_slot(b"").is_err());
        assert!(ChildStatus::TimedOut.encode_slot().is_err());
    }
}
