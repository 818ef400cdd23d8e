//! Administration: dead-letter listing and purging, peeking at ready
//! tasks, and deleting a queue's keys.

use agentscale_core::queue::DeadLetter;
use agentscale_core::{Result, Task};
use redis::Value;

use super::*;

/// A ready task seen by [`RedisQueue::peek_ready`](super::RedisQueue::peek_ready) without leasing it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReadyEntry {
    /// The stream entry id.
    pub entry_id: String,
    /// The shard whose stream holds it (0 on a queue of one shard).
    pub shard: usize,
    /// The priority stream it waits in.
    pub priority: Priority,
    /// The task, when the entry is a decodable envelope.
    pub task: Option<Task>,
    /// The raw bytes, when the entry is not a decodable envelope.
    pub raw: Option<Vec<u8>>,
}

/// Most entries [`RedisQueue::peek_ready`](super::RedisQueue::peek_ready) returns in one call.
pub const MAX_PEEK: usize = 1000;

impl Shard {
    /// Up to `max` (at most [`MAX_PEEK`]) tasks that wait for their first
    /// delivery, high priority first and oldest first within a priority. Reads
    /// only: nothing is leased, and leased, delayed or dead tasks are not shown.
    pub(super) async fn peek_ready(&self, max: usize) -> Result<Vec<ReadyEntry>> {
        let max = max.min(MAX_PEEK);
        if max == 0 {
            return Ok(Vec::new());
        }
        let script = Script::new(scripts::PEEK);
        let mut inv = script.key(&self.inner.keys.streams[..]);
        inv.arg(&self.inner.config.consumer_group).arg(max);
        let reply: Value = self.eval(&inv, "peek").await?;
        let Value::Array(rows) = reply else {
            return Err(bad_reply("peek"));
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Array(parts) = row else {
                return Err(bad_reply("peek"));
            };
            let mut it = parts.into_iter();
            let (Some(p), Some(id), Some(bytes)) = (it.next(), it.next(), it.next()) else {
                return Err(bad_reply("peek"));
            };
            let priority = match value_i64(&p) {
                Some(0) => Priority::High,
                Some(1) => Priority::Normal,
                Some(2) => Priority::Low,
                _ => return Err(bad_reply("peek")),
            };
            let entry_id = value_string(id).ok_or_else(|| bad_reply("peek"))?;
            let bytes = value_bytes(bytes).unwrap_or_default();
            let (task, raw) = match Task::decode(&bytes) {
                Ok(t) => (Some(t), None),
                Err(_) => (None, Some(bytes)),
            };
            out.push(ReadyEntry {
                entry_id,
                shard: self.inner.index,
                priority,
                task,
                raw,
            });
        }
        Ok(out)
    }

    /// Deletes every dead letter of this queue at once (`XLEN` and `DEL` in
    /// one `MULTI`) and returns how many there were.
    pub(super) async fn purge_dead_letters(&self) -> Result<u64> {
        let mut conn = self.inner.redis.connection();
        let (len, _): (u64, i64) = redis::pipe()
            .atomic()
            .cmd("XLEN")
            .arg(&self.inner.keys.dead)
            .cmd("DEL")
            .arg(&self.inner.keys.dead)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err("purge dead letters", e))?;
        Ok(len)
    }

    /// Deletes every key of this queue (streams, delayed set, dead letters,
    /// idempotency keys, ordered-session keys). For tests, benchmarks and decommissioning.
    pub(super) async fn destroy(&self) -> Result<()> {
        let k = &self.inner.keys;
        let mut conn = self.inner.redis.connection();
        let mut del = redis::cmd("DEL");
        del.arg(&k.streams[..])
            .arg(&k.delayed)
            .arg(&k.delayed_tasks)
            .arg(&k.dead)
            .arg(&k.sessions_waiting);
        let _: i64 = del.query_async(&mut conn).await.map_err(|e| map_err("DEL", e))?;
        for prefix in [&k.idempotency_prefix, &k.session_prefix] {
            self.delete_matching(&mut conn, prefix).await?;
        }
        Ok(())
    }

    /// Deletes every key starting with `prefix` (SCAN + DEL).
    async fn delete_matching(
        &self,
        conn: &mut agentscale_redis::RedisConnection,
        prefix: &str,
    ) -> Result<()> {
        let pattern = format!("{}*", escape_glob(prefix));
        let mut cursor: u64 = 0;
        loop {
            // The idempotency keys share the queue's hash tag: on a cluster
            // they all live on the master of the dead-letter key's slot.
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let (next, found): (u64, Vec<String>) = conn
                .query_at_key(&scan, &self.inner.keys.dead)
                .await
                .map_err(|e| map_err("SCAN", e))?;
            if !found.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&found)
                    .query_async(conn)
                    .await
                    .map_err(|e| map_err("DEL", e))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Lists dead letters from `start` (exclusive when `exclusive`).
    pub(super) async fn read_dead(&self, start: &str, end: &str, max: usize) -> Result<Vec<DeadLetter>> {
        let mut conn = self.inner.redis.connection();
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.inner.keys.dead)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(max)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err("XRANGE", e))?;
        let Value::Array(entries) = reply else {
            return Err(bad_reply("XRANGE"));
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let Value::Array(mut parts) = e else { continue };
            if parts.len() != 2 {
                continue;
            }
            let fields = entry_fields(parts.pop().unwrap_or(Value::Nil));
            let Some(id) = parts.pop().and_then(value_string) else {
                continue;
            };
            let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let text = |name: &str| {
                get(name)
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default()
            };
            let bytes = get("task").unwrap_or_default();
            let (task, raw) = if text("raw") == "1" {
                (None, Some(bytes))
            } else {
                match Task::decode(&bytes) {
                    Ok(t) => (Some(t), None),
                    Err(_) => (None, Some(bytes)),
                }
            };
            out.push(DeadLetter {
                id,
                task,
                raw,
                reason: text("reason"),
                attempts: text("attempts").parse().unwrap_or(0),
                dead_at_ms: text("dead_at").parse().unwrap_or(0),
            });
        }
        Ok(out)
    }
}

pub(super) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
