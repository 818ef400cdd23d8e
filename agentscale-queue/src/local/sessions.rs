//! Ordered sessions of the in-memory queue.
//!
//! A session is *open* while its head task is in the queue (ready, delayed
//! or leased). Later tasks of an open session wait here, in enqueue order,
//! and only the head is ever deliverable, so no two tasks of one session run
//! at once and other sessions are never held up. A retry, release, deferral
//! or lease expiry keeps the head in place; an ack or a dead letter closes
//! it and makes the next waiting task the head.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use agentscale_core::Task;

/// The tasks waiting behind each open session's head.
#[derive(Default)]
pub(super) struct Sessions {
    open: HashMap<String, VecDeque<Arc<Task>>>,
    waiting: usize,
}

impl Sessions {
    /// Lets `task` into the queue when it has no session or its session is
    /// not open (it becomes the head); otherwise parks it and returns `None`.
    pub(super) fn admit(&mut self, task: Arc<Task>) -> Option<Arc<Task>> {
        let Some(session) = task.session_id.as_deref() else {
            return Some(task);
        };
        match self.open.get_mut(session) {
            Some(waiting) => {
                waiting.push_back(task);
                self.waiting += 1;
                None
            }
            None => {
                self.open.insert(session.to_string(), VecDeque::new());
                Some(task)
            }
        }
    }

    /// The head of `task`'s session left the queue (acked or dead-lettered):
    /// returns the next task of the session, now its head, or closes it.
    pub(super) fn finish(&mut self, task: &Task) -> Option<Arc<Task>> {
        let session = task.session_id.as_deref()?;
        let waiting = self.open.get_mut(session)?;
        match waiting.pop_front() {
            Some(next) => {
                self.waiting -= 1;
                Some(next)
            }
            None => {
                self.open.remove(session);
                None
            }
        }
    }

    /// Tasks waiting behind a head (counted as ready in `depth`: they are
    /// backlog, deliverable once their predecessors are done).
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_head_per_session_in_order() {
        let mut s = Sessions::default();
        let t = |sess: Option<&str>, p: &str| {
            let t = Task::new("k", p.to_string());
            Arc::new(match sess {
                Some(x) => t.with_session(x),
                None => t,
            })
        };
        assert!(s.admit(t(None, "free")).is_some());
        let a1 = s.admit(t(Some("a"), "a1")).expect("head");
        assert!(s.admit(t(Some("a"), "a2")).is_none());
        assert!(s.admit(t(Some("a"), "a3")).is_none());
        let b1 = s.admit(t(Some("b"), "b1")).expect("other session is not held up");
        assert_eq!(s.waiting(), 2);
        let a2 = s.finish(&a1).expect("next head");
        assert_eq!(&a2.payload[..], b"a2");
        assert!(s.finish(&b1).is_none());
        let a3 = s.finish(&a2).expect("next head");
        assert_eq!(&a3.payload[..], b"a3");
        assert!(s.finish(&a3).is_none());
        assert_eq!(s.waiting(), 0);
        assert!(
            s.admit(t(Some("a"), "a4")).is_some(),
            "closed session opens again"
        );
    }
}
