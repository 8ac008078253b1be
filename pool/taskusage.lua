#!lua name=hivemind_taskusage
-- hm_task_usage: a task's usage over its run (pool/taskusage.py): samples of its current attempt,
-- appended to a bounded list of points, fenced as its log is.
--
-- KEYS: task, points, state
-- ARGV: attempt, node, max_points, min_gap, then time, cpu_cores, memory_bytes per sample
-- Returns the number of samples kept, -1 when there is no such task, -2 when the attempt
-- is not the task's current one on that node (nor the one that ended it there).
--
-- points: a list of "time cpu_cores memory_bytes", each the average of `stride` samples.
-- state: attempt (the points'), stride, last (the time of the last sample kept), and the
-- sums n, t, c, m of the samples not in a point yet. When the list reaches max_points, each
-- pair of points becomes their average and the stride doubles: the whole run is kept, at
-- half the resolution, and every point stays the average of as many samples as the others.

redis.register_function('hm_task_usage', function(KEYS, ARGV)
  local FINAL = {succeeded = true, failed = true, cancelled = true, timed_out = true}

  local h = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'node_id')
  if not h[1] then
    return -1
  end
  local running = h[1] == 'assigned' or h[1] == 'running'
  if not (running or FINAL[h[1]]) or tonumber(h[2]) ~= tonumber(ARGV[1]) or h[3] ~= ARGV[2] then
    return -2
  end

  local function point(t, c, m, n)
    return string.format('%.3f %.4f %d', t / n, c / n, math.floor(m / n + 0.5))
  end

  local function halved(points)
    local out = {}
    for i = 1, #points - 1, 2 do
      local t1, c1, m1 = string.match(points[i], '(%S+) (%S+) (%S+)')
      local t2, c2, m2 = string.match(points[i + 1], '(%S+) (%S+) (%S+)')
      out[#out + 1] = point(t1 + t2, c1 + c2, m1 + m2, 2)
    end
    if #points % 2 == 1 then
      out[#out + 1] = points[#points]
    end
    return out
  end

  local s = redis.call('HMGET', KEYS[3], 'attempt', 'stride', 'last', 'n', 't', 'c', 'm')
  if s[1] ~= ARGV[1] then -- the attempt's first samples: the run starts again
    redis.call('DEL', KEYS[2])
    s = {ARGV[1], 1, 0, 0, 0, 0, 0}
  end
  local stride, last, n = tonumber(s[2]), tonumber(s[3]), tonumber(s[4])
  local t, c, m = tonumber(s[5]), tonumber(s[6]), tonumber(s[7])
  local max_points, min_gap = tonumber(ARGV[3]), tonumber(ARGV[4])
  local kept = 0
  for i = 5, #ARGV, 3 do
    local at = tonumber(ARGV[i])
    -- Later than the last one kept, by min_gap: a sample sent again is kept once.
    if at >= last + min_gap then
      last, kept = at, kept + 1
      n, t, c, m = n + 1, t + at, c + tonumber(ARGV[i + 1]), m + tonumber(ARGV[i + 2])
      if n >= stride then
        local length = redis.call('RPUSH', KEYS[2], point(t, c, m, n))
        n, t, c, m = 0, 0, 0, 0
        if length >= max_points then
          local points = halved(redis.call('LRANGE', KEYS[2], 0, -1))
          redis.call('DEL', KEYS[2])
          redis.call('RPUSH', KEYS[2], unpack(points))
          stride = stride * 2
        end
      end
    end
  end
  redis.call('HSET', KEYS[3], 'attempt', ARGV[1], 'stride', stride,
    'last', string.format('%.3f', last), 'n', n, 't', string.format('%.3f', t),
    'c', string.format('%.4f', c), 'm', string.format('%d', m))
  return kept
end)
