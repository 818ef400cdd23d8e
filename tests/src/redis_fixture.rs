//! The Redis queue's conformance fixture, shared by the test targets that
//! run the queue suite over a [`Redis`] handle (cluster, shards, TLS).

use agentscale_core::Priority;
use agentscale_queue::redis::RedisQueue;
use agentscale_redis::Redis;
use agentscale_testkit::QueueFixture;

/// `queue` as a conformance fixture: raw entries are `XADD`ed through
/// `redis` to the queue's normal-priority stream (shard 0's when sharded),
/// and the cleanup destroys the queue's keys.
pub fn queue_fixture(redis: Redis, queue: RedisQueue) -> QueueFixture {
    let stream = queue.keys().stream(Priority::Normal).to_string();
    let cleanup = queue.clone();
    QueueFixture::new(queue)
        .with_raw_injector(move |bytes| {
            let (mut conn, stream) = (redis.connection(), stream.clone());
            async move {
                let _: String = redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("task")
                    .arg(bytes)
                    .query_async(&mut conn)
                    .await
                    .expect("xadd raw");
            }
        })
        .with_cleanup(move || async move {
            cleanup.destroy().await.expect("destroy");
        })
}
