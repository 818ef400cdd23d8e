//! Unit tests of the Redis queue's key names and receipts.

use super::*;

#[test]
fn keys_share_one_hash_tag() {
    let k = RedisQueueKeys::new("as", "jobs");
    assert_eq!(k.streams[0], "as:{jobs}:stream:high");
    assert_eq!(k.stream(Priority::Low), "as:{jobs}:stream:low");
    assert_eq!(k.delayed, "as:{jobs}:delayed");
    assert_eq!(k.delayed_tasks, "as:{jobs}:delayed:tasks");
    assert_eq!(k.dead, "as:{jobs}:dead");
    assert_eq!(k.idempotency_prefix, "as:{jobs}:idem:");
}

#[test]
fn receipts_parse() {
    let l = Lease::new(Task::new("k", "p"), 1, "2:1-0", 1);
    assert_eq!(parse_receipt(&l).expect("ok"), (2, "1-0"));
    for bad in ["", "x", "3:1-0", "1:", "a:1-0"] {
        let l = Lease::new(Task::new("k", "p"), 1, bad, 1);
        assert!(parse_receipt(&l).is_err(), "{bad}");
    }
}
