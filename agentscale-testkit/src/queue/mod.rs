//! The task-queue suite: 25 checks every [`TaskQueue`](agentscale_core::TaskQueue)
//! backend runs.
//!
//! Every check runs in its own fresh queue name with a short lease timeout
//! ([`QUEUE_LEASE_TIMEOUT`](crate::QUEUE_LEASE_TIMEOUT)). Counts are exact: a
//! backend passes only if it
//!
//! * delivers every enqueued task, with its envelope intact, and nothing extra
//!   (`delivery_at_least_once`);
//! * removes a task on `ack` and never delivers it again, while an un-acked
//!   task is delivered again after the lease timeout (`ack_removes`);
//! * redelivers `Nack::Retry(d)` not before `d`, with the attempt charged
//!   (`nack_retry_redelivers_after_delay`), and `Nack::Release` without
//!   charging (`release_does_not_charge`);
//! * redelivers an expired lease, not before the lease timeout, with attempt + 1
//!   and a new fence (`expired_lease_redelivered`);
//! * refuses `ack`/`nack`/`extend` through a lost lease with `LeaseLost` and
//!   changes nothing, and refuses a second ack (`stale_lease_refused`,
//!   needs `fencing`);
//! * keeps a lease alive past its timeout while it is extended
//!   (`extend_keeps_lease`, needs `lease_extension`);
//! * counts attempts across retries so a worker can dead-letter after
//!   `max_attempts` (`attempts_accumulate_to_dead_letter`), keeps the reason
//!   of a dead letter, lists it and counts it in `depth().dead`
//!   (`dead_letter_keeps_reason`), and replays it with attempts reset
//!   (`replay_dead_letter`, needs `dead_letter_replay`);
//! * keeps `depth()` exact through the lifecycle: ready, in-flight, delayed,
//!   dead (`depth_accounting`);
//! * delays `not_before` tasks and wakes a waiting leaser when they are due
//!   (`not_before_delays_delivery`, needs `delayed_retry`), and wakes a
//!   waiting leaser on enqueue (`lease_wakes_on_enqueue`);
//! * delivers High before Normal before Low (`priorities`, needs 3 priority
//!   levels);
//! * stores a task once per idempotency key (`idempotent_enqueue`, needs
//!   `idempotent_enqueue`);
//! * reports per-item results from `enqueue_batch` (`enqueue_batch_results`);
//! * refuses an oversize envelope (one byte over the limit; exactly at the
//!   limit is accepted) and an invalid task with `InvalidInput`
//!   (`oversize_envelope_refused`, `invalid_task_refused`);
//! * dead-letters malformed raw entries (garbage, bad magic, unknown version,
//!   truncated) with a reason and still delivers the valid tasks behind them
//!   (`malformed_entries_dead_lettered`, needs `wire_format` and a raw
//!   injector on the fixture);
//! * never returns more than `max` from `lease(max, _)` (`lease_respects_max`);
//! * never lets two concurrent leasers complete the same task: every task is
//!   acked successfully exactly once (`concurrent_leasers_exclusive`);
//! * redelivers `Nack::Defer(d)` not before `d` and uncharged
//!   (`defer_does_not_charge`, needs `delayed_retry`);
//! * with ordered sessions, delivers one task per session at a time in
//!   enqueue order without holding up other sessions, keeps a session's head
//!   in place through retry, lease expiry and deferral, moves on after an ack
//!   or dead letter, and refuses a session id that is not an identifier
//!   (`ordered_sessions_in_order`, `ordered_session_head_keeps_its_place`,
//!   `ordered_session_id_validated`, need `ordered_sessions`).
//!
//! A check whose need the backend's `capabilities()` do not declare is
//! reported as ignored. Within a check, the parts that depend on an optional
//! ability (the delay of a retry, fences, dead-letter listing) are asserted
//! only when it is declared. No check asserts on speed; time-based checks
//! assert lower bounds (not before the delay) with 100 ms of clock tolerance
//! and wait generously for upper bounds.

mod dead_letter;
mod delivery;
mod enqueue;
mod flow;
mod lease;
mod support;

use agentscale_core::Capabilities;

use crate::harness::{always, QueueCheck};

fn fencing(c: &Capabilities) -> Result<(), &'static str> {
    if c.fencing {
        Ok(())
    } else {
        Err("no fencing")
    }
}

fn lease_extension(c: &Capabilities) -> Result<(), &'static str> {
    if c.lease_extension {
        Ok(())
    } else {
        Err("no lease extension")
    }
}

fn dead_letter_replay(c: &Capabilities) -> Result<(), &'static str> {
    if c.dead_letter_replay {
        Ok(())
    } else {
        Err("no dead-letter replay")
    }
}

fn delayed_delivery(c: &Capabilities) -> Result<(), &'static str> {
    if c.delayed_retry {
        Ok(())
    } else {
        Err("no delayed delivery")
    }
}

fn three_priorities(c: &Capabilities) -> Result<(), &'static str> {
    if c.priority_levels >= 3 {
        Ok(())
    } else {
        Err("fewer than 3 priority levels")
    }
}

fn idempotent_enqueue(c: &Capabilities) -> Result<(), &'static str> {
    if c.idempotent_enqueue {
        Ok(())
    } else {
        Err("no idempotent enqueue")
    }
}

fn wire_format(c: &Capabilities) -> Result<(), &'static str> {
    if c.wire_format {
        Ok(())
    } else {
        Err("no wire format (no raw entries can exist)")
    }
}

fn ordered_sessions(c: &Capabilities) -> Result<(), &'static str> {
    if c.ordered_sessions {
        Ok(())
    } else {
        Err("no ordered sessions")
    }
}

macro_rules! check {
    ($module:ident::$name:ident, $requires:expr) => {
        QueueCheck {
            name: stringify!($name),
            requires: $requires,
            run: |fx| Box::pin($module::$name(fx)),
        }
    };
}

/// Every queue check, in the order they are listed.
pub(crate) fn checks() -> Vec<QueueCheck> {
    vec![
        check!(delivery::delivery_at_least_once, always),
        check!(delivery::ack_removes, always),
        check!(lease::nack_retry_redelivers_after_delay, always),
        check!(lease::release_does_not_charge, always),
        check!(lease::expired_lease_redelivered, always),
        check!(lease::stale_lease_refused, fencing),
        check!(lease::extend_keeps_lease, lease_extension),
        check!(dead_letter::attempts_accumulate_to_dead_letter, always),
        check!(dead_letter::dead_letter_keeps_reason, always),
        check!(dead_letter::replay_dead_letter, dead_letter_replay),
        check!(enqueue::depth_accounting, always),
        check!(lease::not_before_delays_delivery, delayed_delivery),
        check!(delivery::lease_wakes_on_enqueue, always),
        check!(delivery::priorities, three_priorities),
        check!(enqueue::idempotent_enqueue, idempotent_enqueue),
        check!(enqueue::enqueue_batch_results, always),
        check!(enqueue::oversize_envelope_refused, always),
        check!(enqueue::invalid_task_refused, always),
        check!(dead_letter::malformed_entries_dead_lettered, wire_format),
        check!(delivery::lease_respects_max, always),
        check!(delivery::concurrent_leasers_exclusive, always),
        check!(flow::defer_does_not_charge, delayed_delivery),
        check!(flow::ordered_sessions_in_order, ordered_sessions),
        check!(flow::ordered_session_head_keeps_its_place, ordered_sessions),
        check!(flow::ordered_session_id_validated, ordered_sessions),
    ]
}
