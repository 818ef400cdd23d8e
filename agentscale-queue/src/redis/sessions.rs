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

use super::{scripts, Shard};

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

/// Replays a dead letter into its session: it queues behind the head like a
/// new enqueue (or becomes the head), atomically with its removal from the
/// dead-letter stream.
///
/// KEYS: dead stream, session head, waiting list, waiting counter, target
/// stream. ARGV: dead-letter id, task id, delayed member, envelope.
/// Returns 1 when moved, 0 when the dead letter does not exist.
const SESSION_REPLAY: &str = r#"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX') then
  redis.call('XADD', KEYS[5], '*', 'task', ARGV[4])
else
  redis.call('RPUSH', KEYS[3], '0,' .. #ARGV[2] .. ',' .. #ARGV[3] .. ',' .. ARGV[2] .. ARGV[3] .. ARGV[4])
  redis.call('INCR', KEYS[4])
end
return 1
"#;

/// The settle script with the session advance after it.
pub(super) fn session_settle_script() -> Script {
    Script::new(&format!(
        "local function settle()\n{}\nend\n{}",
        scripts::SETTLE,
        SESSION_ADVANCE
    ))
}

impl Shard {
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

    /// The settle script invocation for the head of an ordered session: an
    /// ack or dead letter makes the next waiting task the head, atomically.
    #[allow(clippy::too_many_arguments)]
    fn session_settle_inv(
        &self,
        lease: &Lease,
        session: &str,
        prio: usize,
        id: &str,
        action: &str,
        target: &str,
        payload: &[u8],
        extra: [&str; 4],
    ) -> redis::ScriptInvocation<'_> {
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
        inv
    }

    /// [`settle`](Self::settle) for the head of an ordered session.
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
        let inv = self.session_settle_inv(lease, session, prio, id, action, target, payload, extra);
        let done: i64 = self.eval(&inv, action).await?;
        Ok(done == 1)
    }

    /// `ack_batch` on a queue with ordered sessions: one fenced settle
    /// script per lease (advancing its session), all in one pipeline.
    pub(super) async fn ack_batch_ordered(&self, leases: &[&Lease]) -> Vec<Result<()>> {
        let parsed: Vec<Result<(usize, &str)>> = leases
            .iter()
            .map(|l| super::reply::parse_receipt(l).map(|r| (r.prio, r.id)))
            .collect();
        let mut pipe = redis::pipe();
        pipe.load_script(&self.inner.scripts.session_settle).ignore();
        pipe.load_script(&self.inner.scripts.settle).ignore();
        let mut n = 0;
        for (l, p) in leases.iter().zip(&parsed) {
            let Ok((prio, id)) = p else { continue };
            let stream = &self.inner.keys.streams[*prio];
            match self.ordered_session(l.task()) {
                Some(s) => {
                    let inv = self.session_settle_inv(l, s, *prio, id, "ack", stream, b"", ["", "", "", ""]);
                    pipe.invoke_script(&inv);
                }
                None => {
                    let mut inv = self.inner.scripts.settle.key(stream);
                    inv.key(stream)
                        .arg(&self.inner.config.consumer_group)
                        .arg(&self.inner.consumer)
                        .arg(*id)
                        .arg(l.fence())
                        .arg("ack")
                        .arg(&b""[..])
                        .arg(&["", "", "", ""][..]);
                    pipe.invoke_script(&inv);
                }
            }
            n += 1;
        }
        let replies = if n > 0 {
            self.run_pipeline(&pipe, "ack_batch").await
        } else {
            Ok(Vec::new())
        };
        let mut codes = match &replies {
            Ok(v) if v.len() == n => Some(v.iter()),
            _ => None,
        };
        leases
            .iter()
            .zip(parsed)
            .map(|(l, p)| {
                p?;
                match (&replies, codes.as_mut().and_then(|c| c.next())) {
                    (Err(e), _) => Err(agentscale_core::Error::from_kind(e.kind(), e.to_string())),
                    (Ok(_), Some(v)) => match super::reply::value_i64(v) {
                        Some(1) => Ok(()),
                        Some(_) => Err(Self::lease_lost(l, "ack")),
                        None => Err(super::reply::bad_reply("ack_batch")),
                    },
                    (Ok(_), None) => Err(super::reply::bad_reply("ack_batch")),
                }
            })
            .collect()
    }

    /// Moves dead letter `id` (holding `task`, encoded as `envelope`) back
    /// into its session. 1 when moved, 0 when the dead letter is gone.
    pub(super) async fn replay_in_session(
        &self,
        id: &str,
        session: &str,
        task: &Task,
        envelope: &[u8],
    ) -> Result<i64> {
        let keys = &self.inner.keys;
        let head = self.session_key(session);
        let prio = task.priority.index();
        let script = Script::new(SESSION_REPLAY);
        let mut inv = script.key(&keys.dead);
        inv.key(&head)
            .key(format!("{head}:waiting"))
            .key(&keys.sessions_waiting)
            .key(&keys.streams[prio])
            .arg(id)
            .arg(task.id.as_str())
            .arg(super::delayed_member(prio, &task.id))
            .arg(envelope);
        self.eval(&inv, "replay").await
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
