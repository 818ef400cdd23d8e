//! The shadow flag: a task mirrored to a candidate version for comparison
//! (see `agentscale-rollout`'s shadow traffic) carries the header
//! [`SHADOW_HEADER`], and its handler sees [`TaskContext::is_shadow`], so a
//! tool with side effects (sending mail, charging a card, writing to a
//! customer's system) can be stubbed while the rest of the agent runs for
//! real.

use super::TaskContext;
use crate::task::Task;

/// The task header that marks a shadow copy (value `"1"`).
pub const SHADOW_HEADER: &str = "agentscale-shadow";

impl Task {
    /// True when this task is a shadow copy: its output is discarded and its
    /// side effects must be stubbed.
    pub fn is_shadow(&self) -> bool {
        self.headers.get(SHADOW_HEADER).is_some_and(|v| v == "1")
    }

    /// Marks this task as a shadow copy.
    pub fn into_shadow(self) -> Self {
        self.with_header(SHADOW_HEADER, "1")
    }
}

impl TaskContext {
    /// True when this attempt runs a shadow copy (the task carries
    /// [`SHADOW_HEADER`]): its output is discarded and compared with
    /// production's, so tools with side effects must be stubbed.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// The same context, marked as running a shadow copy (or not); for
    /// testing a handler directly with [`TaskContext::detached`].
    pub fn with_shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_header_marks_a_shadow_copy() {
        let t = Task::new("k", "x");
        assert!(!t.is_shadow());
        let t = t.into_shadow();
        assert!(t.is_shadow());
        let cx = TaskContext::detached(1, 1, Duration::from_secs(1));
        assert!(!cx.is_shadow());
        assert!(cx.with_shadow(true).is_shadow());
    }
}
