"""Lua sources for the Redis adapter: every multi-key change is one script.

Scripts take the key prefix as ARGV[1] and build key names from it (the
layout is documented on `RedisStorage`). They never decode user values:
inputs, outputs, step records, event and message bodies arrive as JSON text
encoded by Python and are stored verbatim, so cjson's lossy round trip
(`[]` becoming `{}`, 14-digit numbers) never touches them. Numbers arrive as
decimal strings for the same reason.

Each writing script takes the prefix and the epoch read by `open()` as ARGV[1]
and ARGV[2] and first checks the marker key `{prefix}:meta`: if it vanished
or holds another epoch (FLUSHALL/FLUSHDB, a restart without persistence, a
failover to an empty replica — also when another process has since re-created
the marker) the script returns a `DQLOST` error instead of acting on an empty
queue.
A script does all its checks before its first write, because Redis does not
roll a script back when it fails half-way.
"""

from __future__ import annotations

from .base import CLAIMABLE

#: A Lua table literal of the statuses `claim` takes (base.CLAIMABLE).
_CLAIMABLE_LUA = "{" + ", ".join(f"{status} = true" for status in CLAIMABLE) + "}"

#: Error-reply codes the adapter maps to exceptions.
LOST = "DQLOST"
DUPLICATE = "DQDUP"

_CHECK = """
local P = ARGV[1]
local epoch = redis.call('HGET', P .. ':meta', 'epoch')
if epoch ~= ARGV[2] then
  if not epoch then return redis.error_reply('DQLOST the marker key ' .. P .. ':meta is missing') end
  return redis.error_reply('DQLOST the marker key ' .. P .. ':meta was re-created since open()')
end
"""

_PRELUDE = (
    _CHECK
    + """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(n) return string.format('%.0f', n) end
local function ekey(id) return P .. ':exec:' .. id end
"""
)

_BULK = """
local function bulk(cmd, key, args)
  -- Redis' Lua caps unpack() at a few thousand values: send long argument lists in slices.
  local i = 1
  while i <= #args do
    local j = math.min(i + 999, #args)
    redis.call(cmd, key, unpack(args, i, j))
    i = j + 1
  end
end
"""

_INDEX = (
    "local CLAIMABLE = "
    + _CLAIMABLE_LUA
    + """
-- Indexes of one execution: status set, job set; when CLAIMABLE, the pending
-- lane zset of its (priority, job) scored by run_at (ties by id) and the lanes
-- zset; when running, the running zset (score lease_until).
local function unindex(id, status, job, prio)
  if status then
    redis.call('SREM', P .. ':status:' .. status, id)
    if CLAIMABLE[status] then
      local lane = prio .. ':' .. (job or '')
      local pk = P .. ':pending:' .. lane
      redis.call('ZREM', pk, id)
      if redis.call('ZCARD', pk) == 0 then redis.call('ZREM', P .. ':lanes', lane) end
    elseif status == 'running' then
      redis.call('ZREM', P .. ':running', id)
    end
  end
  if job then redis.call('SREM', P .. ':job:' .. job, id) end
end

local function index(id)
  local v = redis.call('HMGET', ekey(id), 'status', 'job_name', 'priority', 'run_at', 'lease_until')
  local status, job, prio = v[1], v[2], v[3] or '0'
  if status then
    redis.call('SADD', P .. ':status:' .. status, id)
    if CLAIMABLE[status] then
      local lane = prio .. ':' .. (job or '')
      redis.call('ZADD', P .. ':pending:' .. lane, v[4] or '0', id)
      redis.call('ZADD', P .. ':lanes', prio, lane)
    elseif status == 'running' then
      redis.call('ZADD', P .. ':running', v[5] or '+inf', id)
    end
  end
  if job then redis.call('SADD', P .. ':job:' .. job, id) end
  return status
end

-- Time and lineage indexes (schema 2), for the dashboard's windows and trees:
-- zsets at:created|started|completed scored by that time (a field that becomes
-- absent leaves its zset), sets children:{parent_id}, tree:{root_id} and
-- replays:{replay_of} (written once: these fields are set at the insert).
local TIMES = {created_at = 'created', started_at = 'started', completed_at = 'completed'}
local LINKS = {parent_id = 'children', root_id = 'tree', replay_of = 'replays'}
local function index_field(id, field, value)
  if TIMES[field] then
    local key = P .. ':at:' .. TIMES[field]
    if value then redis.call('ZADD', key, value, id) else redis.call('ZREM', key, id) end
  elseif LINKS[field] and value then
    redis.call('SADD', P .. ':' .. LINKS[field] .. ':' .. value, id)
  end
end
local INDEXED_MORE = {'created_at', 'started_at', 'completed_at', 'parent_id', 'root_id', 'replay_of'}
local function index_more(id, fields)  -- fields: the inserted record's {field: text}
  for _, field in ipairs(INDEXED_MORE) do
    local value = fields[field]
    if value and value ~= cjson.null then index_field(id, field, value) end
  end
end
local function unindex_more(id)
  local v = redis.call('HMGET', ekey(id), unpack(INDEXED_MORE))
  for i, field in ipairs(INDEXED_MORE) do
    if TIMES[field] then redis.call('ZREM', P .. ':at:' .. TIMES[field], id)
    elseif v[i] then redis.call('SREM', P .. ':' .. LINKS[field] .. ':' .. v[i], id) end
  end
end

"""
)

_LANES = """
-- The lanes a claim may take from, highest priority first: members of
-- the lanes zset are 'priority:job' (the priority is an integer, so the first
-- ':' splits). ARGV[filters] is JSON {"only": [job]|null, "exclude": [job]}.
local function lanes_for(filters)
  local f = cjson.decode(filters)
  local only, excluded = nil, {}
  if f.only ~= cjson.null then
    only = {}
    for _, j in ipairs(f.only) do only[j] = true end
  end
  for _, j in ipairs(f.exclude) do excluded[j] = true end
  local out = {}
  for _, lane in ipairs(redis.call('ZREVRANGE', P .. ':lanes', 0, -1)) do
    local c = string.find(lane, ':', 1, true)
    local job = string.sub(lane, c + 1)
    if (only == nil or only[job]) and not excluded[job] then
      out[#out + 1] = {key = P .. ':pending:' .. lane, lane = lane,
                       prio = tonumber(string.sub(lane, 1, c - 1))}
    end
  end
  return out
end
"""

# ARGV: prefix, epoch, the batch's shape as JSON, then three texts of JSON
# bodies joined by newlines (compact ASCII JSON never holds a raw newline): the
# bodies the shape refers to by number, the steps' and the events' in batch
# order (see `RedisStorage._encode_batch`). So JSON texts are neither escaped
# twice nor parsed by cjson, and the shape stays small and flat:
#   f fences [id, token, ...], x inserts [[id, {field: text|body}]],
#   u updates [[id, {field: text|body|null}, token|null, [status]|null]],
#   s steps [execution_id, key, ...], e events [execution_id|null, ...],
#   m messages [[pipe, body]], k state [[key, body|null]].
# Returns {applied 0/1 per update, refused ids, [id, control, ...], first event seq}.
COMMIT = (
    _PRELUDE
    + _BULK
    + _INDEX
    + """
local b = cjson.decode(ARGV[3])
local null = cjson.null
local function split(blob)
  local out, pos = {}, 1
  if #blob == 0 then return out end
  while true do
    local nl = string.find(blob, '\\n', pos, true)
    if not nl then out[#out + 1] = string.sub(blob, pos); return out end
    out[#out + 1] = string.sub(blob, pos, nl - 1)
    pos = nl + 1
  end
end
local B, step_bodies, event_bodies = split(ARGV[4]), split(ARGV[5]), split(ARGV[6])
-- State preconditions (Batch.expect) come first: a conflict writes nothing at all.
for _, kv in ipairs(b.c or {}) do
  local cur = redis.call('HGET', P .. ':state', kv[1])
  if kv[2] == cjson.null then
    if cur then return {{}, {}, {}, 0, 1} end
  elseif cur ~= kv[2] then
    return {{}, {}, {}, 0, 1}
  end
end
local function fields_args(fields)  -- HSET arguments and the fields to delete
  local sets, dels = {}, {}
  for k, v in pairs(fields) do
    if v == null then
      dels[#dels + 1] = k
    else
      sets[#sets + 1] = k
      sets[#sets + 1] = type(v) == 'number' and B[v] or v
    end
  end
  return sets, dels
end

local refused, refused_list, fenced_ok, controls_at = {}, {}, {}, {}
for n = 1, #b.f, 2 do
  local id = b.f[n]
  local cur = redis.call('HMGET', ekey(id), 'token', 'control')
  if cur[1] ~= b.f[n + 1] then
    refused[id] = true
    refused_list[#refused_list + 1] = id
  else
    fenced_ok[#fenced_ok + 1] = id
    controls_at[id] = cur[2]
  end
end
for _, x in ipairs(b.x) do
  if redis.call('EXISTS', ekey(x[1])) == 1 then
    return redis.error_reply('DQDUP ' .. x[1])
  end
end

local wake = false
for _, x in ipairs(b.x) do
  redis.call('HSET', ekey(x[1]), unpack((fields_args(x[2]))))
  redis.call('ZADD', P .. ':ids', 0, x[1])
  index_more(x[1], x[2])
  if CLAIMABLE[index(x[1])] then wake = true end
end

local INDEXED = {status = true, job_name = true, priority = true, run_at = true, lease_until = true}
local applied = {}
for i, u in ipairs(b.u) do
  local id, ok = u[1], false
  if not refused[id] then
    local cur = redis.call('HMGET', ekey(id), 'token', 'status', 'job_name', 'priority')
    if cur[2] then
      ok = u[3] == null or cur[1] == u[3]
      if ok and u[4] ~= null then
        ok = false
        for _, s in ipairs(u[4]) do if s == cur[2] then ok = true end end
      end
    end
    if ok then
      local sets, dels = fields_args(u[2])
      if #sets > 0 then redis.call('HSET', ekey(id), unpack(sets)) end
      if #dels > 0 then redis.call('HDEL', ekey(id), unpack(dels)) end
      local reindex = false
      for k in pairs(u[2]) do
        if INDEXED[k] then reindex = true end
        if TIMES[k] or LINKS[k] then index_field(id, k, u[2][k] ~= null and u[2][k] or nil) end
        if k == 'control' then controls_at[id] = nil end  -- read again below
      end
      if reindex then
        unindex(id, cur[2], cur[3], cur[4] or '0')
        if CLAIMABLE[index(id)] then wake = true end
      end
    end
  end
  applied[i] = ok and 1 or 0
end

local step_args = {}
for n = 1, #b.s, 2 do
  local id = b.s[n]
  if not refused[id] then
    local args = step_args[id]
    if not args then args = {}; step_args[id] = args end
    args[#args + 1] = b.s[n + 1]
    args[#args + 1] = step_bodies[(n + 1) / 2]
  end
end
for id, args in pairs(step_args) do bulk('HSET', P .. ':steps:' .. id, args) end

local first = 0
local kept = 0
for _, id in ipairs(b.e) do
  if id == null or not refused[id] then kept = kept + 1 end
end
if kept > 0 then
  first = redis.call('INCRBY', P .. ':seq:events', kept) - kept + 1
  local seq, bodies, per = first, {}, {}
  for n, id in ipairs(b.e) do
    if id == null or not refused[id] then
      bodies[#bodies + 1] = seq
      bodies[#bodies + 1] = event_bodies[n]
      if id ~= null then
        local list = per[id]
        if not list then list = {}; per[id] = list end
        list[#list + 1] = seq
        list[#list + 1] = seq
      end
      seq = seq + 1
    end
  end
  bulk('HSET', P .. ':events', bodies)
  for id, list in pairs(per) do bulk('ZADD', P .. ':events:' .. id, list) end
end

if #b.m > 0 then
  local seq = redis.call('INCRBY', P .. ':seq:messages', #b.m) - #b.m
  for _, m in ipairs(b.m) do
    seq = seq + 1
    redis.call('ZADD', P .. ':pipe:' .. m[1], seq, seq .. ' ' .. B[m[2]])
  end
  wake = true
end

for _, kv in ipairs(b.k) do
  -- a slot handed to a step waiting in another process: wake that process (a head
  -- with a step, `id|key`, among its holders; see conditions.hands_a_step_slot)
  if kv[2] ~= null and string.sub(kv[1], 1, 6) == 'slots:' and string.sub(B[kv[2]], 1, 1) == '{'
      and string.find(B[kv[2]], '|', 1, true) then wake = true end
  if kv[2] == null then
    redis.call('HDEL', P .. ':state', kv[1])
    redis.call('ZREM', P .. ':state-keys', kv[1])
  else
    redis.call('HSET', P .. ':state', kv[1], B[kv[2]])
    redis.call('ZADD', P .. ':state-keys', 0, kv[1])
  end
end

local controls = {}
for _, id in ipairs(fenced_ok) do
  controls[#controls + 1] = id
  local control = controls_at[id]
  if control == nil then control = redis.call('HGET', ekey(id), 'control') end
  controls[#controls + 1] = control
end
if wake then redis.call('PUBLISH', P .. ':wakeup', b.w or 'commit') end
return {applied, refused_list, controls, first}
"""
)

# ARGV: prefix, epoch, worker_id, limit, lease_ms, job filters (see _LANES).
# Pending executions live in one zset per (priority, job) lane, scored by
# run_at (equal scores order by member, i.e. by id). Lanes are taken from the
# highest priority down; lanes of equal priority are merged by (run_at, id).
# So the claim order is priority desc, run_at, id without scanning the backlog,
# and job filters (paused jobs, another queue's jobs) skip whole lanes.
# Returns the claimed executions as HGETALL lists.
CLAIM = (
    _PRELUDE
    + _BULK
    + _LANES
    + """
local worker, limit, lease = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local now_s, until_s = num(now), num(now + lease)

local function before(a, b)  -- (run_at, id), ids in byte order like Python's str order
  if a.score ~= b.score then return a.score < b.score end
  local x, y = a.id, b.id
  for k = 1, math.min(#x, #y) do
    local cx, cy = string.byte(x, k), string.byte(y, k)
    if cx ~= cy then return cx < cy end
  end
  return #x < #y
end

local out, claimed, running, was = {}, {}, {}, {}
-- Claim one execution: one read and one write; the record is returned patched.
local function take(id)
  local ek = ekey(id)
  local rec = redis.call('HGETALL', ek)
  if #rec == 0 then return false end  -- a dangling index entry: only dropped
  local set = {status = 'running', worker_id = worker, lease_until = until_s, started_at = now_s}
  local seen = {}
  for n = 1, #rec, 2 do
    local field = rec[n]
    if field == 'token' then
      set.token = num(tonumber(rec[n + 1]) + 1)
    elseif field == 'status' then
      local list = was[rec[n + 1]]
      if not list then list = {}; was[rec[n + 1]] = list end
      list[#list + 1] = id
    elseif field == 'started_at' then
      set.started_at = nil  -- kept as it was
    end
    if set[field] then rec[n + 1] = set[field]; seen[field] = true end
  end
  local args = {}
  for field, value in pairs(set) do
    args[#args + 1] = field
    args[#args + 1] = value
    if not seen[field] then rec[#rec + 1] = field; rec[#rec + 1] = value end
  end
  redis.call('HSET', ek, unpack(args))
  if set.started_at then redis.call('ZADD', P .. ':at:started', now_s, id) end
  out[#out + 1] = rec
  claimed[#claimed + 1] = id
  running[#running + 1] = until_s
  running[#running + 1] = id
  return true
end

local lanes = lanes_for(ARGV[6])
local i = 1
while i <= #lanes and #out < limit do
  local j = i
  while j < #lanes and lanes[j + 1].prio == lanes[i].prio do j = j + 1 end
  local again = true
  while again and #out < limit do
    local need = limit - #out
    -- The due heads of each lane of this priority, merged by (run_at, id).
    local pages, pos = {}, {}
    for k = i, j do
      pages[k] = redis.call('ZRANGEBYSCORE', lanes[k].key, '-inf', now_s, 'WITHSCORES', 'LIMIT', 0, need)
      pos[k] = 1
    end
    local picked = {}
    while #picked < need do
      local best, best_k = nil, nil
      for k = i, j do
        local page, n = pages[k], pos[k]
        if n < #page then
          local head = {id = page[n], score = tonumber(page[n + 1])}
          if not best or before(head, best) then best, best_k = head, k end
        end
      end
      if not best then break end
      pos[best_k] = pos[best_k] + 2
      picked[#picked + 1] = best.id
    end
    again = false  -- only a dropped dangling entry leaves room to look again
    for _, id in ipairs(picked) do
      if not take(id) then again = true end
    end
    for k = i, j do
      if pos[k] > 1 then
        local ids = {}
        for n = 1, pos[k] - 1, 2 do ids[#ids + 1] = pages[k][n] end
        redis.call('ZREM', lanes[k].key, unpack(ids))
      end
    end
  end
  for k = i, j do
    if redis.call('ZCARD', lanes[k].key) == 0 then redis.call('ZREM', P .. ':lanes', lanes[k].lane) end
  end
  i = j + 1
end
if #claimed > 0 then
  for status, ids in pairs(was) do bulk('SREM', P .. ':status:' .. status, ids) end
  bulk('SADD', P .. ':status:running', claimed)
  bulk('ZADD', P .. ':running', running)
end
return out
"""
)

# ARGV: prefix, epoch, worker_id, lease_ms, ids... Returns [id, control, ...] for the held ones.
RENEW = (
    _PRELUDE
    + """
local worker = ARGV[3]
local until_s = num(now_ms() + tonumber(ARGV[4]))
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local v = redis.call('HMGET', ekey(id), 'status', 'worker_id', 'control')
  if v[1] == 'running' and v[2] == worker then
    redis.call('HSET', ekey(id), 'lease_until', until_s)
    redis.call('ZADD', P .. ':running', until_s, id)
    out[#out + 1] = id
    out[#out + 1] = v[3]
  end
end
return out
"""
)

# ARGV: prefix, epoch, dead worker ids... Returns the ids put back to pending.
RECLAIM = (
    _PRELUDE
    + _INDEX
    + """
local now_s = num(now_ms())
local found, out = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', '(' .. now_s)) do
  found[id] = true
  out[#out + 1] = id
end
if #ARGV > 2 then
  local dead = {}
  for i = 3, #ARGV do dead[ARGV[i]] = true end
  for _, id in ipairs(redis.call('ZRANGE', P .. ':running', 0, -1)) do
    if not found[id] and dead[redis.call('HGET', ekey(id), 'worker_id') or ''] then
      found[id] = true
      out[#out + 1] = id
    end
  end
end
local done = {}
for _, id in ipairs(out) do
  local v = redis.call('HMGET', ekey(id), 'status', 'job_name', 'priority')
  if v[1] == 'running' then
    unindex(id, v[1], v[2], v[3] or '0')
    redis.call('HSET', ekey(id), 'status', 'pending')
    redis.call('HDEL', ekey(id), 'worker_id', 'lease_until')
    redis.call('HINCRBY', ekey(id), 'token', 1)
    index(id)
    done[#done + 1] = id
  else
    redis.call('ZREM', P .. ':running', id)  -- a dangling index entry
  end
end
if #done > 0 then redis.call('PUBLISH', P .. ':wakeup', 'reclaim') end
return done
"""
)

# ARGV: prefix, epoch, then execution ids. Deletes the terminal ones with their
# steps and events (retention); returns the ids deleted.
DELETE = (
    _PRELUDE
    + _INDEX
    + _BULK
    + """
local TERMINAL = {completed = true, failed = true, cancelled = true}
local gone, seqs = {}, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local v = redis.call('HMGET', ekey(id), 'status', 'job_name', 'priority')
  if v[1] and TERMINAL[v[1]] then
    unindex(id, v[1], v[2], v[3] or '0')
    unindex_more(id)
    redis.call('ZREM', P .. ':ids', id)
    redis.call('DEL', ekey(id), P .. ':steps:' .. id)
    for _, seq in ipairs(redis.call('ZRANGE', P .. ':events:' .. id, 0, -1)) do seqs[#seqs + 1] = seq end
    redis.call('DEL', P .. ':events:' .. id)
    gone[#gone + 1] = id
  end
end
bulk('HDEL', P .. ':events', seqs)
return gone
"""
)

# ARGV: prefix, epoch, worker_id, info JSON. Stamps the heartbeat with the server clock.
HEARTBEAT = (
    _PRELUDE
    + """
redis.call('HSET', P .. ':workers', ARGV[3], ARGV[4])
redis.call('ZADD', P .. ':heartbeats', num(now_ms()), ARGV[3])
return 1
"""
)

# ARGV: prefix, schema version, a fresh epoch. Creates the marker key if absent;
# returns the stored schema version and epoch.
OPEN = """
local P = ARGV[1]
if redis.call('EXISTS', P .. ':meta') == 0 then
  local t = redis.call('TIME')
  local created = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('HSET', P .. ':meta', 'created_at', created, 'schema', ARGV[2], 'epoch', ARGV[3])
end
return redis.call('HMGET', P .. ':meta', 'schema', 'epoch')
"""

# Read-only scripts: one round trip each, no marker check (an empty answer is honest).
# They take the same first two arguments as the others.

# ARGV: prefix, epoch (unused), the number of fields n, n field names, then execution
# ids. Returns one list per id: HGETALL's [field, value, ...] when n is 0, else
# HMGET's values of those fields. One reply for many executions: a client pipeline
# of one command each costs a reply to parse per execution.
FETCH = """
local P, n = ARGV[1], tonumber(ARGV[3])
local fields = {}
for i = 1, n do fields[i] = ARGV[3 + i] end
local out = {}
for i = 4 + n, #ARGV do
  local key = P .. ':exec:' .. ARGV[i]
  if n == 0 then out[#out + 1] = redis.call('HGETALL', key)
  else out[#out + 1] = redis.call('HMGET', key, unpack(fields)) end
end
return out
"""

# ARGV: prefix, epoch (unused), after_seq, limit, execution_id or ''. Returns [seq, body, ...].
READ_EVENTS = """
local P, after, limit, id = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local seqs
if id ~= '' then
  seqs = redis.call('ZRANGEBYSCORE', P .. ':events:' .. id, '(' .. ARGV[3], '+inf', 'LIMIT', 0, limit)
else
  local last = tonumber(redis.call('GET', P .. ':seq:events') or '0')
  seqs = {}
  local seq = math.max(after, 0) + 1
  while seq <= last and #seqs < limit do
    seqs[#seqs + 1] = string.format('%.0f', seq)
    seq = seq + 1
  end
end
if #seqs == 0 then return {} end
local out = {}
for i = 1, #seqs, 1000 do
  local j = math.min(i + 999, #seqs)
  local bodies = redis.call('HMGET', P .. ':events', unpack(seqs, i, j))
  for k = i, j do
    if bodies[k - i + 1] then out[#out + 1] = seqs[k]; out[#out + 1] = bodies[k - i + 1] end
  end
end
return out
"""

# ARGV: prefix, epoch, job filters (see _LANES).
# Returns the earliest run_at of a CLAIMABLE execution.
NEXT_DUE = (
    _CHECK
    + _LANES
    + """
local best = false
for _, lane in ipairs(lanes_for(ARGV[3])) do
  local head = redis.call('ZRANGE', lane.key, 0, 0, 'WITHSCORES')
  if #head > 0 and (not best or tonumber(head[2]) < best) then best = tonumber(head[2]) end
end
if best then return string.format('%.0f', best) end
return false
"""
)
