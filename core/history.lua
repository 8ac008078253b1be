#!lua name=hivemind_history
-- Bounded time series (core/history.py): one string per series, made whole at its first
-- sample and never grown, so its memory is fixed from the start:
--   header (HEADER bytes) | fine ring (points x width) | coarse ring (coarse_points x width)
-- A point is a float of `width` bytes, little-endian: 4 = float32, 2 = bfloat16 (the high
-- half of a float32, rounded); NaN means "no sample". Slot k of a ring is at k % size.
-- The header says the shape (so a reader needs no configuration) and where writing got
-- to: the last fine slot written, the coarse bucket being summed (sum, count) and the last
-- coarse bucket written; -1 is "none yet".
local HEADER = 64
local FORMAT = '<dI4I4I4I4dddI4d'  -- 60 bytes, then 4 of padding
local NAN = { [2] = '\192\127', [4] = '\0\0\192\127' }

local function encode(value, width)
  local packed = struct.pack('<f', value)
  if width == 4 then
    return packed
  end
  local bits = struct.unpack('<I4', packed)
  return struct.pack('<I2', math.floor((bits + 32768) / 65536))  -- round to nearest
end

-- NaN at `count` consecutive slots from `first` (wrapping), at most the whole ring.
local function clear(key, base, size, width, first, count)
  if count <= 0 then
    return
  end
  if count > size then
    count = size
  end
  local position = first % size
  local head = math.min(count, size - position)
  redis.call('SETRANGE', key, base + position * width, string.rep(NAN[width], head))
  if count > head then
    redis.call('SETRANGE', key, base, string.rep(NAN[width], count - head))
  end
end

local function put(key, base, size, width, slot, value)
  redis.call('SETRANGE', key, base + (slot % size) * width, encode(value, width))
end

-- The series' state, its string made first (all NaN) if it is new or had another shape.
local function open(key, step, points, per, cpoints, width, ttl)
  local raw = redis.call('GETRANGE', key, 0, HEADER - 1)
  if #raw == HEADER then
    local h = { struct.unpack(FORMAT, raw) }
    if h[1] == step and h[2] == points and h[3] == per and h[4] == cpoints and h[5] == width then
      return { last = h[6], bucket = h[7], sum = h[8], count = h[9], coarse = h[10] }
    end
  end
  local state = { last = -1, bucket = -1, sum = 0, count = 0, coarse = -1 }
  local header = struct.pack(FORMAT, step, points, per, cpoints, width, -1, -1, 0, 0, -1)
  redis.call('SET', key, header .. '\0\0\0\0' .. string.rep(NAN[width], points + cpoints),
    'PX', ttl)
  return state
end

-- KEYS: the series   ARGV: time, step, points, per_coarse, coarse_points, width, ttl_ms,
-- then one value per key. A sample older than the series' last is ignored; one in the
-- same slot replaces the fine point (the coarse average counts both).
redis.register_function('hm_history_record', function(keys, args)
  local at, step = tonumber(args[1]), tonumber(args[2])
  local points, per, cpoints = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
  local width, ttl = tonumber(args[6]), tonumber(args[7])
  local fine_base, coarse_base = HEADER, HEADER + points * width
  local slot = math.floor(at / step)
  local bucket = math.floor(slot / per)
  for i, key in ipairs(keys) do
    local value = tonumber(args[7 + i])
    local s = open(key, step, points, per, cpoints, width, ttl)
    if slot >= s.last then
      if s.last >= 0 then
        clear(key, fine_base, points, width, s.last + 1, slot - s.last - 1)
      end
      put(key, fine_base, points, width, slot, value)
      if s.bucket >= 0 and bucket > s.bucket then
        if s.count > 0 then
          if s.coarse >= 0 then
            clear(key, coarse_base, cpoints, width, s.coarse + 1, s.bucket - s.coarse - 1)
          end
          put(key, coarse_base, cpoints, width, s.bucket, s.sum / s.count)
          s.coarse = s.bucket
        end
        s.sum, s.count = 0, 0
        redis.call('PEXPIRE', key, ttl)  -- once a bucket: it lives a retention past its last
      end
      if bucket >= s.bucket then
        s.bucket, s.sum, s.count = bucket, s.sum + value, s.count + 1
      end
      s.last = slot
      redis.call('SETRANGE', key, 0, struct.pack(FORMAT, step, points, per, cpoints, width,
        s.last, s.bucket, s.sum, s.count, s.coarse))
    end
  end
  return #keys
end)
