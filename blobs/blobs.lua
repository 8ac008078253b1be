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

-- One task of the account no longer pins the digest.
local function unpin(account_pins, digest)
  if redis.call('HINCRBY', account_pins, digest, -1) <= 0 then
    redis.call('HDEL', account_pins, digest)
  end
end

-- Bytes an account uses: its live holdings, the blobs its tasks pin (whose holdings may
-- have lapsed while a long task ran) and its unfinished uploads (announced sizes). It
-- walks at most the MAX_ACCOUNT_BLOBS an account may have (hm_blob_begin).
local function usage(blobs, holdings, account_pins, account_uploads, now)
  local total = 0
  for _, digest in ipairs(redis.call('ZRANGE', holdings, '(' .. now, '+inf', 'BYSCORE')) do
    total = total + (tonumber(redis.call('HGET', blobs, digest)) or 0)
  end
  for _, digest in ipairs(redis.call('HKEYS', account_pins)) do
    local expiry = redis.call('ZSCORE', holdings, digest)
    if not expiry or tonumber(expiry) <= tonumber(now) then
      total = total + (tonumber(redis.call('HGET', blobs, digest)) or 0)
    end
  end
  for _, size in ipairs(redis.call('HVALS', account_uploads)) do
    total = total + tonumber(size)
  end
  return total
end

-- KEYS: blobs, holdings, holders(digest), account_uploads, account_resume, upload(new id),
--       uploads, account_pins
-- ARGV: account, digest ("" none announced), size, now, expiry, quota, max_open, new id,
--       resume field, max blobs
-- → {"held"} | {"size", held size} | {"resume", id} | {"quota", used}
--   | {"too_many", open} | {"too_many_blobs", held} | {"new", id}
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
  local blob_count = redis.call('ZCARD', keys[2]) + redis.call('HLEN', keys[8])
  if blob_count >= tonumber(args[10]) then
    return {'too_many_blobs', blob_count}
  end
  local used = usage(keys[1], keys[2], keys[8], keys[4], now)
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

-- KEYS: blobs, holdings, account_pins, account_uploads   ARGV: now   → bytes used
redis.register_function('hm_blob_usage', function(keys, args)
  return usage(keys[1], keys[2], keys[3], keys[4], args[1])
end)

-- One result per attempt: once one is committed, another digest is refused (each would be
-- kept for the result retention: a worker could fill the hub's disk).
-- KEYS: blobs, task_results, upload(new id), uploads
-- ARGV: task, attempt, digest, size, now, new id, holder
-- → {"done"} (committed) | {"committed", its digest} (another one is) | {"open", id} (an
--   upload of this attempt exists) | {"new", id}
redis.register_function('hm_blob_begin_result', function(keys, args)
  local attempt, digest = args[2], args[3]
  local committed = redis.call('HGET', keys[2], attempt)
  local committed_size = committed and redis.call('HGET', keys[1], committed)
  if committed_size then
    if committed == digest and tonumber(committed_size) == tonumber(args[4]) then
      return {'done'}
    end
    return {'committed', committed}
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
-- (its record stays a while, done, so a client that lost the reply can ask). A result
-- committed after its task was released (and not the result it kept) expires at once.
-- KEYS: blobs, upload, uploads, account_uploads, account_resume, holdings(holder),
--       holders(digest), task_results
-- ARGV: id, digest, size, expiry, holder, resume field ("" none), attempt ("" an input),
--       seconds the done record stays, now
redis.register_function('hm_blob_commit', function(keys, args)
  local id, digest = args[1], args[2]
  local expiry = args[4]
  if args[7] ~= '' then
    local kept = redis.call('HGET', keys[8], 'released')
    if kept and kept ~= digest then
      expiry = args[9]
    end
  end
  redis.call('HSETNX', keys[1], digest, args[3])
  hold(keys[6], keys[7], args[5], digest, expiry)
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

-- All or nothing: every digest must be held by the account; then the task pins them all
-- (the pin records when, so that the garbage collector spares a task not yet stored).
-- KEYS: blobs, holdings, account_pins, then per digest: holders(digest), pins(digest)
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
    local k = 4 + (i - 5) * 2
    hold(keys[2], keys[k], args[1], args[i], args[4])
    if redis.call('HSETNX', keys[k + 1], args[2], args[3] .. ' ' .. args[1]) == 1 then
      redis.call('HINCRBY', keys[3], args[i], 1)
    end
  end
  return sizes
end)

-- The task ended: its pins go (the owner keeps what the task had pinned until the input
-- expiry), its result is kept until the result expiry, other attempts' results expire now,
-- and so does any committed later (hm_blob_commit reads "released").
-- KEYS: holdings(account), holdings(result holder), task_results, account_pins,
--       per input: holders(digest), pins(digest); per result-held digest: holders(digest)
-- ARGV: account, task, input expiry, result holder, result digest, result expiry, now,
--       result ttl, n inputs, input digest..., result-held digest...
-- → 1, or 0 when the result-held digests are not those given (one was committed since the
--   caller read them: read them again)
redis.register_function('hm_blob_release', function(keys, args)
  local n = tonumber(args[9])
  local given = {}
  for j = 10 + n, #args do
    given[args[j]] = true
  end
  local results = redis.call('ZRANGE', keys[2], 0, -1)
  if #results ~= #args - 9 - n then
    return 0
  end
  for _, digest in ipairs(results) do
    if not given[digest] then
      return 0
    end
  end
  for i = 1, n do
    local digest = args[9 + i]
    if redis.call('HDEL', keys[4 + 2 * i], args[2]) == 1 then
      hold(keys[1], keys[3 + 2 * i], args[1], digest, args[3])
      unpin(keys[4], digest)
    end
  end
  for j = 1, #args - 9 - n do
    local digest, holders = args[9 + n + j], keys[4 + 2 * n + j]
    if digest == args[5] then
      hold(keys[2], holders, args[4], digest, args[6])
    elseif redis.call('ZSCORE', keys[2], digest) then
      redis.call('ZADD', keys[2], args[7], digest)
      redis.call('ZADD', holders, args[7], args[4])
    end
  end
  redis.call('HSET', keys[3], 'released', args[5])
  redis.call('EXPIRE', keys[3], args[8])
  return 1
end)

-- Garbage: drop the given stale pins and expired holdings (each re-checked), then forget
-- the blob when nothing holds or pins it any more. The caller deletes its file.
-- KEYS: blobs, holders(digest), pins(digest), account_pins(owner) per stale task,
--       holdings(account) per expired holder
-- ARGV: digest, now, n stale tasks, task..., account... (one per holdings key)
-- → the blob's size when forgotten, else -1
redis.register_function('hm_blob_forget', function(keys, args)
  local digest, now, n = args[1], tonumber(args[2]), tonumber(args[3])
  for i = 1, n do
    if redis.call('HDEL', keys[3], args[3 + i]) == 1 then
      unpin(keys[3 + i], digest)
    end
  end
  for j = 1, #args - 3 - n do
    local account = args[3 + n + j]
    local expiry = redis.call('ZSCORE', keys[2], account)
    if expiry and tonumber(expiry) <= now then
      redis.call('ZREM', keys[2], account)
      redis.call('ZREM', keys[3 + n + j], digest)
    end
  end
  if redis.call('ZCARD', keys[2]) > 0 or redis.call('HLEN', keys[3]) > 0 then
    return -1
  end
  local size = redis.call('HGET', keys[1], digest)
  redis.call('HDEL', keys[1], digest)
  redis.call('DEL', keys[2], keys[3])
  return tonumber(size) or 0
end)
