//! Unit tests of the Redis queue's key names and receipts.

use super::*;
use agentscale_core::queue::Lease;

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
    let r = parse_receipt(&l).expect("ok");
    assert_eq!((r.shard, r.prio, r.id), (0, 2, "1-0"));
    let l = Lease::new(Task::new("k", "p"), 1, "7:1:5-3", 1);
    let r = parse_receipt(&l).expect("sharded");
    assert_eq!((r.shard, r.prio, r.id), (7, 1, "5-3"));
    for bad in [
        "", "x", "3:1-0", "1:", "a:1-0", "x:1:1-0", "1:3:1-0", "-1:1:1-0", "1:1:",
    ] {
        let l = Lease::new(Task::new("k", "p"), 1, bad, 1);
        assert!(parse_receipt(&l).is_err(), "{bad}");
    }
}

#[test]
fn one_shard_is_the_plain_layout() {
    assert_eq!(
        RedisQueueKeys::for_shard("as", "jobs", 0, 1),
        RedisQueueKeys::new("as", "jobs")
    );
    assert_eq!(shard_tag("jobs", 0, 1), "jobs");
}

#[test]
fn shard_tags_fall_in_even_slot_windows() {
    for shards in [2usize, 3, 7, 16, 256] {
        let mut tags = std::collections::BTreeSet::new();
        for i in 0..shards {
            let tag = shard_tag("jobs", i, shards);
            assert!(tag.starts_with(&format!("jobs#{i}")), "{tag}");
            let slot = agentscale_redis::key_slot(tag.as_bytes()) as usize;
            assert!(
                ((4 * i + 1) * 16384 / (4 * shards)..(4 * i + 3) * 16384 / (4 * shards)).contains(&slot),
                "shard {i}/{shards}: tag {tag} slot {slot}"
            );
            // The keys' slot is the tag's slot.
            let keys = RedisQueueKeys::for_shard("as", "jobs", i, shards);
            assert_eq!(agentscale_redis::key_slot(keys.dead.as_bytes()) as usize, slot);
            assert_eq!(shard_tag("jobs", i, shards), tag, "deterministic");
            tags.insert(tag);
        }
        assert_eq!(tags.len(), shards);
    }
}
