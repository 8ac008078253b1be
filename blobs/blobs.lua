#!lua name=hivemind_blobs
-- The blob store's index (keys: blobs/constants.py), loaded by blobs/index.py. The files are
-- blobs/store.py's; these functions keep the index consistent where two processes (web,
-- pool) change it at once: a holding and its blob recorded together, pins all-or-nothing,
-- a blob forgotten only when nothing holds or pins it at that very moment.
-- Errors are "<CODE> <detail>": NOT_HELD (mapped in blobs/index.py `LIBRARY`).
-- Times are unix seconds; a holding is live while its expiry is later than now.

-- The size of ``digest`` when ``holdings`` (an account's) holds it live, else nil.
local function held(blobs, holdings, digest, now)
  local size = redis.call('HGET', blobs, digest)
  local expiry = redis.call('ZSCORE', holdings, digest)
  if size and expiry and tonumber(expiry) > tonumber(now) then
    return tonumber(size)
  end
  return nil
end

-- The account holds the digest until at least ``expiry`` (an existing later one stays).
local function hold(holdings, holders, account, digest, expiry)
  redis.call('ZADD', holdings, 'GT', expiry, digest)
  redis.call('ZADD', holders, 'GT', expiry, account)
end

-- Bytes an account uses: its live holdings and its unfinished uploads (announced sizes).
local function usage(blobs, holdings, account_uploads, now)
  local total = 0
  for _, digest in ipairs(redis.call('ZRANGE', holdings, '(' .. now, '+inf', 'BYSCORE')) do
    total = total + (tonumber(redis.call('HGET', blobs, digest)) or 0)
  end
  for _, size in ipairs(redis.call('HVALS', account_uploads)) do
    total = total + tonumber(size)
  end
  return total
end

-- KEYS: blobs, holdings, holders(digest), account_uploads, account_resume, upload(new id),
--       uploads
-- ARGV: account, digest ("" none announced), size, now, expiry, quota, max_open, new id,
--       resume field
-- → {"held"} | {"size", held size} | {"resume", id} | {"quota", used}
--   | {"too_many", open} | {"new", id}
redis.register_function('hm_blob_begin', function(keys, args)
  local account, digest, size, now = args[1], args[2], tonumber(args[3]), args[4]
  if digest ~= '' then
    local have = held(keys[1], keys[2], digest, now)
    if have == size then
      hold(keys[2], keys[3], account, digest, args[5])
      return {'held'}
    elseif have then
      return {'size', have}
    end
    local open = redis.call('HGET', keys[5], args[9])
    if open then
      redis.call('ZADD', keys[7], 'XX', now, open)
      return {'resume', open}
    end
  end
  local used = usage(keys[1], keys[2], keys[4], now)
  if used + size > tonumber(args[6]) then
    return {'quota', used}
  end
  local open_count = redis.call('HLEN', keys[4])
  if open_count >= tonumber(args[7]) then
    return {'too_many', open_count}
  end
  redis.call('HSET', keys[6], 'account', account, 'kind', 'input', 'size', args[3],
    'digest', digest, 'task', '', 'attempt', '', 'created', now)
  redis.call('ZADD', keys[7], now, args[8])
  redis.call('HSET', keys[4], args[8], args[3])
  if digest ~= '' then
    redis.call('HSET', keys[5], args[9], args[8])
  end
  return {'new', args[8]}
end)

-- KEYS: blobs, holdings, account_uploads   ARGV: now   → bytes used
redis.register_function('hm_blob_usage', function(keys, args)
  return usage(keys[1], keys[2], keys[3], args[1])
end)

-- KEYS: blobs, task_results, upload(new id), uploads
-- ARGV: task, attempt, digest, size, now, new id, holder
-- → {"done"} (committed) | {"open", id} (an upload of this attempt exists) | {"new", id}
redis.register_function('hm_blob_begin_result', function(keys, args)
  local attempt, digest = args[2], args[3]
  if redis.call('HGET', keys[2], attempt) == digest
      and tonumber(redis.call('HGET', keys[1], digest)) == tonumber(args[4]) then
    return {'done'}
  end
  local open = redis.call('HGET', keys[2], 'upload:' .. attempt)
  if open then
    return {'open', open}
  end
  redis.call('HSET', keys[3], 'account', args[7], 'kind', 'result', 'size', args[4],
    'digest', digest, 'task', args[1], 'attempt', attempt, 'created', args[5])
  redis.call('ZADD', keys[4], args[5], args[6])
  redis.call('HSET', keys[2], 'upload:' .. attempt, args[6])
  return {'new', args[6]}
end)

-- The blob is complete and in data/: record it and its holding, and close the upload
-- (its record stays a while, done, so a client that lost the reply can ask).
-- KEYS: blobs, upload, uploads, account_uploads, account_resume, holdings(holder),
--       holders(digest), task_results
-- ARGV: id, digest, size, expiry, holder, resume field ("" none), attempt ("" an input),
--       seconds the done record stays
redis.register_function('hm_blob_commit', function(keys, args)
  local id, digest = args[1], args[2]
  redis.call('HSETNX', keys[1], digest, args[3])
  hold(keys[6], keys[7], args[5], digest, args[4])
  redis.call('HSET', keys[2], 'done', '1', 'digest', digest)
  redis.call('EXPIRE', keys[2], args[8])
  redis.call('ZREM', keys[3], id)
  redis.call('HDEL', keys[4], id)
  if args[6] ~= '' and redis.call('HGET', keys[5], args[6]) == id then
    redis.call('HDEL', keys[5], args[6])
  end
  if args[7] ~= '' then
    redis.call('HSET', keys[8], args[7], digest)
    if redis.call('HGET', keys[8], 'upload:' .. args[7]) == id then
      redis.call('HDEL', keys[8], 'upload:' .. args[7])
    end
  end
  return 1
end)

-- Forget an unfinished upload; with a cutoff, only when it was last touched before it.
-- KEYS: upload, uploads, account_uploads, account_resume, task_results
-- ARGV: id, resume field ("" none), attempt ("" an input), cutoff ("" always)   → 1 | 0
redis.register_function('hm_blob_drop_upload', function(keys, args)
  local id = args[1]
  if args[4] ~= '' then
    local touched = redis.call('ZSCORE', keys[2], id)
    if touched and tonumber(touched) > tonumber(args[4]) then
      return 0
    end
  end
  redis.call('DEL', keys[1])
  redis.call('ZREM', keys[2], id)
  redis.call('HDEL', keys[3], id)
  if args[2] ~= '' and redis.call('HGET', keys[4], args[2]) == id then
    redis.call('HDEL', keys[4], args[2])
  end
  if args[3] ~= '' and redis.call('HGET', keys[5], 'upload:' .. args[3]) == id then
    redis.call('HDEL', keys[5], 'upload:' .. args[3])
  end
  return 1
end)

-- All or nothing: every digest must be held by the account; then the task pins them all.
-- KEYS: blobs, holdings, then per digest: holders(digest), pins(digest)
-- ARGV: account, task, now, expiry, digest...   → their sizes, in order
redis.register_function('hm_blob_pin', function(keys, args)
  local sizes = {}
  for i = 5, #args do
    local size = held(keys[1], keys[2], args[i], args[3])
    if not size then
      return redis.error_reply('NOT_HELD ' .. args[i])
    end
    sizes[#sizes + 1] = size
  end
  for i = 5, #args do
    local k = 3 + (i - 5) * 2
    hold(keys[2], keys[k], args[1], args[i], args[4])
    redis.call('SADD', keys[k + 1], args[2])
  end
  return sizes
end)

-- The task ended: its pins go (the owner keeps what the task had pinned until the input
-- expiry), its result is kept until the result expiry, other attempts' results expire now.
-- KEYS: holdings(account), holdings(result holder), task_results,
--       per input: holders(digest), pins(digest); per result-held digest: holders(digest)
-- ARGV: account, task, input expiry, result holder, result digest, result expiry, now,
--       result ttl, n inputs, input digest..., result-held digest...
redis.register_function('hm_blob_release', function(keys, args)
  local n = tonumber(args[9])
  for i = 1, n do
    local digest = args[9 + i]
    if redis.call('SREM', keys[3 + 2 * i], args[2]) == 1 then
      hold(keys[1], keys[2 + 2 * i], args[1], digest, args[3])
    end
  end
  for j = 1, #args - 9 - n do
    local digest, holders = args[9 + n + j], keys[3 + 2 * n + j]
    if digest == args[5] then
      hold(keys[2], holders, args[4], digest, args[6])
    elseif redis.call('ZSCORE', keys[2], digest) then
      redis.call('ZADD', keys[2], args[7], digest)
      redis.call('ZADD', holders, args[7], args[4])
    end
  end
  redis.call('EXPIRE', keys[3], args[8])
  return 1
end)

-- Garbage: drop the given stale pins and expired holdings (each re-checked), then forget
-- the blob when nothing holds or pins it any more. The caller deletes its file.
-- KEYS: blobs, holders(digest), pins(digest), holdings(account) per expired holder
-- ARGV: digest, now, n stale tasks, task..., account... (one per holdings key)
-- → the blob's size when forgotten, else -1
redis.register_function('hm_blob_forget', function(keys, args)
  local digest, now, n = args[1], tonumber(args[2]), tonumber(args[3])
  for i = 1, n do
    redis.call('SREM', keys[3], args[3 + i])
  end
  for j = 1, #args - 3 - n do
    local account = args[3 + n + j]
    local expiry = redis.call('ZSCORE', keys[2], account)
    if expiry and tonumber(expiry) <= now then
      redis.call('ZREM', keys[2], account)
      redis.call('ZREM', keys[3 + j], digest)
    end
  end
  if redis.call('ZCARD', keys[2]) > 0 or redis.call('SCARD', keys[3]) > 0 then
    return -1
  end
  local size = redis.call('HGET', keys[1], digest)
  redis.call('HDEL', keys[1], digest)
  redis.call('DEL', keys[2], keys[3])
  return tonumber(size) or 0
end)
