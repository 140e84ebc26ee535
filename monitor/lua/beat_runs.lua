-- Read (never write) the newest tasks of some task names, for monitor/beat.py.
--
-- KEYS[1]  task hash prefix            "{p}:task:"
-- KEYS[2]  tasks zset                  "{p}:tasks"
-- KEYS[3..] one name index per task name "{p}:tasks:name:{name}"
-- ARGV[1]  newest ids read per name index (the caller's budget split over names)
-- ARGV[2]  characters of args / kwargs returned at most (a stored repr may be
--          16 KB, and forged ones as large: the reply stays bounded)
-- returns  {oldest task score or false, {per name: {id, sent, received, timestamp,
--          state, beat, hooked, args, kwargs, queue, index score}...}...}
--          `hooked` is "1" when the publish hook recorded the task (it always
--          leaves one of content_type / body_error / body_truncated), which is
--          how a call made outside beat (no `beat` marker) is told apart.
--
-- One round trip whatever the number of names; the work is bounded by
-- #names x ARGV[1] hashes of 11 fields.

local per_name = tonumber(ARGV[1])
local cut = tonumber(ARGV[2])
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local out = {oldest[2] or false}
local function short(v)
  if v and #v > cut then return string.sub(v, 1, cut) end
  return v or false
end
for k = 3, #KEYS do
  local rows = {}
  if per_name > 0 then
    local ids = redis.call('ZREVRANGE', KEYS[k], 0, per_name - 1, 'WITHSCORES')
    for i = 1, #ids, 2 do
      local id = ids[i]
      local f = redis.call('HMGET', KEYS[1] .. id, 'sent', 'received', 'timestamp', 'state',
        'beat', 'content_type', 'body_error', 'body_truncated', 'args', 'kwargs', 'queue')
      local hooked = (f[6] or f[7] or f[8]) and '1' or false
      rows[#rows + 1] = {id, f[1] or false, f[2] or false, f[3] or false, f[4] or false,
        f[5] or false, hooked, short(f[9]), short(f[10]), short(f[11]), ids[i + 1]}
    end
  end
  out[#out + 1] = rows
end
return out
