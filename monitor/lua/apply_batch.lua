-- Apply a batch of task and worker records atomically, in one round trip.
--
-- KEYS[1]  task hash prefix            "{p}:task:"
-- KEYS[2]  tasks zset                  "{p}:tasks"
-- KEYS[3]  state index prefix          "{p}:tasks:state:"
-- KEYS[4]  name index prefix           "{p}:tasks:name:"
-- KEYS[5]  worker index prefix         "{p}:tasks:worker:"
-- KEYS[6]  group set prefix            "{p}:group:"
-- KEYS[7]  worker hash prefix          "{p}:worker:"
-- KEYS[8]  workers zset                "{p}:workers"
-- KEYS[9]  per-minute stats prefix     "{p}:stats:"
-- KEYS[10] change stream               "{p}:changes"
-- KEYS[11] task names zset             "{p}:names"
-- KEYS[12] timeline suffix             ":timeline"
-- KEYS[13] children suffix             ":children"
-- timeline entry: {s=state, t=time, h=host, src="signal,event", r=retries (when
--                  the report named its attempt), t2=second source's time}
-- ARGV[1]  JSON array of records, in arrival order:
--            task:   {k="t", id, s=state, r=rank, t=ts, ts=ts text, src, h=host,
--                     f={field=text}, keep=[fields kept when merged] or null,
--                     tf=timestamp field ("received") or null, rt=retries or null}
--            worker: {k="w", h=host, kind="online"|"heartbeat"|"offline", t, ts, src, f={}}
-- ARGV[2]  JSON config: ranks{state=rank}, custom_rank, ready_states[], now, max_tasks, max_age,
--          max_timeline, stream_maxlen, stats_ttl, dedup_window, purge_after,
--          rt_buckets[[upper bound, label]]
-- returns  {applied, duplicates, tasks_changed, trimmed}
--
-- The precedence rule is Celery's Task.event (celery/events/state.py): a
-- lower-precedence event never moves a task back, only merges fields (for a
-- late RECEIVED only MERGE_RULES fields); RETRY always applies. Ranks and the
-- kept-field lists are computed in Python; this script only compares them.

local records = cjson.decode(ARGV[1])
local cfg = cjson.decode(ARGV[2])
local ranks = cfg.ranks
local custom_rank = cfg.custom_rank
local ready = {}
for _, state in ipairs(cfg.ready_states) do ready[state] = true end

local P_TASK, K_TASKS, P_STATE, P_NAME, P_WORKER_IDX = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local P_GROUP, P_WORKER, K_WORKERS, P_STATS = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local K_CHANGES, K_NAMES, S_TIMELINE, S_CHILDREN = KEYS[10], KEYS[11], KEYS[12], KEYS[13]

local function rank_of(state)
  return ranks[state] or custom_rank
end

local tasks = {}        -- id -> cached task state for this batch
local order = {}        -- ids in first-touch order
local stats = {}        -- stats key -> {field -> increment}
local worker_incr = {}  -- hostname -> {field -> increment}
local applied, duplicates = 0, 0

local function bump(tbl, key, field, n)
  local t = tbl[key]
  if not t then t = {}; tbl[key] = t end
  t[field] = (t[field] or 0) + n
end

local function load(id)
  local t = tasks[id]
  if t then return t end
  local key = P_TASK .. id
  local cur = redis.call('HMGET', key, 'state', 'name', 'worker', 'retries')
  t = {key = key, id = id, exists = cur[1] ~= false, fields = {}, score = false}
  t.state = cur[1] or 'PENDING'
  t.orig_state = cur[1]
  t.name = cur[2] or false
  t.orig_name = t.name
  t.worker = cur[3] or false
  t.orig_worker = t.worker
  t.retries = tonumber(cur[4])
  t.timeline = false  -- loaded on first need
  t.tl_new = {}       -- entries to append
  t.tl_set = {}       -- index (1-based) -> entry to rewrite
  tasks[id] = t
  order[#order + 1] = id
  return t
end

local function timeline(t)
  if not t.timeline then
    t.timeline = {}
    if t.exists then
      local raw = redis.call('LRANGE', t.key .. S_TIMELINE, 0, -1)
      for i = 1, #raw do t.timeline[i] = cjson.decode(raw[i]) end
    end
    t.tl_base = #t.timeline
  end
  return t.timeline
end

local function has_source(entry, src)
  return string.find(',' .. entry.src .. ',', ',' .. src .. ',', 1, true) ~= nil
end

-- Is this transition already in the timeline? Returns 'exact' (same source
-- reported it again: a redelivery), the index of the entry another source
-- wrote for it (closest in time within the window), or nil.
local function find_duplicate(t, rec, retries, explicit)
  local tl = timeline(t)
  local best, best_dt = nil, cfg.dedup_window
  for i = 1, #tl do
    local e = tl[i]
    if e.s == rec.s then
      local dt = math.abs(e.t - rec.t)
      local same_attempt = (not explicit) or e.r == nil or e.r == retries
      if has_source(e, rec.src) then
        -- t2 is when the second source reported the transition it shares.
        if dt <= 0.0005 or (e.t2 and math.abs(e.t2 - rec.t) <= 0.0005) then
          return 'exact'
        end
        -- One attempt ends once: Celery itself reports some endings twice
        -- (a hard time limit fires task_failure from two places).
        if ready[rec.s] and same_attempt and dt <= best_dt then best, best_dt = i, dt end
      elseif dt <= best_dt and same_attempt then
        best, best_dt = i, dt
      end
    end
  end
  return best
end

local function apply_task(rec)
  local t = load(rec.id)
  local explicit = rec.rt ~= nil and rec.rt ~= cjson.null
  local dup = find_duplicate(t, rec, rec.rt, explicit)
  local tl = t.timeline
  if dup == 'exact' then
    duplicates = duplicates + 1
    return
  end
  local is_dup = dup ~= nil
  if is_dup then
    duplicates = duplicates + 1
    local e = tl[dup]
    if not has_source(e, rec.src) then
      e.src = e.src .. ',' .. rec.src
      e.t2 = rec.t
    end
    if e.h == nil and rec.h ~= '' then e.h = rec.h end
    if dup <= t.tl_base then t.tl_set[dup] = e end
  else
    local e = {s = rec.s, t = rec.t, src = rec.src}
    if rec.h ~= '' then e.h = rec.h end
    -- Only a report that names its attempt gets one: guessing from the task's
    -- current retries is wrong whenever the other source is ahead.
    if explicit then e.r = rec.rt end
    tl[#tl + 1] = e
    t.tl_new[#t.tl_new + 1] = e
  end

  -- Celery's rule. A duplicate never changes the state: the transition it
  -- reports was applied (or merged) when first seen.
  local merge_only = is_dup or (rec.s ~= 'RETRY' and t.state ~= 'RETRY'
                                and rec.r > rank_of(t.state))
  local f = rec.f
  if merge_only and not is_dup and rec.keep ~= cjson.null and rec.keep ~= nil then
    local kept = {}
    for _, name in ipairs(rec.keep) do
      if f[name] ~= nil then kept[name] = f[name] end
    end
    f = kept
  end
  if f.retries then
    -- Attempts only go forward: a late report of an earlier attempt (or the
    -- RETRY signal naming the attempt that failed) must not move it back.
    local r = tonumber(f.retries)
    if r and t.retries and r < t.retries then
      local copy = {}
      for k, v in pairs(f) do if k ~= 'retries' then copy[k] = v end end
      f = copy
    end
  end
  for k, v in pairs(f) do t.fields[k] = v end
  if rec.tf ~= cjson.null and rec.tf ~= nil then t.fields[rec.tf] = rec.ts end
  if f.name then t.name = f.name end
  if f.worker then t.worker = f.worker end
  if f.retries then t.retries = tonumber(f.retries) end
  if not t.score or rec.t > t.score then t.score = rec.t end
  t.changed = true
  applied = applied + 1

  if not merge_only then
    t.state = rec.s
    t.fields.state = rec.s
    t.fields.timestamp = rec.ts
    local minute = math.floor(rec.t / 60)
    local skey = P_STATS .. minute
    bump(stats, skey, 'state:' .. rec.s, 1)
    if t.name then bump(stats, skey, 'name:' .. t.name .. ':' .. rec.s, 1) end
    local runtime = tonumber(f.runtime)
    if runtime and (rec.s == 'SUCCESS' or rec.s == 'FAILURE') then
      local bucket = '+Inf'
      for _, b in ipairs(cfg.rt_buckets) do
        if runtime <= b[1] then bucket = b[2]; break end
      end
      bump(stats, skey, 'rt:' .. bucket, 1)
      bump(stats, skey, 'rtsum', runtime)
      if t.name then
        bump(stats, skey, 'rtsum:' .. t.name, runtime)
        bump(stats, skey, 'rtcnt:' .. t.name, 1)
      end
    end
    if t.worker then
      if rec.s == 'SUCCESS' then
        bump(worker_incr, t.worker, 'succeeded', 1)
      elseif rec.s == 'FAILURE' then
        bump(worker_incr, t.worker, 'failed', 1)
      elseif rec.s == 'RETRY' then
        bump(worker_incr, t.worker, 'retried', 1)
      end
    end
  end
end

local workers_touched = {}

local function apply_worker(rec)
  local key = P_WORKER .. rec.h
  local fields = {'hostname', rec.h}
  for k, v in pairs(rec.f) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  if rec.kind == 'offline' then
    fields[#fields + 1] = 'offline_at'
    fields[#fields + 1] = rec.ts
  else
    local last = tonumber(redis.call('HGET', key, 'last_heartbeat'))
    if not last or rec.t > last then
      fields[#fields + 1] = 'last_heartbeat'
      fields[#fields + 1] = rec.ts
    end
    if rec.kind == 'online' then
      fields[#fields + 1] = 'online_at'
      fields[#fields + 1] = rec.ts
    end
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('ZADD', K_WORKERS, 'GT', rec.t, rec.h)
  if not workers_touched[rec.h] then
    workers_touched[rec.h] = true
    redis.call('XADD', K_CHANGES, 'MAXLEN', '~', cfg.stream_maxlen, '*',
               'kind', 'worker', 'id', rec.h, 'event', rec.kind, 'ts', rec.ts)
  end
  applied = applied + 1
end

for _, rec in ipairs(records) do
  if rec.k == 't' then apply_task(rec) else apply_worker(rec) end
end

-- Write each touched task once: hash, timeline, indexes, links, change feed.
local tasks_changed = 0
for _, id in ipairs(order) do
  local t = tasks[id]
  if t.changed then
    tasks_changed = tasks_changed + 1
    local hset = {}
    for k, v in pairs(t.fields) do
      hset[#hset + 1] = k
      hset[#hset + 1] = v
    end
    if not t.exists and not t.fields.state then
      -- First record ever seen for this task was merge-only: impossible for
      -- a new task (PENDING ranks last), kept as a guard for the contract
      -- that every task hash has a state.
      hset[#hset + 1] = 'state'
      hset[#hset + 1] = t.state
    end
    if #hset > 0 then redis.call('HSET', t.key, unpack(hset)) end

    local tl_key = t.key .. S_TIMELINE
    for idx, e in pairs(t.tl_set) do
      redis.call('LSET', tl_key, idx - 1, cjson.encode(e))
    end
    if #t.tl_new > 0 then
      local encoded = {}
      for i, e in ipairs(t.tl_new) do encoded[i] = cjson.encode(e) end
      local len = redis.call('RPUSH', tl_key, unpack(encoded))
      if len > cfg.max_timeline then
        redis.call('LTRIM', tl_key, -cfg.max_timeline, -1)
      end
    end

    local score = t.score
    redis.call('ZADD', K_TASKS, 'GT', score, id)
    if t.exists then
      -- a late event must not put the task in a new index at an older time
      score = tonumber(redis.call('ZSCORE', K_TASKS, id)) or score
    end
    if t.orig_state and t.orig_state ~= t.state then
      redis.call('ZREM', P_STATE .. t.orig_state, id)
    end
    redis.call('ZADD', P_STATE .. t.state, 'GT', score, id)
    if t.name then
      if t.orig_name and t.orig_name ~= t.name then
        redis.call('ZREM', P_NAME .. t.orig_name, id)
      end
      redis.call('ZADD', P_NAME .. t.name, 'GT', score, id)
      if t.name ~= t.orig_name then redis.call('ZADD', K_NAMES, 'GT', score, t.name) end
    end
    if t.worker then
      if t.orig_worker and t.orig_worker ~= t.worker then
        redis.call('ZREM', P_WORKER_IDX .. t.orig_worker, id)
      end
      redis.call('ZADD', P_WORKER_IDX .. t.worker, 'GT', score, id)
      redis.call('ZADD', K_WORKERS, 'GT', score, t.worker)
    end
    local parent = t.fields.parent_id
    if parent and parent ~= id then
      redis.call('SADD', P_TASK .. parent .. S_CHILDREN, id)
    end
    local group = t.fields.group_id
    if group then
      redis.call('SADD', P_GROUP .. group, id)
      redis.call('EXPIRE', P_GROUP .. group, math.floor(cfg.max_age))
    end
    redis.call('XADD', K_CHANGES, 'MAXLEN', '~', cfg.stream_maxlen, '*',
               'kind', 'task', 'id', id, 'state', t.state,
               'name', t.name or '', 'worker', t.worker or '', 'ts', tostring(score))
  end
end

for key, incr in pairs(stats) do
  for field, n in pairs(incr) do
    if field == 'rtsum' or string.sub(field, 1, 6) == 'rtsum:' then
      redis.call('HINCRBYFLOAT', key, field, n)
    else
      redis.call('HINCRBY', key, field, n)
    end
  end
  redis.call('EXPIRE', key, math.floor(cfg.stats_ttl))
end

for host, incr in pairs(worker_incr) do
  local key = P_WORKER .. host
  for field, n in pairs(incr) do redis.call('HINCRBY', key, field, n) end
  redis.call('HSETNX', key, 'hostname', host)
end

-- Retention: drop the least recently updated tasks beyond max_tasks and those
-- older than max_age. Bounded per call so one batch never stalls Redis; the
-- next batches catch up.
local budget = math.max(#records * 2, 200)
local victims = {}
local excess = redis.call('ZCARD', K_TASKS) - cfg.max_tasks
if excess > 0 then
  local ids = redis.call('ZRANGE', K_TASKS, 0, math.min(excess, budget) - 1)
  for _, v in ipairs(ids) do victims[#victims + 1] = v end
end
if #victims < budget then
  local ids = redis.call('ZRANGEBYSCORE', K_TASKS, '-inf', cfg.now - cfg.max_age,
                         'LIMIT', 0, budget - #victims)
  for _, v in ipairs(ids) do victims[#victims + 1] = v end
end
local trimmed = 0
local seen = {}
for _, id in ipairs(victims) do
  if not seen[id] and not tasks[id] then
    seen[id] = true
    local key = P_TASK .. id
    local cur = redis.call('HMGET', key, 'state', 'name', 'worker')
    if cur[1] then redis.call('ZREM', P_STATE .. cur[1], id) end
    if cur[2] then redis.call('ZREM', P_NAME .. cur[2], id) end
    if cur[3] then redis.call('ZREM', P_WORKER_IDX .. cur[3], id) end
    redis.call('DEL', key, key .. S_TIMELINE, key .. S_CHILDREN)
    redis.call('ZREM', K_TASKS, id)
    trimmed = trimmed + 1
  end
end

-- Workers not heard of for purge_after seconds are forgotten.
local gone = redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', cfg.now - cfg.purge_after,
                        'LIMIT', 0, 100)
for _, host in ipairs(gone) do
  redis.call('DEL', P_WORKER .. host)
  redis.call('ZREM', K_WORKERS, host)
end

return {applied, duplicates, tasks_changed, trimmed}
