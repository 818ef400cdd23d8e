//! The Lua scripts that make multi-key operations atomic. Every script names
//! all its keys in `KEYS`, and all keys of one queue share the hash tag
//! `{queue}`, so the scripts run unchanged on Redis Cluster.

/// Moves up to `promote_limit` due members of the delayed set (KEYS[4]) to
/// their priority stream (KEYS[1..3]), envelopes from the hash (KEYS[5]).
/// Expects the locals `now` and `promote_limit`; leaves `due` (the members
/// moved). Shared by [`LEASE`] and [`PROMOTE`].
macro_rules! promote_lua {
    () => {
        r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, promote_limit)
for _, m in ipairs(due) do
  local p = tonumber(string.sub(m, 1, 1))
  if p == nil or p < 0 or p > 2 then p = 1 end
  local env = redis.call('HGET', KEYS[5], m)
  if env then
    redis.call('HDEL', KEYS[5], m)
  else
    -- A member written before envelopes moved to the hash: digit + envelope.
    env = string.sub(m, 2)
  end
  redis.call('XADD', KEYS[p + 1], '*', 'task', env)
  redis.call('ZREM', KEYS[4], m)
end
"#
    };
}

/// Promotes due delayed tasks only: what a queue keeper runs while no worker
/// leases.
///
/// KEYS: stream high, normal, low, delayed zset, delayed envelopes hash.
/// ARGV: now_ms, promote_limit. Returns the number of tasks moved.
pub(crate) const PROMOTE: &str = concat!(
    r#"
local now = tonumber(ARGV[1])
local promote_limit = tonumber(ARGV[2])
"#,
    promote_lua!(),
    r#"
return #due
"#
);

/// Promote due delayed tasks, optionally reclaim expired leases
/// (`XAUTOCLAIM`), then read new entries highest priority first.
///
/// KEYS: stream high, normal, low, delayed zset, delayed envelopes hash.
/// ARGV: group, consumer, max, now_ms, reclaim (0/1), min_idle_ms,
///       promote_limit, cursor high, cursor normal, cursor low.
/// Returns `{next_due_ms or -1, cursor0, cursor1, cursor2, (prio, id,
/// deliveries, raw flag, payload)*}`.
pub(crate) const LEASE: &str = concat!(
    r#"
local group, consumer = ARGV[1], ARGV[2]
local max = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local reclaim = ARGV[5] == '1'
local min_idle = ARGV[6]
local promote_limit = tonumber(ARGV[7])
"#,
    promote_lua!(),
    r#"
local out = {-1, ARGV[8], ARGV[9], ARGV[10]}
local n = 0
local function push(p, e, deliveries)
  local fields = e[2]
  local payload = nil
  if type(fields) == 'table' then
    for i = 1, #fields, 2 do
      if fields[i] == 'task' then payload = fields[i + 1] end
    end
  end
  local raw = 0
  if payload == nil then
    raw = 1
    if type(fields) == 'table' then payload = table.concat(fields, ' ') else payload = '' end
  end
  out[#out + 1] = p
  out[#out + 1] = e[1]
  out[#out + 1] = deliveries
  out[#out + 1] = raw
  out[#out + 1] = payload
  n = n + 1
end
if reclaim then
  for p = 0, 2 do
    if n >= max then break end
    local r = redis.pcall('XAUTOCLAIM', KEYS[p + 1], group, consumer, min_idle, ARGV[8 + p], 'COUNT', max - n)
    if type(r) == 'table' and r.err == nil then
      out[2 + p] = r[1]
      for _, e in ipairs(r[2]) do
        if type(e) == 'table' and e[2] then
          local pend = redis.call('XPENDING', KEYS[p + 1], group, e[1], e[1], 1)
          local d = 2
          if pend[1] then d = pend[1][4] end
          push(p, e, d)
        end
      end
    end
  end
end
for p = 0, 2 do
  if n >= max then break end
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - n, 'STREAMS', KEYS[p + 1], '>')
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'NOGROUP', 1, true) then
      redis.pcall('XGROUP', 'CREATE', KEYS[p + 1], group, '0', 'MKSTREAM')
      r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - n, 'STREAMS', KEYS[p + 1], '>')
    else
      return redis.error_reply(r.err)
    end
  end
  if type(r) == 'table' and r[1] then
    for _, e in ipairs(r[1][2]) do push(p, e, 1) end
  end
end
local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if nxt[2] then out[1] = tonumber(nxt[2]) end
return out
"#
);

/// Settles or renews one lease, fenced: only if the pending entry is still
/// owned by `consumer` with delivery count `fence`.
///
/// KEYS: stream, target (stream, delayed zset or dead-letter stream; the
/// stream itself for ack/extend), for `delay` also the delayed envelopes hash.
/// ARGV: group, consumer, id, fence, action, payload, a1, a2, a3, a4.
/// Actions: `ack`; `extend` (a1 = idle ms to set); `xadd` (payload to
/// target stream); `delay` (HSET hash a2 payload, ZADD target a1 a2);
/// `dead` (XADD target with reason a1, attempts a2, dead_at a3, raw flag a4).
/// Returns 1 when done, 0 when the lease is lost.
pub(crate) const SETTLE: &str = r#"
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local pend = redis.pcall('XPENDING', KEYS[1], group, id, id, 1)
if type(pend) ~= 'table' or pend.err then return 0 end
local e = pend[1]
if not e or e[2] ~= consumer or e[4] ~= tonumber(ARGV[4]) then return 0 end
local action = ARGV[5]
if action == 'extend' then
  redis.call('XCLAIM', KEYS[1], group, consumer, 0, id, 'IDLE', ARGV[7], 'JUSTID')
  return 1
elseif action == 'xadd' then
  redis.call('XADD', KEYS[2], '*', 'task', ARGV[6])
elseif action == 'delay' then
  redis.call('HSET', KEYS[3], ARGV[8], ARGV[6])
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[8])
elseif action == 'dead' then
  redis.call('XADD', KEYS[2], '*', 'task', ARGV[6], 'reason', ARGV[7], 'attempts', ARGV[8],
    'dead_at', ARGV[9], 'raw', ARGV[10])
end
redis.call('XACK', KEYS[1], group, id)
redis.call('XDEL', KEYS[1], id)
return 1
"#;

/// Acks many leases at once, each fenced like [`SETTLE`].
///
/// KEYS: stream high, normal, low. ARGV: group, consumer, then
/// (prio, id, fence) triples. Returns one 1/0 per triple.
pub(crate) const ACK_BATCH: &str = r#"
local group, consumer = ARGV[1], ARGV[2]
local out = {}
local per = {{}, {}, {}}
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then return nil end
  return tonumber(ms), tonumber(seq)
end
local function less(ams, aseq, bms, bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
for i = 3, #ARGV, 3 do
  local p = tonumber(ARGV[i]) + 1
  local idx = #out + 1
  out[idx] = 0
  local l = per[p]
  l[#l + 1] = {ARGV[i + 1], tonumber(ARGV[i + 2]), idx}
end
for p = 1, 3 do
  local l = per[p]
  if #l > 0 then
    -- One XPENDING over the batch's id range, filtered to this consumer,
    -- instead of one lookup per id.
    local lo, hi, lo_ms, lo_seq, hi_ms, hi_seq = nil, nil, 0, 0, 0, 0
    for _, t in ipairs(l) do
      local ms, seq = parse(t[1])
      if ms then
        if lo == nil or less(ms, seq, lo_ms, lo_seq) then lo, lo_ms, lo_seq = t[1], ms, seq end
        if hi == nil or less(hi_ms, hi_seq, ms, seq) then hi, hi_ms, hi_seq = t[1], ms, seq end
      end
    end
    local pending = {}
    local complete = true
    if lo then
      local limit = #l + 1000
      local r = redis.pcall('XPENDING', KEYS[p], group, lo, hi, limit, consumer)
      if type(r) == 'table' and r.err == nil then
        for _, e in ipairs(r) do pending[e[1]] = e[4] end
        complete = #r < limit
      end
    end
    local ids = {}
    for _, t in ipairs(l) do
      local d = pending[t[1]]
      if d == nil and not complete then
        local one = redis.pcall('XPENDING', KEYS[p], group, t[1], t[1], 1)
        if type(one) == 'table' and one.err == nil and one[1] and one[1][2] == consumer then d = one[1][4] end
      end
      if d ~= nil and d == t[2] then
        out[t[3]] = 1
        ids[#ids + 1] = t[1]
        pending[t[1]] = -1
      end
    end
    local i = 1
    while i <= #ids do
      local j = math.min(i + 999, #ids)
      redis.call('XACK', KEYS[p], group, unpack(ids, i, j))
      redis.call('XDEL', KEYS[p], unpack(ids, i, j))
      i = j + 1
    end
  end
end
return out
"#;

/// Idempotent enqueue: remember the key (SET NX PX) and add the task, or
/// report the id stored first.
///
/// KEYS: idempotency key, target (stream or delayed zset), delayed
/// envelopes hash.
/// ARGV: task id, ttl ms, mode (`x` stream / `z` zset), payload, score,
/// delayed member.
/// Returns nil when stored, else the first task id.
pub(crate) const ENQUEUE_IDEMPOTENT: &str = r#"
local prev = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if prev then return prev end
if ARGV[3] == 'z' then
  redis.call('HSET', KEYS[3], ARGV[6], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
else
  redis.call('XADD', KEYS[2], '*', 'task', ARGV[4])
end
return false
"#;

/// Stores a delayed task: envelope in the hash under `member`, `member` in
/// the sorted set at the due time. One script, so a promotion never sees a
/// member without its envelope.
///
/// KEYS: delayed zset, delayed envelopes hash. ARGV: member, due ms, envelope.
pub(crate) const DELAY: &str = r#"
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"#;

/// Counts by state.
///
/// KEYS: stream high, normal, low, delayed zset, dead stream. ARGV: group,
/// now ms. Returns `{ready, in_flight, delayed, dead, oldest ready ms or -1,
/// delayed and due}`.
pub(crate) const DEPTH: &str = r#"
local group = ARGV[1]
local ready, inflight, oldest = 0, 0, -1
for p = 1, 3 do
  local len = redis.call('XLEN', KEYS[p])
  if len > 0 then
    local pc = 0
    local last = '0-0'
    local groups = redis.pcall('XINFO', 'GROUPS', KEYS[p])
    if type(groups) == 'table' and groups.err == nil then
      for _, g in ipairs(groups) do
        local name, pending, ld = nil, 0, '0-0'
        for i = 1, #g, 2 do
          if g[i] == 'name' then name = g[i + 1]
          elseif g[i] == 'pending' then pending = g[i + 1]
          elseif g[i] == 'last-delivered-id' then ld = g[i + 1] end
        end
        if name == group then pc = pending; last = ld end
      end
    end
    ready = ready + math.max(len - pc, 0)
    inflight = inflight + pc
    local first = redis.call('XRANGE', KEYS[p], '(' .. last, '+', 'COUNT', 1)
    if first[1] then
      local ms = tonumber(string.match(first[1][1], '^(%d+)'))
      if ms and (oldest == -1 or ms < oldest) then oldest = ms end
    end
  end
end
return {ready, inflight, redis.call('ZCARD', KEYS[4]), redis.call('XLEN', KEYS[5]), oldest,
  redis.call('ZCOUNT', KEYS[4], '-inf', ARGV[2])}
"#;

/// Moves one dead letter back to a ready stream.
///
/// KEYS: dead stream, target stream. ARGV: dead-letter id, envelope.
/// Returns 1 when moved, 0 when the dead letter does not exist.
pub(crate) const REPLAY: &str = r#"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'task', ARGV[2])
return 1
"#;

/// Up to ARGV[2] undelivered entries (after the group's last-delivered id),
/// high priority first, as {priority index, entry id, envelope}. Reads only.
pub(crate) const PEEK: &str = r#"
local group, max = ARGV[1], tonumber(ARGV[2])
local out = {}
for p = 1, 3 do
  if #out >= max then break end
  local last = '0-0'
  local groups = redis.pcall('XINFO', 'GROUPS', KEYS[p])
  if type(groups) == 'table' and groups.err == nil then
    for _, g in ipairs(groups) do
      local name, ld = nil, '0-0'
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1]
        elseif g[i] == 'last-delivered-id' then ld = g[i + 1] end
      end
      if name == group then last = ld end
    end
  end
  local entries = redis.call('XRANGE', KEYS[p], '(' .. last, '+', 'COUNT', max - #out)
  for _, e in ipairs(entries) do
    local task, f = '', e[2]
    for i = 1, #f, 2 do
      if f[i] == 'task' then task = f[i + 1] end
    end
    table.insert(out, {p - 1, e[1], task})
  end
end
return out
"#;
