//! Ordered sessions on Redis.
//!
//! A session is *open* while its head task is in the queue (in a stream,
//! pending, or in the delayed set). The open session is one string key
//! holding the head's task id; later tasks of the session wait in a list, in
//! the order their enqueue scripts ran. Only the head is ever in a stream, so
//! any consumer may lease it and no consumer can lease two tasks of one
//! session; other sessions are never held up.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{Q}:session:<id>` | string | task id of the session's head |
//! | `P:{Q}:session:<id>:waiting` | list | tasks behind the head: `due,idlen,memberlen,` + id + delayed member + envelope |
//! | `P:{Q}:sessions:waiting` | string | number of waiting tasks (counted as ready in `depth`) |
//!
//! The head moves on only when it is acked or dead-lettered, in the same
//! script as the fenced settle: the next waiting task becomes the head and is
//! added to its stream (or the delayed set, when its `not_before` is still
//! ahead). A retry, release or deferral keeps the head; a lease that expires
//! (its worker died) is reclaimed with the head still in place, so the
//! session continues on another consumer.

use agentscale_core::queue::Lease;
use agentscale_core::{Result, Task};
use redis::Script;

use super::{scripts, RedisQueue};

/// Enqueue into a session: the head goes to its stream (or the delayed set),
/// the others to the session's waiting list. Idempotent like
/// `ENQUEUE_IDEMPOTENT` when a TTL is given.
///
/// KEYS: idempotency key (any key of the queue when none), session head,
/// waiting list, waiting counter, target stream, delayed zset, delayed hash.
/// ARGV: task id, idempotency ttl ms (0: none), due ms (0: not delayed),
/// delayed member, envelope.
/// Returns nil when stored, else the first task id.
pub(super) const SESSION_ENQUEUE: &str = r#"
if ARGV[2] ~= '0' then
  local prev = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
  if prev then return prev end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  if ARGV[3] ~= '0' then
    redis.call('HSET', KEYS[7], ARGV[4], ARGV[5])
    redis.call('ZADD', KEYS[6], ARGV[3], ARGV[4])
  else
    redis.call('XADD', KEYS[5], '*', 'task', ARGV[5])
  end
else
  redis.call('RPUSH', KEYS[3], ARGV[3] .. ',' .. #ARGV[1] .. ',' .. #ARGV[4] .. ',' .. ARGV[1] .. ARGV[4] .. ARGV[5])
  redis.call('INCR', KEYS[4])
end
return false
"#;

/// Appended to the settle script (wrapped as a function): after an ack or a
/// dead letter of the session's head, the next waiting task becomes the head.
///
/// Extra KEYS (the last 8): session head, waiting list, waiting counter,
/// stream high, normal, low, delayed zset, delayed hash. Extra ARGV[11]: the
/// settled task's id.
const SESSION_ADVANCE: &str = r#"
local r = settle()
if r == 1 and (ARGV[5] == 'ack' or ARGV[5] == 'dead') then
  local b = #KEYS - 8
  if redis.call('GET', KEYS[b + 1]) == ARGV[11] then
    local nxt = redis.call('LPOP', KEYS[b + 2])
    if nxt then
      redis.call('DECR', KEYS[b + 3])
      local due, idlen, mlen, pos = string.match(nxt, '^(%d+),(%d+),(%d+),()')
      idlen = tonumber(idlen)
      mlen = tonumber(mlen)
      local id = string.sub(nxt, pos, pos + idlen - 1)
      local member = string.sub(nxt, pos + idlen, pos + idlen + mlen - 1)
      local env = string.sub(nxt, pos + idlen + mlen)
      redis.call('SET', KEYS[b + 1], id)
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      local p = tonumber(string.sub(member, 1, 1)) or 1
      if tonumber(due) > now then
        redis.call('HSET', KEYS[b + 8], member, env)
        redis.call('ZADD', KEYS[b + 7], due, member)
      else
        redis.call('XADD', KEYS[b + 4 + p], '*', 'task', env)
      end
    else
      redis.call('DEL', KEYS[b + 1])
    end
  end
end
return r
"#;

/// The settle script with the session advance after it.
pub(super) fn session_settle_script() -> Script {
    Script::new(&format!(
        "local function settle()\n{}\nend\n{}",
        scripts::SETTLE,
        SESSION_ADVANCE
    ))
}

impl RedisQueue {
    /// The session of `task` when this queue orders sessions.
    pub(super) fn ordered_session<'t>(&self, task: &'t Task) -> Option<&'t str> {
        if self.inner.config.ordered_sessions {
            task.session_id.as_deref()
        } else {
            None
        }
    }

    /// Key of a session's head.
    pub(super) fn session_key(&self, session: &str) -> String {
        format!("{}{session}", self.inner.keys.session_prefix)
    }

    /// Adds the session enqueue of a prepared task to `pipe`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push_session_enqueue(
        &self,
        pipe: &mut redis::Pipeline,
        session: &str,
        id: &str,
        prio: usize,
        idempotency: Option<&str>,
        due: Option<u64>,
        member: &str,
        envelope: &[u8],
    ) {
        let keys = &self.inner.keys;
        let head = self.session_key(session);
        let idem = match idempotency {
            Some(k) => format!("{}{k}", keys.idempotency_prefix),
            None => head.clone(),
        };
        let ttl = if idempotency.is_some() {
            self.inner.config.idempotency_ttl.as_millis() as u64
        } else {
            0
        };
        let mut inv = self.inner.scripts.session_enqueue.key(idem);
        inv.key(&head)
            .key(format!("{head}:waiting"))
            .key(&keys.sessions_waiting)
            .key(&keys.streams[prio])
            .key(&keys.delayed)
            .key(&keys.delayed_tasks)
            .arg(id)
            .arg(ttl)
            .arg(due.unwrap_or(0))
            .arg(member)
            .arg(envelope);
        pipe.invoke_script(&inv);
    }

    /// [`settle`](Self::settle) for the head of an ordered session: an ack
    /// or dead letter makes the next waiting task the head, atomically.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn settle_session(
        &self,
        lease: &Lease,
        session: &str,
        prio: usize,
        id: &str,
        action: &str,
        target: &str,
        payload: &[u8],
        extra: [&str; 4],
    ) -> Result<bool> {
        let keys = &self.inner.keys;
        let head = self.session_key(session);
        let mut inv = self.inner.scripts.session_settle.key(&keys.streams[prio]);
        inv.key(target);
        if action == "delay" {
            inv.key(&keys.delayed_tasks);
        }
        inv.key(&head)
            .key(format!("{head}:waiting"))
            .key(&keys.sessions_waiting)
            .key(&keys.streams[..])
            .key(&keys.delayed)
            .key(&keys.delayed_tasks)
            .arg(&self.inner.config.consumer_group)
            .arg(&self.inner.consumer)
            .arg(id)
            .arg(lease.fence())
            .arg(action)
            .arg(payload)
            .arg(&extra[..])
            .arg(lease.task().id.as_str());
        let done: i64 = self.eval(&inv, action).await?;
        Ok(done == 1)
    }

    /// Tasks waiting behind session heads (0 without ordered sessions).
    pub(super) async fn session_waiting(&self) -> Result<u64> {
        if !self.inner.config.ordered_sessions {
            return Ok(0);
        }
        let mut conn = self.inner.redis.connection();
        let n: Option<i64> = redis::cmd("GET")
            .arg(&self.inner.keys.sessions_waiting)
            .query_async(&mut conn)
            .await
            .map_err(|e| agentscale_redis::map_error("GET", e))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }
}
