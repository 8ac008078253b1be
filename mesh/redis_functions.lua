#!lua name=hivemind
-- Atomic mesh operations, loaded with FUNCTION LOAD REPLACE by mesh/store.py.
-- Errors are returned as "<CODE> <detail>" and mapped to Python exceptions in mesh/store.py.

-- Host offsets: 0 is the network, 1 the hub, the last one broadcast. Offsets only grow,
-- so an address is never handed out twice, even after its node is revoked.
local function allocate_offset(next_key, size)
  local offset = tonumber(redis.call('GET', next_key) or '2')
  if offset > size - 2 then
    return nil
  end
  redis.call('SET', next_key, offset + 1)
  return offset
end

local function dotted(n)
  local a = math.floor(n / 16777216) % 256
  local b = math.floor(n / 65536) % 256
  local c = math.floor(n / 256) % 256
  return a .. '.' .. b .. '.' .. c .. '.' .. (n % 256)
end

-- KEYS: ipam_next   ARGV: size, network_int
redis.register_function('hm_allocate_ip', function(keys, args)
  local offset = allocate_offset(keys[1], tonumber(args[1]))
  if not offset then
    return redis.error_reply('EXHAUSTED overlay address range exhausted')
  end
  return dotted(tonumber(args[2]) + offset)
end)

-- Redeem a join token: check it, consume one use, allocate an address and create the
-- node record, all or nothing.
-- KEYS: token, ipam_next, node, nodes, node_by_wg_key, node_by_ip
-- ARGV: secret_sha256, now, size, network_int, node_id, hostname, wg_public_key, facts_json
redis.register_function('hm_redeem', function(keys, args)
  local t = redis.call('HMGET', keys[1], 'secret_sha256', 'uses_left', 'expires_at', 'revoked', 'role')
  if not t[1] then
    return redis.error_reply('TOKEN_UNKNOWN')
  end
  if t[1] ~= args[1] then
    return redis.error_reply('TOKEN_SECRET')
  end
  if t[4] == '1' then
    return redis.error_reply('TOKEN_REVOKED')
  end
  if tonumber(t[3]) <= tonumber(args[2]) then
    return redis.error_reply('TOKEN_EXPIRED')
  end
  if tonumber(t[2]) <= 0 then
    return redis.error_reply('TOKEN_USED_UP')
  end
  if redis.call('HEXISTS', keys[5], args[7]) == 1 then
    return redis.error_reply('WG_KEY_TAKEN')
  end
  local offset = allocate_offset(keys[2], tonumber(args[3]))
  if not offset then
    return redis.error_reply('EXHAUSTED overlay address range exhausted')
  end
  local ip = dotted(tonumber(args[4]) + offset)
  redis.call('HINCRBY', keys[1], 'uses_left', -1)
  redis.call('HSET', keys[3],
    'id', args[5], 'name', args[6], 'role', t[5], 'overlay_ip', ip,
    'wg_public_key', args[7], 'state', 'enrolling', 'enrolled_at', args[2],
    'facts', args[8], 'token_id', string.sub(keys[1], 10))
  redis.call('ZADD', keys[4], offset, args[5])
  redis.call('HSET', keys[5], args[7], args[5])
  redis.call('HSET', keys[6], ip, args[5])
  return {ip, t[5]}
end)
