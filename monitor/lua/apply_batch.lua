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
-- ARGV[1]  JSON array of records, in arrival order; positional lists (they
--          decode faster than objects, and this runs for every event):
--            task:   ["t", id, state, time text, source, host or "", {field=text},
--                     retries (the attempt the report names) or null]
--            worker: ["w", host, "online"|"heartbeat"|"offline", time text, source, {field=text}]
--          Times travel as Python's repr of the float: exact, and kept verbatim
--          in the hash.
-- ARGV[2]  JSON config: ranks{state=rank}, custom_rank, ready_states[], keep{state=[fields a
--          late event keeps]}, subject{state=time field}, max_tasks, max_age, max_timeline,
--          stream_maxlen, stats_ttl, dedup_window, purge_after, rt_buckets[[bound, label]]
-- ARGV[3]  now (seconds since the epoch)
-- returns  {applied, duplicates, tasks_changed, trimmed}
--
-- The precedence rule is Celery's Task.event (celery/events/state.py): a
-- lower-precedence event never moves a task back, only merges fields (for a
-- late RECEIVED only MERGE_RULES fields); RETRY always applies. Ranks and the
-- kept-field lists are computed in Python; this script only compares them.

local records = cjson.decode(ARGV[1])
local cfg = cjson.decode(ARGV[2])
local now = tonumber(ARGV[3])
local ranks = cfg.ranks
local custom_rank = cfg.custom_rank
local ready = {}
for _, state in ipairs(cfg.ready_states) do ready[state] = true end

local P_TASK, K_TASKS, P_STATE, P_NAME, P_WORKER_IDX = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local P_GROUP, P_WORKER, K_WORKERS, P_STATS = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local K_CHANGES, K_NAMES, S_TIMELINE, S_CHILDREN = KEYS[10], KEYS[11], KEYS[12], KEYS[13]

local dedup_window = cfg.dedup_window
local keep_rules, subjects = cfg.keep, cfg.subject

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
  local cur = redis.call('HMGET', key, 'state', 'name', 'worker', 'retries', 'timestamp')
  t = {key = key, id = id, exists = cur[1] ~= false, fields = {}, score = false}
  t.state = cur[1] or 'PENDING'
  t.orig_state = cur[1]
  t.name = cur[2] or false
  t.orig_name = t.name
  t.worker = cur[3] or false
  t.orig_worker = t.worker
  t.retries = tonumber(cur[4])
  -- time of the last state change: the floor for this task's index scores
  t.orig_time = tonumber(cur[5])
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
  local sources = entry.src
  if sources == src then return true end
  return string.find(',' .. sources .. ',', ',' .. src .. ',', 1, true) ~= nil
end

-- Is this transition already in the timeline? Returns 'exact' (same source
-- reported it again: a redelivery), the index of the entry another source
-- wrote for it (closest in time within the window), or nil.
local function find_duplicate(t, state, time, src, retries, explicit)
  local tl = timeline(t)
  local best, best_dt = nil, dedup_window
  for i = 1, #tl do
    local e = tl[i]
    if e.s == state then
      local dt = math.abs(e.t - time)
      local same_attempt = (not explicit) or e.r == nil or e.r == retries
      if has_source(e, src) then
        -- t2 is when the second source reported the transition it shares.
        if dt <= 0.0005 or (e.t2 and math.abs(e.t2 - time) <= 0.0005) then
          return 'exact'
        end
        -- One attempt ends once: Celery itself reports some endings twice
        -- (a hard time limit fires task_failure from two places).
        if ready[state] and same_attempt and dt <= best_dt then best, best_dt = i, dt end
      elseif dt <= best_dt and same_attempt then
        best, best_dt = i, dt
      end
    end
  end
  return best
end

local function apply_task(rec)
  local state, ts, src, host, f, rt = rec[3], rec[4], rec[5], rec[6], rec[7], rec[8]
  local time = tonumber(ts)
  local t = load(rec[2])
  local explicit = rt ~= nil and rt ~= cjson.null
  local dup = find_duplicate(t, state, time, src, rt, explicit)
  local tl = t.timeline
  if dup == 'exact' then
    duplicates = duplicates + 1
    return
  end
  local is_dup = dup ~= nil
  if is_dup then
    duplicates = duplicates + 1
    local e = tl[dup]
    if not has_source(e, src) then
      e.src = e.src .. ',' .. src
      e.t2 = time
    end
    if e.h == nil and host ~= '' then e.h = host end
    if dup <= t.tl_base then t.tl_set[dup] = e end
  else
    local e = {s = state, t = time, src = src}
    if host ~= '' then e.h = host end
    -- Only a report that names its attempt gets one: guessing from the task's
    -- current retries is wrong whenever the other source is ahead.
    if explicit then e.r = rt end
    tl[#tl + 1] = e
    t.tl_new[#t.tl_new + 1] = e
  end

  -- Celery's rule. A duplicate never changes the state: the transition it
  -- reports was applied (or merged) when first seen.
  local merge_only = is_dup or (state ~= 'RETRY' and t.state ~= 'RETRY'
                                and rank_of(state) > rank_of(t.state))
  local keep = keep_rules[state]
  if merge_only and not is_dup and keep then
    local kept = {}
    for _, name in ipairs(keep) do
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
  local subject = subjects[state]
  if subject then t.fields[subject] = ts end
  if f.name then t.name = f.name end
  if f.worker then t.worker = f.worker end
  if f.retries then t.retries = tonumber(f.retries) end
  if not t.score or time > t.score then t.score = time end
  t.changed = true
  applied = applied + 1

  if not merge_only then
    t.state = state
    t.fields.state = state
    t.fields.timestamp = ts
    local minute = math.floor(time / 60)
    local skey = P_STATS .. minute
    bump(stats, skey, 'state:' .. state, 1)
    if t.name then bump(stats, skey, 'name:' .. t.name .. ':' .. state, 1) end
    local runtime = tonumber(f.runtime)
    if runtime and (state == 'SUCCESS' or state == 'FAILURE') then
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
      if state == 'SUCCESS' then
        bump(worker_incr, t.worker, 'succeeded', 1)
      elseif state == 'FAILURE' then
        bump(worker_incr, t.worker, 'failed', 1)
      elseif state == 'RETRY' then
        bump(worker_incr, t.worker, 'retried', 1)
      end
    end
  end
end

local workers_touched = {}
local worker_scores = {}  -- hostname -> newest time this batch saw it at: one ZADD each

local function apply_worker(rec)
  local host, kind, ts = rec[2], rec[3], rec[4]
  local time = tonumber(ts)
  local key = P_WORKER .. host
  local fields = {'hostname', host}
  for k, v in pairs(rec[6]) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  if kind == 'offline' then
    fields[#fields + 1] = 'offline_at'
    fields[#fields + 1] = ts
  else
    local last = tonumber(redis.call('HGET', key, 'last_heartbeat'))
    if not last or time > last then
      fields[#fields + 1] = 'last_heartbeat'
      fields[#fields + 1] = ts
    end
    if kind == 'online' then
      fields[#fields + 1] = 'online_at'
      fields[#fields + 1] = ts
    end
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('ZADD', K_WORKERS, 'GT', time, host)
  if not workers_touched[host] then
    workers_touched[host] = true
    redis.call('XADD', K_CHANGES, 'MAXLEN', '~', cfg.stream_maxlen, '*',
               'kind', 'worker', 'id', host, 'event', kind, 'ts', ts)
  end
  applied = applied + 1
end

for _, rec in ipairs(records) do
  if rec[1] == 't' then apply_task(rec) else apply_worker(rec) end
end

-- Index updates are collected per key and sent as one variadic ZADD / ZREM
-- each: a batch touches a few index keys many times, and every redis.call
-- from Lua has a fixed cost that dominates a one-member ZADD.
local VARIADIC = 1000  -- members per call (Lua's unpack has a stack limit)
local zadds, zrems = {}, {}
local name_scores = {}  -- task names first seen in this batch -> newest time

local function zadd_later(key, score, member)
  local args = zadds[key]
  if not args then args = {}; zadds[key] = args end
  args[#args + 1] = score
  args[#args + 1] = member
end

local function zrem_later(key, member)
  local members = zrems[key]
  if not members then members = {}; zrems[key] = members end
  members[#members + 1] = member
end

local function newest(tbl, key, score)
  local seen = tbl[key]
  if not seen or score > seen then tbl[key] = score end
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

    -- A late event must not put the task in a new index at an older time:
    -- its last state change is the floor (read with the hash, no ZSCORE).
    local score = t.score
    if t.orig_time and t.orig_time > score then score = t.orig_time end
    zadd_later(K_TASKS, score, id)
    if t.orig_state and t.orig_state ~= t.state then
      zrem_later(P_STATE .. t.orig_state, id)
    end
    zadd_later(P_STATE .. t.state, score, id)
    if t.name then
      if t.orig_name and t.orig_name ~= t.name then
        zrem_later(P_NAME .. t.orig_name, id)
      end
      zadd_later(P_NAME .. t.name, score, id)
      if t.name ~= t.orig_name then newest(name_scores, t.name, score) end
    end
    if t.worker then
      if t.orig_worker and t.orig_worker ~= t.worker then
        zrem_later(P_WORKER_IDX .. t.orig_worker, id)
      end
      zadd_later(P_WORKER_IDX .. t.worker, score, id)
      newest(worker_scores, t.worker, score)
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

for host, score in pairs(worker_scores) do zadd_later(K_WORKERS, score, host) end
for name, score in pairs(name_scores) do zadd_later(K_NAMES, score, name) end
-- Removals first: a task leaving one state index enters another (other key).
for key, members in pairs(zrems) do
  for i = 1, #members, VARIADIC do
    redis.call('ZREM', key, unpack(members, i, math.min(i + VARIADIC - 1, #members)))
  end
end
for key, args in pairs(zadds) do
  for i = 1, #args, 2 * VARIADIC do
    redis.call('ZADD', key, 'GT', unpack(args, i, math.min(i + 2 * VARIADIC - 1, #args)))
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
  local ids = redis.call('ZRANGEBYSCORE', K_TASKS, '-inf', now - cfg.max_age,
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
local gone = redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', now - cfg.purge_after,
                        'LIMIT', 0, 100)
for _, host in ipairs(gone) do
  redis.call('DEL', P_WORKER .. host)
  redis.call('ZREM', K_WORKERS, host)
end

return {applied, duplicates, tasks_changed, trimmed}
