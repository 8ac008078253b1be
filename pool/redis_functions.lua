#!lua name=hivemind_pool
-- Atomic task state transitions, loaded next to the mesh library by pool/store.py.
-- Every message from an agent names (task, attempt, node); a transition happens only when
-- that is still the task's current attempt on that node ("fencing"), so a task completes
-- exactly once however late a superseded attempt reports.
-- Errors are "<CODE> <detail>": NOT_FOUND, STALE, FINISHED (mapped in pool/store.py `TASKS`).
-- ARGV[1] is always the task id.

local function fenced(task_key, attempt, node)
  local h = redis.call('HMGET', task_key, 'status', 'attempt', 'node_id')
  if not h[1] then
    return 'NOT_FOUND no such task'
  end
  if (h[1] ~= 'assigned' and h[1] ~= 'running') or tonumber(h[2]) ~= tonumber(attempt)
      or h[3] ~= node then
    return 'STALE attempt ' .. attempt .. ' on ' .. node .. ' is no longer current (task is '
      .. h[1] .. ', attempt ' .. tostring(h[2]) .. ')'
  end
  return nil
end

local function system_log(logs_key, attempt, now, text)
  redis.call('XADD', logs_key, 'MAXLEN', '~', 100000, '*', 'stream', 'system', 'data', text,
    'attempt', attempt, 'time', now)
end

-- digest: the image the attempt ran (nil when it never reported one).
local function record_attempt(attempts_key, task_key, attempt, node, status, now, err, digest)
  local started = redis.call('HGET', task_key, 'attempt_started_at') or ''
  redis.call('RPUSH', attempts_key, cjson.encode({
    attempt = tonumber(attempt), node_id = node, status = status,
    started_at = tonumber(started) or 0, ended_at = tonumber(now), error = err,
    image_digest = digest,
  }))
end

-- KEYS: task, queue, tasks, seq[, idempotency]   ARGV: id, priority, now, field, value, ...
redis.register_function('hm_task_submit', function(keys, args)
  if keys[5] then
    local existing = redis.call('GET', keys[5])
    if existing then
      return {existing, 0}
    end
  end
  local seq = redis.call('INCR', keys[4])
  local score = (9 - tonumber(args[2])) * 1099511627776 + seq
  redis.call('HSET', keys[1], 'id', args[1], 'seq', seq, 'score', score, unpack(args, 4))
  redis.call('ZADD', keys[2], score, args[1])
  redis.call('ZADD', keys[3], seq, args[1])
  if keys[5] then
    redis.call('SET', keys[5], args[1], 'EX', 86400)
  end
  return {args[1], 1}
end)

-- KEYS: task, queue, node_tasks, logs   ARGV: id, attempt, node, now
redis.register_function('hm_task_assign', function(keys, args)
  local h = redis.call('HMGET', keys[1], 'status', 'attempt', 'cancel_requested')
  if not h[1] then
    return redis.error_reply('NOT_FOUND no such task')
  end
  if (h[1] ~= 'queued' and h[1] ~= 'lost') or tonumber(h[2]) ~= tonumber(args[2]) then
    return redis.error_reply('STALE task is ' .. h[1] .. ', attempt ' .. tostring(h[2]))
  end
  redis.call('HSET', keys[1], 'status', 'assigned', 'node_id', args[3], 'assigned_at', args[4],
    'attempt_started_at', args[4], 'log_bytes', 0, 'log_truncated', 0, 'log_offset', 0)
  redis.call('ZREM', keys[2], args[1])
  redis.call('SADD', keys[3], args[1])
  system_log(keys[4], args[2], args[4], 'attempt ' .. args[2] .. ' assigned to node ' .. args[3])
  return 1
end)

-- KEYS: task   ARGV: id, attempt, node, now
redis.register_function('hm_task_start', function(keys, args)
  local err = fenced(keys[1], args[2], args[3])
  if err then
    return redis.error_reply(err)
  end
  redis.call('HSET', keys[1], 'status', 'running', 'attempt_started_at', args[4])
  redis.call('HSETNX', keys[1], 'started_at', args[4])
  return 1
end)

local FINAL = {succeeded = true, failed = true, cancelled = true, timed_out = true}

-- A log chunk is the current attempt's, or late output of the attempt that ended the task
-- (same attempt, same node: the pool may end it first, a timeout while its agent was away).
-- A superseded attempt's chunk is refused.
local function may_log(task_key, attempt, node)
  local err = fenced(task_key, attempt, node)
  if not err then
    return nil
  end
  local h = redis.call('HMGET', task_key, 'status', 'attempt', 'node_id')
  if FINAL[h[1]] and tonumber(h[2]) == tonumber(attempt) and h[3] == node then
    return nil
  end
  return err
end

-- A line in the log where output is missing; it counts against the cap, and once the log
-- is truncated there is none (its mark says enough).
local function mark_missing(keys, attempt, now, text)
  if redis.call('HGET', keys[1], 'log_truncated') == '1' then
    return
  end
  redis.call('HINCRBY', keys[1], 'log_bytes', string.len(text))
  system_log(keys[2], attempt, now, text)
end

-- The part of a chunk starting at `offset` of the attempt's output that is not stored yet
-- (nil: all of it is, a chunk sent again after a reconnect); bytes skipped between the
-- last stored one and the chunk get a mark.
local function unstored_part(keys, attempt, now, offset, data)
  local stored = tonumber(redis.call('HGET', keys[1], 'log_offset') or '0')
  local ends = offset + string.len(data)
  if ends <= stored then
    return nil
  end
  if offset > stored then
    mark_missing(keys, attempt, now, '[output lost: ' .. string.format('%d', offset - stored)
      .. ' bytes of attempt ' .. attempt .. ' never reached the pool]')
  end
  redis.call('HSET', keys[1], 'log_offset', string.format('%d', ends))
  if offset < stored then
    return string.sub(data, stored - offset + 1)
  end
  return data
end

-- KEYS: task, logs   ARGV: id, attempt, node, stream, data, cap_bytes, now, offset
-- offset: where the chunk starts in the attempt's output ('' when the agent sends none).
-- Returns 1 (stored), 0 (dropped: over the cap; a truncation mark is stored once),
-- 2 (already stored: nothing done).
redis.register_function('hm_task_log', function(keys, args)
  local err = may_log(keys[1], args[2], args[3])
  if err then
    return redis.error_reply(err)
  end
  local data = args[5]
  if args[8] ~= '' then
    data = unstored_part(keys, args[2], args[7], tonumber(args[8]), data)
    if not data then
      return 2
    end
  end
  local used = tonumber(redis.call('HGET', keys[1], 'log_bytes') or '0')
  local size = string.len(data)
  if used + size > tonumber(args[6]) then
    if redis.call('HGET', keys[1], 'log_truncated') ~= '1' then
      redis.call('HSET', keys[1], 'log_truncated', '1')
      system_log(keys[2], args[2], args[7],
        '[output truncated: this attempt wrote more than ' .. args[6] .. ' bytes]')
    end
    return 0
  end
  if size > 0 then
    redis.call('HINCRBY', keys[1], 'log_bytes', size)
    redis.call('XADD', keys[2], 'MAXLEN', '~', 100000, '*', 'stream', args[4], 'data', data,
      'attempt', args[2], 'time', args[7])
  end
  return 1
end)

-- The attempt wrote `total` bytes of output ('' when its agent does not say): a mark when
-- the last of them never arrived (its agent had to drop them).
local function mark_missing_tail(keys, attempt, now, total)
  if total == '' then
    return
  end
  local stored = tonumber(redis.call('HGET', keys[1], 'log_offset') or '0')
  if tonumber(total) > stored then
    mark_missing(keys, attempt, now, '[output truncated: the last '
      .. string.format('%d', tonumber(total) - stored) .. ' bytes of attempt ' .. attempt
      .. ' never reached the pool]')
    redis.call('HSET', keys[1], 'log_offset', total)
  end
end

-- Put a task whose attempt ended without a result back in the queue, or end it when it
-- was cancelled meanwhile or has used its last attempt.
-- An attempt its agent interrupted (a drain) does not count against max_attempts; at most
-- MAX_INTERRUPTIONS of them, so a task cannot bounce between draining agents forever.
local MAX_INTERRUPTIONS = 20

local function requeue(keys, id, attempt, node, now, reason, pending_state)
  local h = redis.call('HMGET', keys[1], 'cancel_requested', 'max_attempts', 'score',
    'interruptions')
  local interruptions = tonumber(h[4] or '0')
  if pending_state ~= 'lost' then
    interruptions = interruptions + 1
    redis.call('HSET', keys[1], 'interruptions', interruptions)
  end
  local ended_as = pending_state == 'lost' and 'lost' or 'interrupted'
  record_attempt(keys[4], keys[1], attempt, node, ended_as, now, reason)
  redis.call('SREM', keys[3], id)
  local outcome
  if h[1] == '1' then
    outcome = 'cancelled'
    redis.call('HSET', keys[1], 'status', outcome, 'ended_at', now, 'node_id', '',
      'error', 'cancelled (' .. reason .. ')')
  elseif tonumber(attempt) - interruptions >= tonumber(h[2]) then
    outcome = 'failed'
    redis.call('HSET', keys[1], 'status', outcome, 'ended_at', now, 'node_id', '',
      'error', reason .. ' on the last attempt (' .. attempt .. ' of ' .. h[2] .. ')')
  elseif interruptions > MAX_INTERRUPTIONS then
    outcome = 'failed'
    redis.call('HSET', keys[1], 'status', outcome, 'ended_at', now, 'node_id', '',
      'error', 'interrupted ' .. interruptions .. ' times by draining agents')
  else
    outcome = pending_state
    redis.call('HSET', keys[1], 'status', outcome, 'attempt', tonumber(attempt) + 1,
      'node_id', '', 'error', reason)
    redis.call('ZADD', keys[2], tonumber(h[3]), id)
  end
  system_log(keys[5], attempt, now, 'attempt ' .. attempt .. ' ended: ' .. reason .. '; task '
    .. outcome)
  return outcome
end

-- KEYS: task, queue, node_tasks, attempts, logs   ARGV: id, attempt, node, now, reason
redis.register_function('hm_task_requeue', function(keys, args)
  local err = fenced(keys[1], args[2], args[3])
  if err then
    return redis.error_reply(err)
  end
  return requeue(keys, args[1], args[2], args[3], args[4], args[5], 'lost')
end)

-- KEYS: task, queue, node_tasks, attempts, logs
-- ARGV: id, attempt, node, now, status, exit_code ('' if none), error, usage_json,
--       output (the result's digest, '' if none), output_bytes, image_digest,
--       log_bytes ('' if not reported)
redis.register_function('hm_task_finish', function(keys, args)
  local err = fenced(keys[1], args[2], args[3])
  if err then
    return redis.error_reply(err)
  end
  mark_missing_tail({keys[1], keys[5]}, args[2], args[4], args[12] or '')
  local status = args[5]
  if status == 'interrupted' then
    return requeue(keys, args[1], args[2], args[3], args[4], 'interrupted by its agent', 'queued')
  end
  redis.call('HSET', keys[1], 'status', status, 'exit_code', args[6], 'error', args[7],
    'usage', args[8], 'output', args[9], 'output_bytes', args[10], 'ended_at', args[4])
  redis.call('HSETNX', keys[1], 'started_at', args[4])
  record_attempt(keys[4], keys[1], args[2], args[3], status, args[4], args[7], args[11])
  redis.call('SREM', keys[3], args[1])
  local text = 'attempt ' .. args[2] .. ' ' .. status
  if args[6] ~= '' then
    text = text .. ' (exit code ' .. args[6] .. ')'
  end
  system_log(keys[5], args[2], args[4], text)
  return status
end)

-- KEYS: task, queue, logs   ARGV: id, now
-- Returns {state, node, attempt}: "cancelled" at once when it had not started, else
-- "cancelling" (the pool tells the node; the attempt's result ends it).
redis.register_function('hm_task_cancel', function(keys, args)
  local h = redis.call('HMGET', keys[1], 'status', 'node_id', 'attempt')
  if not h[1] then
    return redis.error_reply('NOT_FOUND no such task')
  end
  if h[1] == 'queued' or h[1] == 'lost' then
    redis.call('HSET', keys[1], 'status', 'cancelled', 'ended_at', args[2],
      'error', 'cancelled before it ran', 'cancel_requested', 1)
    redis.call('ZREM', keys[2], args[1])
    system_log(keys[3], h[3], args[2], 'cancelled before it ran')
    return {'cancelled', '', h[3]}
  end
  if h[1] == 'assigned' or h[1] == 'running' then
    redis.call('HSET', keys[1], 'cancel_requested', 1)
    system_log(keys[3], h[3], args[2], 'cancel requested')
    return {'cancelling', h[2], h[3]}
  end
  return redis.error_reply('FINISHED task already ' .. h[1])
end)

-- KEYS: task   ARGV: id
-- The ended task's data was let go in the blob store (its inputs unpinned, its result kept
-- for the retention): done once, redone at start for an ended task not marked.
redis.register_function('hm_task_released', function(keys, args)
  local status = redis.call('HGET', keys[1], 'status')
  if not status then
    return redis.error_reply('NOT_FOUND no such task')
  end
  if not FINAL[status] then
    return redis.error_reply('FINISHED task ' .. args[1] .. ' is ' .. status .. ', not ended')
  end
  redis.call('HSET', keys[1], 'released', 1)
  return 1
end)
