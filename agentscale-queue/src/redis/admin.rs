//! Administration: dead-letter listing and deleting a queue's keys.

use agentscale_core::queue::DeadLetter;
use agentscale_core::{Result, Task};
use redis::Value;

use super::*;

impl RedisQueue {
    /// Deletes every key of this queue (streams, delayed set, dead letters,
    /// idempotency keys). For tests, benchmarks and decommissioning.
    pub async fn destroy(&self) -> Result<()> {
        let k = &self.inner.keys;
        let mut conn = self.inner.redis.connection();
        let mut del = redis::cmd("DEL");
        del.arg(&k.streams[..])
            .arg(&k.delayed)
            .arg(&k.delayed_tasks)
            .arg(&k.dead);
        let _: i64 = del.query_async(&mut conn).await.map_err(|e| map_err("DEL", e))?;
        let pattern = format!("{}*", escape_glob(&k.idempotency_prefix));
        let mut cursor: u64 = 0;
        loop {
            // The idempotency keys share the queue's hash tag: on a cluster
            // they all live on the master of the dead-letter key's slot.
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let (next, found): (u64, Vec<String>) = conn
                .query_at_key(&scan, &k.dead)
                .await
                .map_err(|e| map_err("SCAN", e))?;
            if !found.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&found)
                    .query_async(&mut conn)
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
