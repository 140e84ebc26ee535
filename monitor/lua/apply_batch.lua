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
-- KEYS[14] hourly stats prefix         "{p}:stats:h:"
-- KEYS[15] per-name stats suffix       ":names"   ({p}:stats:{minute}:names ...)
-- KEYS[16] per-worker stats suffix     ":workers"
-- KEYS[17] queues seen at publish zset "{p}:queues"
-- KEYS[18] /metrics totals hash        "{p}:metrics:totals"
-- KEYS[19] /metrics label sets prefix  "{p}:metrics:labels:"
-- timeline entry: {s=state, t=time, h=host, src="signal,event", r=retries (when
--                  the report named its attempt), t2=second source's time, o=time the
--                  report said when it was clamped}. t is the EARLIEST report: src lists
--                  the source that reported t first, the one that reported t2 second.
-- ARGV[1]  JSON array of records, in arrival order; positional lists (they
--          decode faster than objects, and this runs for every event):
--            task:   ["t", id, state, time text, source, host or "", {field=text},
--                     retries (the attempt the report names) or null]
--            worker: ["w", host, "online"|"heartbeat"|"offline", time text, source, {field=text}]
--          Times travel as Python's repr of the float: exact, and kept verbatim
--          in the hash.
-- ARGV[2]  JSON config: ranks{state=rank}, custom_rank, ready_states[], keep{state=[fields a
--          late event keeps]}, subject{state=time field}, max_tasks, max_age, max_timeline,
--          stream_maxlen, dedup_window, purge_after, clock_skew, max_fields, max_key_len,
--          owned[fields no record may set], sf (stats field spelling: monitor/vocabulary.py
--          stats_spelling), ttl{m, mn, h, hn} (seconds the global and the per-name/-worker
--          per-minute and hourly stats hashes are kept), cap{mn, hn, g} (fields of one
--          per-name/-worker hash past which new names count under sf.other; of a global
--          one past which new custom states are not counted),
--          max_queues (issue 10, queues), mt (totals' spelling: vocabulary.metrics_spelling),
--          mcap{name, hostname, queue, exception, series} (label and field caps of the totals)
-- ARGV[3]  now (seconds since the epoch, as text)
-- returns  {applied, duplicates, tasks_changed, trimmed, rejected}
--
-- Every record is validated before anything is written (types, finite times,
-- key-safe ids, field counts): an invalid record is skipped and counted in
-- `rejected`, so a batch is never half-applied by an error halfway through.
-- Times later than now + clock_skew or older than now - max_age are clamped to
-- now (the arrival), the reported time kept beside it: no index score lies in
-- the future, and retention always gets to a task.
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
local P_HSTATS, S_NAMES, S_WORKERS = KEYS[14], KEYS[15], KEYS[16]

local dedup_window = cfg.dedup_window
local keep_rules, subjects = cfg.keep, cfg.subject

local function rank_of(state)
  return ranks[state] or custom_rank
end

-- Validation ------------------------------------------------------------------
-- Runs for every record before anything is written, so it is kept cheap: each
-- record is checked inside one pcall with operators that raise on a wrong type
-- (`v .. ''` on a table, a boolean or null; `x + 0` on what is not a number)
-- instead of a type() call per value.
local next, tonumber, find, sub, pcall = next, tonumber, string.find, string.sub, pcall
local NOW_TEXT = ARGV[3]
local latest_ok = now + cfg.clock_skew
local oldest_ok = now - cfg.max_age
local max_fields, max_key_len = cfg.max_fields, cfg.max_key_len
local huge = math.huge

-- What the store keeps itself: a record's fields never set these. Worker
-- counters are HINCRBY'd below and must stay integers.
local owned_task, owned_worker = {}, {}
for _, k in ipairs(cfg.owned) do owned_task[k] = true end
for _, k in ipairs({'hostname', 'last_heartbeat', 'offline_at', 'online_at', 'succeeded',
                    'failed', 'retried', 'last_heartbeat_reported', 'offline_at_reported'}) do
  owned_worker[k] = true
end

-- A usable time (text or number), as a number; raises otherwise. Lua's
-- tonumber takes "inf", "nan" and "1e999".
local function time_of(value)
  local x = tonumber(value .. '')
  if x and x == x and x > 0 and x < huge then return x end
  error('bad time')
end

-- Raises unless v is text of 1..max_key_len bytes (it names a key).
local function key_part(v)
  local n = #(v .. '')
  if n == 0 or n > max_key_len then error('bad key part') end
  return v .. ''
end

-- Field maps: a JSON object (cjson gives one string keys; an array shows as
-- f[1]) of text values, bounded in number. Fields the store owns are dropped
-- on the way (assigning nil during next() is allowed). Fields that name key
-- parts (worker, name, parent/group ids) must fit in a key.
local function check_fields(f, owned_set)
  if f[1] ~= nil then error('fields must be an object') end
  local n = 0
  for k, v in next, f do
    n = n + 1
    local _ = v .. ''
    if owned_set[k] then f[k] = nil end
  end
  if n > max_fields then error('too many fields') end
  local v = f.name
  if v ~= nil and (#v == 0 or #v > max_key_len) then error('bad name') end
  v = f.worker
  if v ~= nil and (#v == 0 or #v > max_key_len) then error('bad worker') end
  v = f.parent_id
  if v ~= nil and (#v == 0 or #v > max_key_len) then error('bad parent_id') end
  v = f.group_id
  if v ~= nil and (#v == 0 or #v > max_key_len) then error('bad group_id') end
end

local S_TL_LEN, S_CH_LEN = #KEYS[12], #KEYS[13]
local SOURCES = {signal = true, event = true, reconcile = true}  -- reconcile: monitor.lost (result backend)
local state_ok = {}  -- state -> valid? (a batch names few states)

-- The hot one (every task record): inlined checks, one Lua call for the fields.
local function check_task(rec)
  local id, state = rec[2] .. '', rec[3] .. ''
  if #id == 0 or #id > max_key_len then error('bad id') end
  -- An id ending in a facet suffix names another task's key (UUIDs have no ':').
  if find(id, ':', 1, true) and (sub(id, -S_TL_LEN) == KEYS[12]
                                 or sub(id, -S_CH_LEN) == KEYS[13]) then
    error('id names another key')
  end
  local ok = state_ok[state]
  if ok == nil then
    ok = #state <= 64 and find(state, '^[A-Z0-9_]+$') ~= nil
    state_ok[state] = ok
  end
  if not ok or not SOURCES[rec[5]] or #(rec[6] .. '') > max_key_len then error('bad record') end
  local rt = rec[8]
  if rt ~= nil and rt ~= cjson.null then
    rt = rt + 0
    if rt ~= rt or rt == huge or rt == -huge then error('bad retries') end
    rec[8] = rt
  end
  local x = tonumber(rec[4] .. '')
  if not x or x ~= x or x <= 0 or x == huge then error('bad time') end
  rec[2], rec[3], rec.time = id, state, x
  check_fields(rec[7], owned_task)
  return true
end

local WORKER_KINDS = {online = true, heartbeat = true, offline = true}
local function check_worker(rec)
  rec[2] = key_part(rec[2])
  if not WORKER_KINDS[rec[3]] or not SOURCES[rec[5]] then error('bad worker record') end
  rec.time = time_of(rec[4])
  check_fields(rec[6], owned_worker)
  return true
end

-- The time a (validated) record is stored at: its own, or now when it is too
-- far ahead (a skewed clock, a forged event) or older than retention.
-- Returns (number, text, reported text or nil).
local function clamp(rec)
  local x = rec.time
  if x > latest_ok or x < oldest_ok then return now, NOW_TEXT, rec[4] end
  return x, rec[4], nil
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

-- Statistics. Each counted transition adds to one row of this batch, keyed by
-- (minute, name, host, queue); the rows are spread over the stats hashes once,
-- at the end (per-minute and hourly; global, per name, per worker), so a record
-- costs a few table updates, never a Redis call.
local SF = cfg.sf
local F_STATE, F_RT, F_RTSUM, F_QW, F_QWSUM = SF.state, SF.rt, SF.rtsum, SF.qw, SF.qwsum
local SCOPE, F_SEEN, OTHER = SF.scope, SF.seen, SF.other
local BOUNDS, LABELS, INF = {}, {}, SF.inf
for i, b in ipairs(SF.buckets) do BOUNDS[i], LABELS[i] = b[1], b[2] end
local NBOUNDS = #BOUNDS
local UNKNOWN_EXC = cfg.mt.unknown_exception
local MAX_RUNTIME = 1e7  -- seconds (115 days): anything longer is not a runtime
local floor = math.floor

-- The label of the bucket holding x (binary search: 20 bounds).
local function bucket_of(x)
  if x > BOUNDS[NBOUNDS] then return INF end
  local lo, hi = 1, NBOUNDS
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if x <= BOUNDS[mid] then hi = mid else lo = mid + 1 end
  end
  return LABELS[lo]
end

local rows = {}   -- minute -> name -> host -> queue -> row
local nrows = {}  -- rows in creation order
local function row_of(minute, name, host, queue)
  local a = rows[minute]
  if not a then a = {}; rows[minute] = a end
  local b = a[name]
  if not b then b = {}; a[name] = b end
  local c = b[host]
  if not c then c = {}; b[host] = c end
  local r = c[queue]
  if not r then
    r = {m = minute, name = name, host = host, queue = queue,
         st = {}, rt = {}, rtsum = 0, qw = {}, qwsum = 0, qwn = 0,
         srt = {}, srtsum = 0, srtn = 0, exc = {}}
    c[queue] = r
    nrows[#nrows + 1] = r
  end
  return r
end

-- One new transition (not a duplicate report), whatever order it arrived in.
local function count(t, state, time, f, host)
  if host == '' then host = t.worker or '' end
  local r = row_of(floor(time / 60), t.name or '', host, t.queue or '')
  r.st[state] = (r.st[state] or 0) + 1
  if state == 'SUCCESS' or state == 'FAILURE' then
    local runtime = tonumber(f.runtime)
    -- Counters only take sane runtimes: one HINCRBYFLOAT of an infinite or
    -- NaN increment would fail the script halfway through the batch.
    if runtime and runtime >= 0 and runtime < MAX_RUNTIME then
      local b = bucket_of(runtime)
      r.rt[b] = (r.rt[b] or 0) + 1
      r.rtsum = r.rtsum + runtime
      if state == 'SUCCESS' then  -- celery-exporter's runtime histogram: successes
        r.srt[b] = (r.srt[b] or 0) + 1
        r.srtsum = r.srtsum + runtime
        r.srtn = r.srtn + 1
      end
    end
    if state == 'FAILURE' then
      -- celery-exporter's label: the class in the exception's repr, "ValueError('x')"
      local e = f.exception
      e = e and string.match(e, '^([%w_]+)%(') or UNKNOWN_EXC
      r.exc[e] = (r.exc[e] or 0) + 1
    end
  end
end

-- Queue wait (received - sent): counted once per task, by the first record that
-- makes both times known (PENDING or RECEIVED, in either order), in the minute it
-- was received. The hash keeps it (queue_wait, the mark that it was counted),
-- recomputed when an earlier report of either time arrives, so that every
-- arrival order stores the same task.
local function count_wait(t)
  local sent = tonumber(t.fields.sent or t.sent)
  local received = tonumber(t.fields.received or t.received)
  if not (sent and received) then return end
  local wait = received - sent
  if wait < 0 then wait = 0 end  -- two hosts' clocks disagree
  if wait >= MAX_RUNTIME then return end
  t.fields.queue_wait = tostring(wait)
  if t.wait_done then return end
  t.wait_done = true
  local r = row_of(floor(received / 60), t.name or '', t.worker or '', t.queue or '')
  local b = bucket_of(wait)
  r.qw[b] = (r.qw[b] or 0) + 1
  r.qwsum = r.qwsum + wait
  r.qwn = r.qwn + 1
end

local function load(id)
  local t = tasks[id]
  if t then return t end
  local key = P_TASK .. id
  local cur = redis.call('HMGET', key, 'state', 'name', 'worker', 'retries', 'timestamp',
                         'queue', 'sent', 'received', 'queue_wait')
  t = {key = key, id = id, exists = cur[1] ~= false, fields = {}, score = false}
  t.queue = cur[6] or false
  t.sent, t.received, t.wait_done = cur[7] or nil, cur[8] or nil, cur[9] ~= false
  t.state = cur[1] or 'PENDING'
  t.orig_state = cur[1]
  t.name = cur[2] or false
  t.orig_name = t.name
  t.worker = cur[3] or false
  t.orig_worker = t.worker
  t.retries = tonumber(cur[4])
  -- time of the last state change: the floor for this task's index scores
  t.orig_time = tonumber(cur[5])
  t.orig_text = cur[5]  -- the time as stored: the change feed passes text on (no printf)
  t.timeline = false  -- loaded on first need
  t.tl_new = {}       -- entries to append
  t.tl_set = {}       -- index (1-based) -> entry to rewrite
  t.fills = false     -- fields to set only where the hash has none (HSETNX)
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

-- Celery's merge_rules as sets: state -> {field = true}.
local keep_sets = {}
for state, names in pairs(keep_rules) do
  local set = {}
  for _, name in ipairs(names) do set[name] = true end
  keep_sets[state] = set
end

local function apply_task(rec)
  local state, src, host, f, rt = rec[3], rec[5], rec[6], rec[7], rec[8]
  local time, ts, reported = rec.time, rec[4], nil
  if time > latest_ok or time < oldest_ok then time, ts, reported = now, NOW_TEXT, ts end
  local t = load(rec[2])
  local extra = f.fields_extra  -- names of the event's extra fields (model.EXTRAS_MARKER)
  if extra then
    f.fields_extra = nil
    t.extra = t.extra and (t.extra .. ',' .. extra) or extra
  end
  local explicit = rt ~= nil and rt ~= cjson.null
  local dup = find_duplicate(t, state, time, src, rt, explicit)
  local tl = t.timeline
  if dup == 'exact' then
    duplicates = duplicates + 1
    return
  end
  local is_dup = dup ~= nil
  -- A transition's time is its earliest report: the hooks run in the pool
  -- process, before the prefork parent emits task-started/-succeeded, and
  -- before_task_publish precedes task-sent. Which report arrives first must
  -- not matter.
  local earliest = true
  local entry  -- this transition's timeline entry
  if is_dup then
    duplicates = duplicates + 1
    local e = tl[dup]
    entry = e
    earliest = false
    if not has_source(e, src) then
      if time < e.t then
        e.t2, e.t, e.src = e.t, time, src .. ',' .. e.src
        earliest = true
      else
        e.t2, e.src = time, e.src .. ',' .. src
      end
    end
    -- the host of the earliest report (producer names differ between sources)
    if host ~= '' and (earliest or e.h == nil) then e.h = host end
    if explicit and e.r == nil then e.r = rt end
    if reported and e.o == nil then e.o = tonumber(reported) end
    if dup <= t.tl_base then t.tl_set[dup] = e end
  else
    local e = {s = state, t = time, src = src}
    if host ~= '' then e.h = host end
    -- Only a report that names its attempt gets one: guessing from the task's
    -- current retries is wrong whenever the other source is ahead.
    if explicit then e.r = rt end
    if reported then e.o = tonumber(reported) end
    tl[#tl + 1] = e
    t.tl_new[#t.tl_new + 1] = e
    entry = e
  end
  -- The task's time fields (received, started ...) hold the newest attempt's
  -- transition: a report of an older attempt (a retried task's first RECEIVED,
  -- from the slower source) corrects that attempt's entry only.
  local newest = true
  for i = 1, #tl do
    local x = tl[i]
    if x ~= entry and x.s == state and x.t > entry.t then newest = false; break end
  end

  -- Celery's rule. A duplicate never changes the state: the transition it
  -- reports was applied (or merged) when first seen.
  local merge_only = is_dup or (state ~= 'RETRY' and t.state ~= 'RETRY'
                                and rank_of(state) > rank_of(t.state))
  -- What a report may overwrite, and what it may only fill in where nothing is
  -- stored yet, so that every arrival order stores the same task:
  --   a new transition overwrites;
  --   a late (lower-precedence) one overwrites Celery's merge_rules fields only;
  --   a second source's report of one transition: the hooks' values win (they
  --   see the real objects; events carry reprs), an event's fill gaps.
  local fill = nil
  if is_dup then
    if src ~= 'signal' then f, fill = {}, f end
  elseif merge_only then
    local keep = keep_sets[state] or {}
    local kept, rest = {}, {}
    for k, v in pairs(f) do
      if keep[k] then kept[k] = v else rest[k] = v end
    end
    f, fill = kept, rest
  end
  if fill then
    -- name and worker are known (read with the state): fill them here, so the
    -- indexes follow.
    if not t.name and fill.name then f.name = fill.name end
    if not t.worker and fill.worker then f.worker = fill.worker end
    local fills = t.fills
    if not fills then fills = {}; t.fills = fills end
    for k, v in pairs(fill) do
      if fills[k] == nil then fills[k] = v end
    end
  end
  -- The queue: the publish's report (PENDING) names it and wins; any other
  -- report only fills it in (a worker's RECEIVED names the routing key the
  -- message came by), so every arrival order stores the same queue.
  if state == 'PENDING' then
    local q = f.queue or (fill and fill.queue)
    if q then f.queue = q end
  elseif f.queue and t.queue then
    f.queue = nil
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
  if subject and earliest and newest then
    t.fields[subject] = ts
    if reported then t.fields[subject .. '_reported'] = reported end
  end
  if f.name then t.name = f.name end
  if f.worker then t.worker = f.worker end
  if f.queue then t.queue = f.queue elseif not t.queue and fill and fill.queue then t.queue = fill.queue end
  if f.retries then t.retries = tonumber(f.retries) end
  if not t.score or time > t.score then t.score, t.score_text = time, ts end
  t.changed = true
  applied = applied + 1

  if is_dup and earliest and newest and state == t.state then
    t.fields.timestamp = ts  -- the current state's time is its earliest report too
  end
  if not merge_only then
    t.state = state
    t.fields.state = state
    t.fields.timestamp = ts
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
  if not is_dup then count(t, state, time, f, host) end
  if state == 'PENDING' or state == 'RECEIVED' then count_wait(t) end
end

local workers_touched = {}
local worker_scores = {}  -- hostname -> newest time this batch saw it at: one ZADD each

local function apply_worker(rec)
  local host, kind = rec[2], rec[3]
  local time, ts, reported = clamp(rec)
  local key = P_WORKER .. host
  local f = rec[6]
  local fields = {'hostname', host}
  for k, v in pairs(f) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  local time_field = nil
  if kind == 'offline' then
    time_field = 'offline_at'
  else
    local last = tonumber(redis.call('HGET', key, 'last_heartbeat'))
    if not last or time > last then time_field = 'last_heartbeat' end
    if kind == 'online' then
      fields[#fields + 1] = 'online_at'
      fields[#fields + 1] = ts
    end
  end
  if time_field then
    fields[#fields + 1] = time_field
    fields[#fields + 1] = ts
    if reported then
      fields[#fields + 1] = time_field .. '_reported'
      fields[#fields + 1] = reported
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

-- Validate everything first, then write: nothing below may fail on a record.
local rejected = 0
for _, rec in ipairs(records) do
  local kind = type(rec) == 'table' and rec[1]
  if kind == 't' and pcall(check_task, rec) then
    apply_task(rec)
  elseif kind == 'w' and pcall(check_worker, rec) then
    apply_worker(rec)
  else
    rejected = rejected + 1
  end
end

-- Index updates are collected per key and sent as one variadic ZADD / ZREM
-- each: a batch touches a few index keys many times, and every redis.call
-- from Lua has a fixed cost that dominates a one-member ZADD.
local VARIADIC = 1000  -- members per call (Lua's unpack has a stack limit)
local zadds, zrems = {}, {}
local name_scores = {}  -- task names first seen in this batch -> newest time
local maybe_gone = {}   -- task names that may have lost their last task

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
    if t.extra then
      -- Extra event fields (a newer Celery's, or a buggy producer's) are
      -- bounded per event by the model; across events, by the hash's size:
      -- past max_task_fields, new ones are dropped and counted.
      local names, count = {}, 0
      for name in string.gmatch(t.extra, '[^,]+') do
        if not names[name] then names[name] = true; count = count + 1 end
      end
      local have = redis.call('HLEN', t.key)
      if have + count > cfg.max_task_fields then
        local added = 0
        for name in pairs(names) do
          if redis.call('HEXISTS', t.key, name) == 0 then
            if have + added < cfg.max_task_fields then
              added = added + 1
            else
              t.fields[name], t.fields[name .. '_truncated'] = nil, nil
              if t.fills then t.fills[name], t.fills[name .. '_truncated'] = nil, nil end
              t.dropped_extra = (t.dropped_extra or 0) + 1
            end
          end
        end
      end
    end
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
    if #hset <= 2 * VARIADIC then
      if #hset > 0 then redis.call('HSET', t.key, unpack(hset)) end
    else  -- in chunks: a batch may merge many records' fields into one task
      for i = 1, #hset, 2 * VARIADIC do
        redis.call('HSET', t.key, unpack(hset, i, math.min(i + 2 * VARIADIC - 1, #hset)))
      end
    end
    if t.fills then
      for k, v in pairs(t.fills) do
        if t.fields[k] == nil then redis.call('HSETNX', t.key, k, v) end
      end
    end
    if t.dropped_extra then
      redis.call('HINCRBY', t.key, 'fields_truncated', t.dropped_extra)
    end

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
    local score, score_text = t.score, t.score_text
    if t.orig_time and t.orig_time > score then score, score_text = t.orig_time, t.orig_text end
    zadd_later(K_TASKS, score, id)
    if t.orig_state and t.orig_state ~= t.state then
      zrem_later(P_STATE .. t.orig_state, id)
    end
    zadd_later(P_STATE .. t.state, score, id)
    if t.name then
      if t.orig_name and t.orig_name ~= t.name then
        zrem_later(P_NAME .. t.orig_name, id)
        maybe_gone[t.orig_name] = true
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
      -- Expires like a group: a child may outlive its parent's hash (trimmed
      -- first, or never seen), and the set must not outlive them both.
      local ckey = P_TASK .. parent .. S_CHILDREN
      redis.call('SADD', ckey, id)
      redis.call('EXPIRE', ckey, math.floor(cfg.max_age))
    end
    local group = t.fields.group_id
    if group then
      redis.call('SADD', P_GROUP .. group, id)
      redis.call('EXPIRE', P_GROUP .. group, math.floor(cfg.max_age))
    end
    redis.call('XADD', K_CHANGES, 'MAXLEN', '~', cfg.stream_maxlen, '*',
               'kind', 'task', 'id', id, 'state', t.state,
               'name', t.name or '', 'worker', t.worker or '', 'ts', score_text)
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

-- Rows -> stats hashes. Global hashes hold a bounded set of fields (states,
-- buckets); per-name and per-worker ones are capped (cap.mn / cap.hn fields):
-- past that, a name or worker not yet counted there counts under OTHER, so a
-- producer churning task names cannot grow a hash without bound.
local TTL, CAP = cfg.ttl, cfg.cap
local key_ttl = {}   -- stats key -> seconds kept
local key_cap = {}   -- scoped stats key -> fields
local periods = {}   -- minute -> {global, names, workers} keys of the minute and of its hour
local function period(minute)
  local p = periods[minute]
  if not p then
    local mk, hk = P_STATS .. minute, P_HSTATS .. floor(minute / 60)
    p = {mk, mk .. S_NAMES, mk .. S_WORKERS, hk, hk .. S_NAMES, hk .. S_WORKERS}
    key_ttl[p[1]], key_ttl[p[2]], key_ttl[p[3]] = TTL.m, TTL.mn, TTL.mn
    key_ttl[p[4]], key_ttl[p[5]], key_ttl[p[6]] = TTL.h, TTL.hn, TTL.hn
    key_cap[p[2]], key_cap[p[3]], key_cap[p[5]], key_cap[p[6]] = CAP.mn, CAP.mn, CAP.hn, CAP.hn
    periods[minute] = p
  end
  return p
end
local scoped = {}  -- scoped key -> scope -> {field -> n}
local function add(key, field, n)
  local t = stats[key]
  if not t then t = {}; stats[key] = t end
  t[field] = (t[field] or 0) + n
end
local function add_scoped(key, scope, field, n)
  local t = scoped[key]
  if not t then t = {}; scoped[key] = t end
  local s = t[scope]
  if not s then s = {}; t[scope] = s end
  s[field] = (s[field] or 0) + n
end
-- field += n in the minute's and the hour's global hashes, and in their
-- per-name (and per-worker) hashes when the row names one.
local function spread(p, r, field, n, workers)
  add(p[1], field, n); add(p[4], field, n)
  if r.name ~= '' then add_scoped(p[2], r.name, field, n); add_scoped(p[5], r.name, field, n) end
  if workers and r.host ~= '' then
    add_scoped(p[3], r.host, field, n); add_scoped(p[6], r.host, field, n)
  end
end
for _, r in ipairs(nrows) do
  local p = period(r.m)
  local seen, wseen = 0, 0
  for state, n in pairs(r.st) do
    -- PENDING is the producer's: its host is no worker
    local worker_side = state ~= 'PENDING'
    spread(p, r, F_STATE .. state, n, worker_side)
    seen = seen + n
    if worker_side then wseen = wseen + n end
  end
  -- the cap's anchors (scoped hashes only)
  if seen > 0 and r.name ~= '' then
    add_scoped(p[2], r.name, F_SEEN, seen); add_scoped(p[5], r.name, F_SEEN, seen)
  end
  if wseen > 0 and r.host ~= '' then
    add_scoped(p[3], r.host, F_SEEN, wseen); add_scoped(p[6], r.host, F_SEEN, wseen)
  end
  local any = false
  for label, n in pairs(r.rt) do spread(p, r, F_RT .. label, n, true); any = true end
  if any then spread(p, r, F_RTSUM, r.rtsum, true) end
  if r.qwn > 0 then
    for label, n in pairs(r.qw) do spread(p, r, F_QW .. label, n, false) end
    spread(p, r, F_QWSUM, r.qwsum, false)
  end
end
-- Sums are floats; everything else counts.
local function incr(key, field, n)
  if field == F_RTSUM or field == F_QWSUM then
    redis.call('HINCRBYFLOAT', key, field, n)
  else
    redis.call('HINCRBY', key, field, n)
  end
end
for key, by_scope in pairs(scoped) do
  -- Fields added so far count as new (an upper bound), so the hash passes its
  -- cap by one scope's fields at most.
  local size, cap = redis.call('HLEN', key), key_cap[key]
  for scope, fields in pairs(by_scope) do
    local target = scope
    if size >= cap and redis.call('HEXISTS', key, F_SEEN .. SCOPE .. scope) == 0 then
      target = OTHER
    end
    local suffix = SCOPE .. target
    if target ~= OTHER then
      for _ in pairs(fields) do size = size + 1 end
    end
    for field, n in pairs(fields) do
      if field == F_RTSUM or field == F_QWSUM then
        redis.call('HINCRBYFLOAT', key, field .. suffix, n)
      else
        redis.call('HINCRBY', key, field .. suffix, n)
      end
    end
  end
  redis.call('EXPIRE', key, key_ttl[key])
end
for key, fields in pairs(stats) do
  -- Global hashes hold Celery's states, the buckets and the sums; custom states
  -- (PROGRESS ...) join them while they have fewer than cap.g fields, so a
  -- producer inventing states cannot grow them either.
  local full = nil
  for field, n in pairs(fields) do
    local state = sub(field, 1, #F_STATE) == F_STATE and sub(field, #F_STATE + 1)
    if state and not ranks[state] then
      if full == nil then full = redis.call('HLEN', key) >= CAP.g end
      if not full or redis.call('HEXISTS', key, field) == 1 then incr(key, field, n) end
    else
      incr(key, field, n)
    end
  end
  redis.call('EXPIRE', key, key_ttl[key])
end

-- /metrics totals: monotonic, never expiring, labelled as celery-exporter does
-- (name, hostname without its "worker@" part, queue_name; exception on
-- failures). Each label kind admits mcap[kind] values (a set each), then
-- __other__; the hash admits mcap.series fields, then new series count with
-- every label __other__ (a histogram's series move as one: its sum decides).
do
  local MT, MCAP = cfg.mt, cfg.mcap
  local SEP, K_TOTALS, P_LABELS = MT.sep, KEYS[18], KEYS[19]
  local admitted = {name = {}, hostname = {}, queue = {}, exception = {}}
  local function label(kind, value)
    local cache = admitted[kind]
    local v = cache[value]
    if v then return v end
    v = value
    if find(v, SEP, 1, true) then v = string.gsub(v, SEP, '?') end
    if v ~= '' then
      local key = P_LABELS .. kind
      if redis.call('SISMEMBER', key, v) == 0 then
        if redis.call('SCARD', key) < MCAP[kind] then redis.call('SADD', key, v) else v = OTHER end
      end
    end
    cache[value] = v
    return v
  end
  local hostnames = {}
  local function hostname(node)
    local h = hostnames[node]
    if h then return h end
    local at = find(node, '@', 1, true)
    h = label('hostname', at and sub(node, at + 1) or node)
    hostnames[node] = h
    return h
  end
  local series = {}  -- base -> {ints = {suffix -> n}, floats = {suffix -> x}, fold = base}
  local order_s = {}
  local function series_of(base, fold)
    local s = series[base]
    if not s then
      s = {ints = {}, floats = {}, fold = fold}
      series[base] = s
      order_s[#order_s + 1] = base
    end
    return s
  end
  local OTHERS = SEP .. OTHER .. SEP .. OTHER .. SEP .. OTHER
  local counters = MT.counters
  for _, r in ipairs(nrows) do
    local labels = SEP .. label('name', r.name) .. SEP .. hostname(r.host) .. SEP
                   .. label('queue', r.queue)
    for state, n in pairs(r.st) do
      local kind = counters[state]
      if kind and state ~= 'FAILURE' then
        local s = series_of(kind .. labels, kind .. OTHERS)
        s.ints[''] = (s.ints[''] or 0) + n
      end
    end
    for e, n in pairs(r.exc) do
      local kind = counters.FAILURE
      local s = series_of(kind .. labels .. SEP .. label('exception', e),
                          kind .. OTHERS .. SEP .. OTHER)
      s.ints[''] = (s.ints[''] or 0) + n
    end
    if r.srtn > 0 then
      local s = series_of(MT.runtime .. labels, MT.runtime .. OTHERS)
      for b, n in pairs(r.srt) do s.ints[SEP .. b] = (s.ints[SEP .. b] or 0) + n end
      s.floats[SEP .. MT.sum] = (s.floats[SEP .. MT.sum] or 0) + r.srtsum
    end
    if r.qwn > 0 then
      local s = series_of(MT.wait .. labels, MT.wait .. OTHERS)
      for b, n in pairs(r.qw) do s.ints[SEP .. b] = (s.ints[SEP .. b] or 0) + n end
      s.floats[SEP .. MT.sum] = (s.floats[SEP .. MT.sum] or 0) + r.qwsum
    end
  end
  if #order_s > 0 then
    local size = redis.call('HLEN', K_TOTALS)  -- fields added count as new: an upper bound
    for _, base in ipairs(order_s) do
      local s = series[base]
      local target = base
      if size >= MCAP.series then
        -- a counter's anchor is its field, a histogram's its sum
        local anchor = next(s.floats) and (base .. SEP .. MT.sum) or base
        if redis.call('HEXISTS', K_TOTALS, anchor) == 0 then target = s.fold end
      end
      if target == base then
        for _ in pairs(s.ints) do size = size + 1 end
        for _ in pairs(s.floats) do size = size + 1 end
      end
      for suffix, n in pairs(s.ints) do redis.call('HINCRBY', K_TOTALS, target .. suffix, n) end
      for suffix, x in pairs(s.floats) do
        redis.call('HINCRBYFLOAT', K_TOTALS, target .. suffix, x)
      end
    end
  end
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
    local cur = redis.call('HMGET', key, 'state', 'name', 'worker', 'parent_id', 'group_id')
    if cur[1] then redis.call('ZREM', P_STATE .. cur[1], id) end
    -- Links go with the task: a set left empty is gone.
    if cur[4] then redis.call('SREM', P_TASK .. cur[4] .. S_CHILDREN, id) end
    if cur[5] then redis.call('SREM', P_GROUP .. cur[5], id) end
    if cur[2] then
      redis.call('ZREM', P_NAME .. cur[2], id)
      maybe_gone[cur[2]] = true
    end
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

-- A task name leaves {p}:names with its last task (its index key is gone).
for name in pairs(maybe_gone) do
  if redis.call('EXISTS', P_NAME .. name) == 0 then redis.call('ZREM', K_NAMES, name) end
end

-- queues seen at publish (issue 10, queues) ------------------------------------
-- Queue name -> newest time a task of this batch named it (the publish hook's
-- queue/routing key, task-sent's queue), one ZADD GT for the batch; the zset is
-- trimmed by age (max_age) and to max_queues names, least recently seen first.
do
  local K_QUEUES = KEYS[17]
  local queue_args, queue_seen = {}, {}
  for _, id in ipairs(order) do
    local t = tasks[id]
    local q = t.changed and t.fields.queue
    if q and #q > 0 and #q <= max_key_len then
      local seen = queue_seen[q]
      if not seen or t.score > seen then queue_seen[q] = t.score end
    end
  end
  for q, score in pairs(queue_seen) do
    queue_args[#queue_args + 1] = score
    queue_args[#queue_args + 1] = q
  end
  if #queue_args > 0 then
    for i = 1, #queue_args, 2 * VARIADIC do
      redis.call('ZADD', K_QUEUES, 'GT', unpack(queue_args, i,
                 math.min(i + 2 * VARIADIC - 1, #queue_args)))
    end
    redis.call('ZREMRANGEBYSCORE', K_QUEUES, '-inf', now - cfg.max_age)
    if redis.call('ZCARD', K_QUEUES) > cfg.max_queues then
      redis.call('ZREMRANGEBYRANK', K_QUEUES, 0, -cfg.max_queues - 1)
    end
  end
end

return {applied, duplicates, tasks_changed, trimmed, rejected}
