"""The Lua scripts that count, number and record, each one atomic in Redis.

Each is idempotent: redis-py may run it again after a lost reply (or a failover)
without counting twice. Their keys are ``keys.Keys``'; ``stats.Stats`` runs them.
"""

from __future__ import annotations

from pubtasks.counters import lua_table
from pubtasks.keys import LATENCY_BUCKETS

# A pending publish is the member "<message_id>#<publisher>.<n>" of the pending zset;
# message ids are "<entry>@<ms>[.<i>]", so the entry is everything before the last "@",
# and the tick is "<entry>@<ms>", message i of it (0 without a batch).
_ENTRY_OF = """
local function entry_of(key) return string.match(key, '^(.*)@') or '?' end
local marked = {}
local function mark_done(prefix, message_id)
  local tick, i = string.match(message_id, '^(.*@[%w%-]+)%.(%d+)$')
  if not tick then tick, i = message_id, 0 end
  redis.call('SETBIT', prefix .. tick, tonumber(i), 1)
  marked[prefix .. tick] = true
end
local function expire_marked(ttl)
  for key in pairs(marked) do redis.call('EXPIRE', key, ttl) end
end
"""

# One call counts a whole chunk of publishes (a window's worth), so a batch costs one
# round trip, not one per message.
# KEYS: totals, pending, entries.  ARGV: now, entry key prefix, then one key per publish.
BEGIN = (
    _ENTRY_OF
    + """
local begun, total = {}, 0
for i = 3, #ARGV do
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[1], ARGV[i]) == 1 then
    local entry = entry_of(ARGV[i])
    begun[entry] = (begun[entry] or 0) + 1
    total = total + 1
  end
end
for entry, n in pairs(begun) do
  redis.call('SADD', KEYS[3], entry)
  redis.call('HINCRBY', ARGV[2] .. entry, 'published', n)
end
if total > 0 then redis.call('HINCRBY', KEYS[1], 'published', total) end
return total
"""
)

# KEYS: totals, pending.
# ARGV: now, entry key prefix, the highest acked (not returned) message number or 0,
#       done key prefix, done ttl, latency key prefix, then (key, outcome) per publish;
#       outcome is one of ``counters.EFFECTS``, whose table is rendered in.
# Only the caller whose ZREM removes a publish counts it: settling twice counts once.
# A message counted acked or returned is marked done, in the same call. Every acked one
# (returned included) adds its latency, from its tick's time (the ms of its message id,
# the request's for a tick fired by hand) to now, to its entry's histogram.
SETTLE = (
    _ENTRY_OF
    + f"local BUCKETS = {{{', '.join(map(repr, LATENCY_BUCKETS))}}}\n"
    + lua_table()
    + """
local counts, counted, latencies = {}, 0, {}
local function bump(hash, field)
  counts[hash] = counts[hash] or {}
  counts[hash][field] = (counts[hash][field] or 0) + 1
end
local function observe(key)
  local ms = string.match(key, '@[%a%-]*(%d+)[^@]*#')
  if not ms then return end
  local seconds = math.max(tonumber(ARGV[1]) - tonumber(ms) / 1000, 0)
  local bucket = '+Inf'
  for _, le in ipairs(BUCKETS) do
    if seconds <= le then bucket = le; break end
  end
  local h = ARGV[6] .. entry_of(key)
  latencies[h] = latencies[h] or {n = 0, sum = 0, buckets = {}}
  local l = latencies[h]
  l.n, l.sum = l.n + 1, l.sum + seconds
  l.buckets[bucket] = (l.buckets[bucket] or 0) + 1
end
for i = 7, #ARGV, 2 do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then
    counted = counted + 1
    local effect = EFFECTS[ARGV[i + 1]]
    if effect.done then mark_done(ARGV[4], string.match(ARGV[i], '^(.*)#')) end
    if effect.latency then observe(ARGV[i]) end
    for _, hash in ipairs({KEYS[1], ARGV[2] .. entry_of(ARGV[i])}) do
      for _, field in ipairs(effect.counters) do bump(hash, field) end
    end
  end
end
local number = tonumber(ARGV[3])
for hash, fields in pairs(counts) do
  for field, n in pairs(fields) do redis.call('HINCRBY', hash, field, n) end
  local current = tonumber(redis.call('HGET', hash, 'last_confirmed_number') or '0')
  if fields['acked'] and number > 0 and number >= current then
    redis.call('HSET', hash, 'last_confirmed_number', number, 'last_confirmed_at', ARGV[1])
  end
end
for h, l in pairs(latencies) do
  for bucket, n in pairs(l.buckets) do redis.call('HINCRBY', h, tostring(bucket), n) end
  redis.call('HINCRBY', h, 'count', l.n)
  redis.call('HINCRBYFLOAT', h, 'sum', string.format('%.6f', l.sum))
end
expire_marked(ARGV[5])
return counted
"""
)

# KEYS: failed marker of each message, then totals, last_error, entries.
# ARGV: ttl, now, entry, entry key prefix, reason, done key prefix, done ttl, then
#       (message id, message number) per message.
FAIL = (
    _ENTRY_OF
    + """
local n = (#ARGV - 7) / 2
local totals, last_error, entries = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local failed = 0
for i = 1, n do
  if redis.call('SET', KEYS[i], ARGV[7 + 2 * i] .. ' ' .. ARGV[5], 'NX', 'EX', ARGV[1]) then
    failed = failed + 1
    mark_done(ARGV[6], ARGV[6 + 2 * i])
  end
end
if failed == 0 then return 0 end
redis.call('SADD', entries, ARGV[3])
redis.call('HINCRBY', totals, 'failed', failed)
redis.call('HINCRBY', ARGV[4] .. ARGV[3], 'failed', failed)
redis.call('HSET', last_error, 'at', ARGV[2], 'entry', ARGV[3], 'message_id', ARGV[8],
           'reason', ARGV[5])
expire_marked(ARGV[7])
return failed
"""
)

# Counting ticks skipped: the counters of the totals and of the entry, and the entry's
# record (JSON made by the caller: Lua's cjson writes numbers with 14 digits), kept newest
# first. The caller moves beat:last:<entry> past the run in the same call.
_SKIPPED = """
local function skipped(totals, hash, list, entries, entry, reason, n, record, kept)
  for _, h in ipairs({totals, hash}) do
    redis.call('HINCRBY', h, 'skipped', n)
    redis.call('HINCRBY', h, 'skipped_' .. reason, n)
  end
  redis.call('SADD', entries, entry)
  redis.call('LPUSH', list, record)
  redis.call('LTRIM', list, 0, tonumber(kept) - 1)
end
"""

# Numbers the ticks of one burst (ticks due at the same instant, or one tick alone) in
# one call. KEYS: totals, paused, entries, schedule:revs, schedule:runs.
# ARGV[1]: JSON [the floor, records kept, the key prefix, TICK_DEADLINE, now, and the
# keys of an entry named '': beat:number:, beat:manual:, beat:last:, entry:, skips:,
# beat:numbered:] (an entry's key is that plus its name, as ``keys.Keys`` makes it);
# ARGV[2]: JSON, per tick [its id, how many numbers, the entry, its scheduled time, 1
# to obey a pause (0: a tick fired by hand), 1 if it fires late, how long numbers are
# kept, the version of the run-time entry beat fired it from ('' for a config entry),
# max_runs (0: none), 1 to skip an overlap, then (or nothing) the run of ticks before
# it skipped for being later than the window: its count, first, last and record].
# Times are strings, Python's repr of the float: a skip's record is written with them
# as json.dumps would (``records.Skip.record``), and cjson would round them.
# Returns, in one string, per tick in order: its first number and the numbers lifted to
# the floor (counted on the first tick), space-separated; a first number of -1:
# skipped while paused; -2: the entry has had its max_runs; -3: skipped,
# its previous tick is not settled (overlap); -4: the run-time entry changed or was
# removed since beat read it (nothing counted: beat reads it again).
# max_runs counts the ticks numbered (schedule:runs), in this call: exactly that many,
# whoever numbers them. An overlap is the entry's latest tick numbered not yet done (its
# done:<tick> bits) while younger than TICK_DEADLINE (by then it is done or failed).
# The numbers of the entry's latest tick are kept with its id, and those of its ticks
# of the last seconds it is given by scheduled time (beat:numbered, the entry's catch-up
# window), so asking again for the same tick (a retried write, a beat that died
# before sending it, or a beat that took the lock from one still sending the ticks it
# had numbered, each next holder firing them again) returns the same numbers: no
# gap, no double allocation, and a tick sent twice is the same message twice.
# The floor is the highest number the caller (beat) was given before: a Sentinel
# failover that lost the master's last writes leaves last_message_number behind the
# numbers already sent, and numbering goes on from the floor instead of giving them
# again (the count lifted is returned, for beat to say so).
# A tick of a paused entry gets no number (-1): it is skipped, and becomes the tick
# the entry's next beat goes on from. A tick numbered is counted fired, once; a tick
# skipped is counted skipped, once: only if it is past beat:last and the latest tick
# numbered (ticks go in order: one at or before either was fired or skipped already).
NUMBER = (
    _SKIPPED
    + """
local shared = cjson.decode(ARGV[1])
local floor, kept_records, prefix = tonumber(shared[1]), shared[2], shared[3]
local deadline, now = tonumber(shared[4]), shared[5]
local number_key, manual_key, last_key = shared[6], shared[7], shared[8]
local entry_key, skips_key, numbered_key = shared[9], shared[10], shared[11]
local totals, paused, entries, revs, runs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local is_paused = {}
local listed = redis.call('HKEYS', paused)
for _, name in ipairs(listed) do is_paused[name] = true end
local stored = tonumber(redis.call('HGET', totals, 'last_message_number') or '0')
local lifted = 0
if floor > stored then
  lifted = floor - stored
  stored = floor
end
local last_number = stored
local fired = {}
local function record(reason, t)
  return '{"reason": "' .. reason .. '", "first": ' .. t .. ', "last": ' .. t ..
    ', "count": 1, "at": ' .. now .. '}'
end
local function number(a)
  local id, count, entry, t = a[1], tonumber(a[2]), a[3], a[4]
  local obey, late, keep, rev = a[5] == 1, a[6] == 1, tonumber(a[7]), a[8]
  local most, overlap = tonumber(a[9]), a[10] == 1
  local held_key = (obey and number_key or manual_key) .. entry
  local last_of, hash, skips = last_key .. entry, entry_key .. entry, skips_key .. entry
  local numbered = numbered_key .. entry
  local held = redis.call('GET', held_key)
  if held then
    local held_id, first = string.match(held, '^(.*) (%d+)$')
    if held_id == id then return tonumber(first) end
  end
  local at = math.floor(tonumber(t) * 1000 + 0.5)
  for _, kept in ipairs(redis.call('ZRANGEBYSCORE', numbered, at, at)) do
    local kept_id, first = string.match(kept, '^(.*) (%d+)$')
    if kept_id == id then return tonumber(first) end
  end
  local function handled(when)
    local last = tonumber(redis.call('GET', last_of) or '')
    if last and when <= last then return true end
    local ms = nil
    if held then ms = tonumber(string.match(held, '@(%d+) %d+$')) end
    return ms ~= nil and math.floor(when * 1000 + 0.5) <= ms
  end
  local function skip(reason, n, first, last, rec)
    if handled(tonumber(first)) then return end
    skipped(totals, hash, skips, entries, entry, reason, n, rec, kept_records)
    local current = tonumber(redis.call('GET', last_of) or '')
    if not current or tonumber(last) > current then redis.call('SET', last_of, last) end
  end
  if rev ~= '' and redis.call('HGET', revs, entry) ~= rev then
    return -4
  end
  if obey and #a >= 14 then
    skip('window', a[11], a[12], a[13], a[14])
  end
  if obey and is_paused[entry] then
    skip('paused', 1, t, t, record('paused', t))
    return -1
  end
  if obey and most > 0 then
    if tonumber(redis.call('HGET', runs, entry) or '0') >= most then return -2 end
  end
  if obey and overlap and held then
    local held_id = string.match(held, '^(.*) %d+$')
    local ms = tonumber(string.match(held, '@(%d+) %d+$'))
    local young = ms and at - ms < deadline * 1000
    if young and redis.call('BITCOUNT', prefix .. 'done:' .. held_id) < count then
      skip('overlap', 1, t, t, record('overlap', t))
      return -3
    end
  end
  local first = last_number + 1
  last_number = last_number + count
  -- with each tick: a script that errs half-way keeps what it has done
  redis.call('HSET', totals, 'last_message_number', last_number)
  redis.call('SET', held_key, id .. ' ' .. first)
  redis.call('ZADD', numbered, at, id .. ' ' .. first)
  redis.call('ZREMRANGEBYSCORE', numbered, '-inf', '(' .. (at - keep * 1000))
  fired[entry] = true
  redis.call('HINCRBY', hash, obey and 'ticks' or 'ticks_manual', 1)
  if late then redis.call('HINCRBY', hash, 'ticks_late', 1) end
  if obey and most > 0 then redis.call('HINCRBY', runs, entry, 1) end
  return first
end
local out = {}
for _, a in ipairs(cjson.decode(ARGV[2])) do
  out[#out + 1] = number(a)
  out[#out + 1] = 0
end
if lifted > 0 and last_number == stored then
  redis.call('HSET', totals, 'last_message_number', last_number)
end
local names = {}
for name in pairs(fired) do
  names[#names + 1] = name
  if #names == 1000 then redis.call('SADD', entries, unpack(names)); names = {} end
end
if #names > 0 then redis.call('SADD', entries, unpack(names)) end
if #out > 0 then out[2] = lifted end
return table.concat(out, ' ')
"""
)

# KEYS: beat:last:<entry>, beat:number:<entry>, totals, entry:<entry>, entries,
#       skips:<entry>.
# ARGV: the entry, beat:last and beat:number as the caller read them ('' for none),
#       records kept, beat:last to set, then (reason, count, record) per run.
# A beat that takes the beat lock skips the runs it decided from what it read, only if
# that is still so (compare and set): a retried write, or a second beat deciding from
# the same state, finds beat:last moved and counts nothing (0 if it was moved to this
# very value, else -1: read again and decide again).
SKIP = (
    _SKIPPED
    + """
local last = redis.call('GET', KEYS[1]) or ''
if last ~= ARGV[2] or (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then
  if last == ARGV[5] then return 0 end
  return -1
end
local total = 0
for i = 6, #ARGV, 3 do
  local n = tonumber(ARGV[i + 1])
  skipped(KEYS[3], KEYS[4], KEYS[6], KEYS[5], ARGV[1], ARGV[i], n, ARGV[i + 2], ARGV[4])
  total = total + n
end
redis.call('SET', KEYS[1], ARGV[5])
return total
"""
)

# KEYS: done:<tick> of each tick.  ARGV: each tick's batch.  Per tick, the indexes of
# its messages done (an empty list for a tick with none).
DONE = """
local out = {}
for t = 1, #KEYS do
  local done = {}
  if redis.call('EXISTS', KEYS[t]) == 1 then
    for i = 0, tonumber(ARGV[t]) - 1 do
      if redis.call('GETBIT', KEYS[t], i) == 1 then done[#done + 1] = i end
    end
  end
  out[t] = done
end
return out
"""

# KEYS: history:<entry> of each tick.  ARGV: records kept, then each tick's record.
# Adds each tick that ended to its entry's history, newest first.
HISTORY = """
local kept = tonumber(ARGV[1])
for t = 1, #KEYS do
  redis.call('LPUSH', KEYS[t], ARGV[t + 1])
  redis.call('LTRIM', KEYS[t], 0, kept - 1)
end
return #KEYS
"""

# KEYS: entries.  ARGV: the key entry: of an entry named ''.  Every entry's counters,
# as one JSON object {entry: [field, value, ...]}, read at once (``Stats.snapshot``).
ENTRY_COUNTERS = """
local all = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  all[name] = redis.call('HGETALL', ARGV[1] .. name)
end
if next(all) == nil then return '{}' end
return cjson.encode(all)
"""

# KEYS: done:<tick> of each tick.  How many messages of each are done, space-separated.
DONE_COUNTS = """
local counts = {}
for i = 1, #KEYS do counts[i] = redis.call('BITCOUNT', KEYS[i]) end
return table.concat(counts, ' ')
"""

# KEYS: beat:sent, beat:triggers.  ARGV: the time they were sent, the key beat:last: of
# an entry named '', then JSON, per tick sent [its entry, its scheduled time (a string),
# its member of beat:sent, its request of beat:triggers ('' if it was not by hand)].
# Beat sent these ticks: where the next beat goes on from, and each one to see done.
RECORD = """
local last_key = ARGV[2]
for _, t in ipairs(cjson.decode(ARGV[3])) do
  if t[4] == '' then  -- beat:last never goes back (an entry's ticks may be in two groups)
    local last = tonumber(redis.call('GET', last_key .. t[1]) or '')
    if not last or tonumber(t[2]) > last then redis.call('SET', last_key .. t[1], t[2]) end
  else
    redis.call('LREM', KEYS[2], 0, t[4])
  end
  redis.call('ZADD', KEYS[1], ARGV[1], t[3])
end
return 1
"""

# KEYS: beat:sent.  ARGV: cutoff, now, member.  Takes a sent tick that is overdue (its
# score at or before the cutoff) for sending again, once: the score moves to now.
CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not score or tonumber(score) > tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# KEYS: pending, totals.  ARGV: cutoff, entry key prefix, limit.
# Publishes left pending by a publisher that died (SIGKILL, lost host) become unconfirmed.
REAP = (
    _ENTRY_OF
    + """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, key in ipairs(keys) do
  redis.call('ZREM', KEYS[1], key)
  redis.call('HINCRBY', KEYS[2], 'unconfirmed', 1)
  redis.call('HINCRBY', ARGV[2] .. entry_of(key), 'unconfirmed', 1)
end
return #keys
"""
)

# KEYS: totals, beat:number:<entry>, beat:numbered:<entry>, entry:<entry>, entries.
# ARGV: the tick's id, how many numbers, its scheduled time, the entry.
# The first number of a tick fired again by ``schedule backfill``: the numbers it was
# given before, if beat:number or beat:numbered still know them; else new ones, kept
# there, and counted a tick fired by hand.
BACKFILL = """
local held = redis.call('GET', KEYS[2])
if held then
  local id, first = string.match(held, '^(.*) (%d+)$')
  if id == ARGV[1] then return tonumber(first) end
end
local at = math.floor(tonumber(ARGV[3]) * 1000 + 0.5)
for _, kept in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], at, at)) do
  local id, first = string.match(kept, '^(.*) (%d+)$')
  if id == ARGV[1] then return tonumber(first) end
end
local first = redis.call('HINCRBY', KEYS[1], 'last_message_number', ARGV[2]) - ARGV[2] + 1
redis.call('ZADD', KEYS[3], at, ARGV[1] .. ' ' .. first)
redis.call('SADD', KEYS[5], ARGV[4])
redis.call('HINCRBY', KEYS[4], 'ticks_manual', 1)
return first
"""
