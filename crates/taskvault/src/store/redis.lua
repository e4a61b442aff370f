-- The writes (and the reads that must see one state) of TaskVault's Redis store: one script,
-- each call one operation, atomic on the server (no other command runs while it does). Every
-- write first checks what it depends on, then writes: a check that fails has written nothing.
-- ARGV[1] is the store's key prefix, ARGV[2] the operation; the layout of the keys is in
-- docs/format.md ("Metadata and blobs (Redis)").

local P = ARGV[1]
local op = ARGV[2]
local changed = false

local function k(...)
  return P .. ':' .. table.concat({...}, ':')
end

local function split(s)
  local t = {}
  if not s then return t end
  for w in string.gmatch(s, '%S+') do t[#t + 1] = w end
  return t
end

local function num(s)
  return tonumber(s) or 0
end

-- A run's member of the time indexes: its position, then its id (ties sort by position).
local function member(seq, id)
  return string.format('%020d:%s', tonumber(seq), id)
end

local function bump(name, by)
  if by ~= 0 then redis.call('HINCRBY', k('counters'), name, by) end
end

local function census(name, by)
  if by ~= 0 then redis.call('HINCRBY', k('census'), name, by) end
end

local function task_count(task, entries, bytes)
  redis.call('SADD', k('tasks'), task)
  redis.call('HINCRBY', k('tc', task), 'entries', entries)
  redis.call('HINCRBY', k('tc', task), 'bytes', bytes)
end

-- Drops blob d: its row, its users and its bytes; returns the stored bytes freed.
local function drop_blob(d)
  local row = k('b', d)
  local f = redis.call('HMGET', row, 'stored', 'codec')
  local inline = redis.call('HEXISTS', row, 'data')
  redis.call('DEL', row, k('u', d), k('data', d))
  redis.call('ZREM', k('blobs'), d)
  if not f[2] then return 0 end
  local stored = num(f[1])
  census('blobs', -1)
  if inline == 1 then
    census('inline_blobs', -1)
    census('inline_bytes', -stored)
  end
  bump('stored_bytes', -stored)
  return stored
end

-- Key `key` no longer uses `digests` (but those in `keep`); a blob nobody uses is dropped.
local function unref(key, digests, keep)
  local freed = 0
  for _, d in ipairs(digests) do
    if not (keep and keep[d]) then
      redis.call('SREM', k('u', d), key)
      if redis.call('SCARD', k('u', d)) == 0 then freed = freed + drop_blob(d) end
    end
  end
  return freed
end

-- Run `id`, live for `key`, is live no more (with `status`, unless its row goes anyway).
local function unlive(id, key, status, keep)
  local r = k('r', id)
  local f = redis.call('HMGET', r, 'task', 'size', 'digests')
  redis.call('DEL', k('l', key))
  redis.call('ZREM', k('lru'), key)
  redis.call('ZREM', k('exp'), key)
  redis.call('ZREM', k('liveseq'), key)
  census('live', -1)
  task_count(f[1] or '', -1, -num(f[2]))
  if status then redis.call('HSET', r, 'live', '0', 'status', status) end
  changed = true
  return unref(key, split(f[3]), keep)
end

local function index_run(id, seq, key, task, created)
  local m = member(seq, id)
  redis.call('ZADD', k('all'), created, m)
  redis.call('ZADD', k('task', task), created, m)
  redis.call('ZADD', k('runs', key), created, m)
  redis.call('ZADD', k('ids'), 0, id)
  redis.call('ZADD', k('keys'), 0, key)
  redis.call('SADD', k('tasks'), task)
end

local function delete_run_row(id)
  local r = k('r', id)
  local f = redis.call('HMGET', r, 'key', 'task', 'status', 'seq')
  if f[4] then
    local m = member(f[4], id)
    redis.call('ZREM', k('all'), m)
    redis.call('ZREM', k('task', f[2] or ''), m)
    redis.call('ZREM', k('runs', f[1] or ''), m)
  end
  redis.call('ZREM', k('ids'), id)
  if redis.call('DEL', r) == 1 then
    census('runs', -1)
    if f[3] == 'failed' then census('failed_runs', -1) end
  end
  if f[1] and redis.call('ZCARD', k('runs', f[1])) == 0 then
    redis.call('ZREM', k('keys'), f[1])
  end
end

-- Removes every run of `key`; returns its live run's fields (or false) and the bytes freed.
local function remove_key(key)
  local live = redis.call('GET', k('l', key))
  local out, freed = false, 0
  if live then
    out = redis.call('HGETALL', k('r', live))
    freed = unlive(live, key, nil, nil)
  end
  for _, m in ipairs(redis.call('ZRANGE', k('runs', key), 0, -1)) do
    delete_run_row(string.sub(m, 22))
  end
  redis.call('DEL', k('runs', key))
  redis.call('ZREM', k('keys'), key)
  -- Out of the live indexes even if its pointer was lost (evicted under maxmemory): an
  -- eviction loop never meets the same key twice.
  redis.call('ZREM', k('lru'), key)
  redis.call('ZREM', k('exp'), key)
  redis.call('ZREM', k('liveseq'), key)
  return out, freed
end

-- The live entries using blob d are retired as corrupt; returns their fields.
local function retire_users(d)
  local out = {}
  for _, key in ipairs(redis.call('SMEMBERS', k('u', d))) do
    local live = redis.call('GET', k('l', key))
    if live then
      out[#out + 1] = redis.call('HGETALL', k('r', live))
      unlive(live, key, 'corrupt', nil)
    end
  end
  return out
end

local function run_fields(E, seq, live, status, parent)
  return {'id', E.id, 'doc', E.doc, 'key', E.key, 'live', live, 'status', status, 'task', E.task,
    'created', E.created, 'last', E.last, 'count', E.count, 'expires', E.expires,
    'size', E.size, 'ttlx', E.ttlx, 'seq', seq, 'parent', parent, 'digests', E.digests}
end

-- An entry as the arguments from `i` spell it; returns it and the index after it.
local function read_entry(i)
  local E = {key = ARGV[i], id = ARGV[i + 1], doc = ARGV[i + 2], task = ARGV[i + 3],
    created = ARGV[i + 4], expires = ARGV[i + 5], size = ARGV[i + 6], ttlx = ARGV[i + 7],
    digests = ARGV[i + 8], last = ARGV[i + 9], count = ARGV[i + 10], blobs = {}}
  local nb = tonumber(ARGV[i + 11])
  i = i + 12
  for b = 1, nb do
    E.blobs[b] = {d = ARGV[i], size = ARGV[i + 1], stored = ARGV[i + 2], codec = ARGV[i + 3],
      mode = ARGV[i + 4], data = ARGV[i + 5]}
    i = i + 6
  end
  return E, i
end

local function lookup(key)
  local live = redis.call('GET', k('l', key))
  if not live then return false end
  local run = redis.call('HGETALL', k('r', live))
  if #run == 0 then return false end
  local out = {run}
  local digests
  for j = 1, #run, 2 do
    if run[j] == 'digests' then digests = run[j + 1] end
  end
  for _, d in ipairs(split(digests)) do
    local row = redis.call('HGETALL', k('b', d))
    if #row > 0 then
      row[#row + 1] = 'digest'
      row[#row + 1] = d
      out[#out + 1] = row
    end
  end
  return out
end

if op == 'save' then
  local n = tonumber(ARGV[3])
  local i = 4
  local entries = {}
  for e = 1, n do
    entries[e], i = read_entry(i)
  end
  -- Checks: every blob referenced is stored, or comes with this save (its bytes in place).
  local coming = {}
  for _, E in ipairs(entries) do
    for _, B in ipairs(E.blobs) do
      if redis.call('EXISTS', k('b', B.d)) == 0 then
        if B.mode == 'ref' then return {'vanished', B.d} end
        if B.mode == 'staged' and redis.call('EXISTS', k('data', B.d)) == 0 then
          return {'vanished', B.d}
        end
        coming[B.d] = true
      end
    end
    for _, d in ipairs(split(E.digests)) do
      if not coming[d] and redis.call('EXISTS', k('b', d)) == 0 then return {'vanished', d} end
    end
  end
  local out = {'ok'}
  for _, E in ipairs(entries) do
    for _, B in ipairs(E.blobs) do
      local row = k('b', B.d)
      if redis.call('EXISTS', row) == 0 then
        redis.call('HSET', row, 'size', B.size, 'stored', B.stored, 'codec', B.codec)
        if B.mode == 'inline' then
          redis.call('HSET', row, 'data', B.data)
          census('inline_blobs', 1)
          census('inline_bytes', num(B.stored))
        end
        redis.call('ZADD', k('blobs'), 0, B.d)
        census('blobs', 1)
        bump('stored_bytes', num(B.stored))
      end
    end
    -- New references first, so blobs the old run shares with the new one stay.
    local keep = {}
    for _, d in ipairs(split(E.digests)) do
      keep[d] = true
      redis.call('SADD', k('u', d), E.key)
    end
    local old = redis.call('GET', k('l', E.key))
    if old then unlive(old, E.key, 'superseded', keep) end
    local seq = redis.call('INCR', k('seq'))
    redis.call('HSET', k('r', E.id), unpack(run_fields(E, seq, '1', 'live', old or '')))
    index_run(E.id, seq, E.key, E.task, num(E.created))
    redis.call('SET', k('l', E.key), E.id)
    redis.call('ZADD', k('lru'), math.max(num(E.created), num(E.last)), E.key)
    if E.expires ~= '' then redis.call('ZADD', k('exp'), num(E.expires), E.key) end
    redis.call('ZADD', k('liveseq'), seq, E.key)
    census('live', 1)
    census('runs', 1)
    task_count(E.task, 1, num(E.size))
    redis.call('DEL', k('f', E.key))
    bump('saves', 1)
    out[#out + 1] = old or ''
  end
  if changed then redis.call('PUBLISH', k('changes'), '') end
  return out

elseif op == 'failed' then
  local E = read_entry(3)
  local message = ARGV[3 + 12]
  local latest = redis.call('ZREVRANGE', k('runs', E.key), 0, 0)
  local parent = ''
  if latest[1] then parent = string.sub(latest[1], 22) end
  local seq = redis.call('INCR', k('seq'))
  redis.call('HSET', k('r', E.id), unpack(run_fields(E, seq, '0', 'failed', parent)))
  index_run(E.id, seq, E.key, E.task, num(E.created))
  census('runs', 1)
  census('failed_runs', 1)
  redis.call('HSET', k('f', E.key), 'message', message, 'at', E.created)
  return parent

elseif op == 'lookup' then
  local out = {}
  for j = 3, #ARGV do
    out[#out + 1] = lookup(ARGV[j])
  end
  return out

elseif op == 'accesses' then
  -- ARGV: number of hits, (id, at, saved ms) each, misses as (task, count) pairs after a
  -- count of them, then remote hits.
  local n = tonumber(ARGV[3])
  local i = 4
  local hits, saved = 0, 0
  for _ = 1, n do
    local id, at, d = ARGV[i], num(ARGV[i + 1]), num(ARGV[i + 2])
    i = i + 3
    local r = k('r', id)
    local f = redis.call('HMGET', r, 'task', 'created', 'last', 'live', 'key')
    local task = ''
    if f[1] then
      task = f[1]
      local last = math.max(num(f[2]), num(f[3]), at)
      redis.call('HINCRBY', r, 'count', 1)
      redis.call('HSET', r, 'last', last)
      if f[4] == '1' then redis.call('ZADD', k('lru'), last, f[5]) end
    end
    redis.call('SADD', k('tasks'), task)
    redis.call('HINCRBY', k('tc', task), 'hits', 1)
    redis.call('HINCRBY', k('tc', task), 'saved', d)
    hits = hits + 1
    saved = saved + d
  end
  local m = tonumber(ARGV[i])
  i = i + 1
  local misses = 0
  for _ = 1, m do
    local task, c = ARGV[i], num(ARGV[i + 1])
    i = i + 2
    redis.call('SADD', k('tasks'), task)
    redis.call('HINCRBY', k('tc', task), 'misses', c)
    misses = misses + c
  end
  bump('hits', hits)
  bump('time_saved_ms', saved)
  bump('misses', misses)
  bump('remote_hits', num(ARGV[i]))
  return 'ok'

elseif op == 'remove_keys' then
  local count_as = ARGV[3]
  local out = {}
  for j = 4, #ARGV do
    local live = remove_key(ARGV[j])
    if live then out[#out + 1] = live end
  end
  if count_as ~= '' then bump(count_as, #out) end
  if changed then redis.call('PUBLISH', k('changes'), '') end
  return out

elseif op == 'remove_run' then
  local id = ARGV[3]
  local r = k('r', id)
  local f = redis.call('HMGET', r, 'key', 'live')
  if not f[1] then return {} end
  local key = f[1]
  local out = {}
  if f[2] == '1' then
    out[1] = redis.call('HGETALL', r)
    unlive(id, key, nil, nil)
  end
  delete_run_row(id)
  -- The runs that followed it no longer name it as their parent.
  for _, m in ipairs(redis.call('ZRANGE', k('runs', key), 0, -1)) do
    local child = k('r', string.sub(m, 22))
    if redis.call('HGET', child, 'parent') == id then redis.call('HSET', child, 'parent', '') end
  end
  if changed then redis.call('PUBLISH', k('changes'), '') end
  return out

elseif op == 'evict' then
  local now, target, limit = num(ARGV[3]), tonumber(ARGV[4]), num(ARGV[5])
  local stored = num(redis.call('HGET', k('counters'), 'stored_bytes'))
  local function over() return target == nil or stored > target end
  local out = {}
  local expired, evicted = 0, 0
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', k('exp'), '-inf', now, 'LIMIT', 0, limit)) do
    if not over() or expired >= limit then break end
    local live, freed = remove_key(key)
    stored = stored - freed
    expired = expired + 1
    if live then out[#out + 1] = live end
  end
  if target then
    while over() and expired + evicted < limit do
      local batch = redis.call('ZRANGE', k('lru'), 0, 63)
      if #batch == 0 then break end
      for _, key in ipairs(batch) do
        if not over() or expired + evicted >= limit then break end
        local live, freed = remove_key(key)
        stored = stored - freed
        evicted = evicted + 1
        if live then out[#out + 1] = live end
      end
    end
  end
  bump('expired', expired)
  bump('evictions', evicted)
  if changed then redis.call('PUBLISH', k('changes'), '') end
  return out

elseif op == 'forget_corrupt' then
  local d = ARGV[3]
  local out = retire_users(d)
  drop_blob(d)
  bump('corrupt', 1)
  if changed then redis.call('PUBLISH', k('changes'), '') end
  return out

elseif op == 'drop_damaged_run' then
  local id = ARGV[3]
  local f = redis.call('HMGET', k('r', id), 'key', 'live')
  if f[1] and f[2] == '1' and redis.call('GET', k('l', f[1])) == id then
    unlive(id, f[1], nil, nil)
    bump('corrupt', 1)
  end
  delete_run_row(id)
  if changed then redis.call('PUBLISH', k('changes'), '') end
  return 'ok'

elseif op == 'drop_damaged_blob' then
  local d = ARGV[3]
  local out = retire_users(d)
  bump('corrupt', #out)
  drop_blob(d)
  if changed then redis.call('PUBLISH', k('changes'), '') end
  return 'ok'

elseif op == 'reset_counters' then
  local stored = redis.call('HGET', k('counters'), 'stored_bytes')
  redis.call('DEL', k('counters'))
  if stored then redis.call('HSET', k('counters'), 'stored_bytes', stored) end
  for _, task in ipairs(redis.call('SMEMBERS', k('tasks'))) do
    redis.call('HDEL', k('tc', task), 'hits', 'misses', 'saved')
  end
  return 'ok'

elseif op == 'lease_ask' then
  -- A server claim's lease (ns, key): taken unless one holds it; else who and for how long.
  local lk = k('lease', ARGV[3], ARGV[4])
  if redis.call('SET', lk, ARGV[5] .. '\n' .. ARGV[6], 'NX', 'PX', ARGV[7]) then
    return {'granted'}
  end
  local v = redis.call('GET', lk) or ''
  local nl = string.find(v, '\n', 1, true)
  return {'held', nl and string.sub(v, nl + 1) or '', redis.call('PTTL', lk)}

elseif op == 'lease_renew' then
  local lk = k('lease', ARGV[3], ARGV[4])
  local v = redis.call('GET', lk)
  if v and string.sub(v, 1, #ARGV[5] + 1) == ARGV[5] .. '\n' then
    return redis.call('PEXPIRE', lk, ARGV[6])
  end
  return 0

elseif op == 'lease_end' then
  -- Ends the lease (ARGV[5], or any with ''), telling every replica (ARGV[6]).
  local lk = k('lease', ARGV[3], ARGV[4])
  local v = redis.call('GET', lk)
  if v and (ARGV[5] == '' or string.sub(v, 1, #ARGV[5] + 1) == ARGV[5] .. '\n') then
    redis.call('DEL', lk)
    redis.call('PUBLISH', k('leases'), ARGV[6])
    return 1
  end
  return 0

elseif op == 'release' then
  -- A lease (a claim) released by its holder: gone, and its waiters told.
  if redis.call('GET', ARGV[3]) == ARGV[4] then
    redis.call('DEL', ARGV[3])
    redis.call('PUBLISH', k('claims'), ARGV[3])
    return 1
  end
  return 0

elseif op == 'renew' then
  if redis.call('GET', ARGV[3]) == ARGV[4] then
    return redis.call('PEXPIRE', ARGV[3], ARGV[5])
  end
  return 0
end

return redis.error_reply('unknown operation ' .. tostring(op))
