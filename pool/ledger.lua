#!lua name=hivemind_ledger
-- The CPT ledger: integer micro-CPT balances and an append-only journal, one atomic
-- function per movement. Amounts travel as decimal strings and are applied with
-- HINCRBY (exact 64-bit integers); Lua numbers (doubles) are only used for signs, so
-- balances up to the 10^18 uCPT supply stay exact. Errors are "<CODE> <detail>".
--
-- KEYS for every function: balances, accounts, journal, idempotency, supply

local function entry_fields(journal, entry_id)
  local found = redis.call('XRANGE', journal, entry_id, entry_id)
  return found[1]
end

-- Move amount from one account to another, once per idempotency key.
local function transfer(keys, from, to, amount, reason, task, key, now)
  local previous = redis.call('HGET', keys[4], key)
  if previous then
    return entry_fields(keys[3], previous)
  end
  if not string.match(amount, '^[1-9][0-9]*$') or string.len(amount) > 18 then
    return redis.error_reply('INVALID amount must be a positive integer of micro-CPT')
  end
  if from == to then
    return redis.error_reply('INVALID cannot transfer to the same account')
  end
  if redis.call('HEXISTS', keys[2], from) == 0 then
    return redis.error_reply('NO_ACCOUNT ' .. from)
  end
  if redis.call('HEXISTS', keys[2], to) == 0 then
    return redis.error_reply('NO_ACCOUNT ' .. to)
  end
  local left = redis.call('HINCRBY', keys[1], from, '-' .. amount)
  if left < 0 then
    redis.call('HINCRBY', keys[1], from, amount)
    return redis.error_reply('INSUFFICIENT ' .. from)
  end
  redis.call('HINCRBY', keys[1], to, amount)
  local entry_id = redis.call('XADD', keys[3], '*', 'time', now, 'from', from, 'to', to,
    'amount', amount, 'reason', reason, 'task', task, 'key', key)
  redis.call('HSET', keys[4], key, entry_id)
  return entry_fields(keys[3], entry_id)
end

-- ARGV: treasury, supply, now, escrow. Creates the supply in the treasury, and the empty
-- escrow account that holds submitted tasks' price caps, once; later calls change nothing.
redis.register_function('hm_ledger_genesis', function(keys, args)
  if redis.call('EXISTS', keys[5]) == 1 then
    return redis.call('GET', keys[5])
  end
  redis.call('SET', keys[5], args[2])
  redis.call('HSET', keys[2], args[1], cjson.encode({kind = 'treasury', created_at = args[3]}))
  redis.call('HSET', keys[1], args[1], args[2])
  redis.call('HSET', keys[2], args[4], cjson.encode({kind = 'escrow', created_at = args[3]}))
  redis.call('HSET', keys[1], args[4], '0')
  local entry_id = redis.call('XADD', keys[3], '*', 'time', args[3], 'from', '', 'to', args[1],
    'amount', args[2], 'reason', 'genesis', 'task', '', 'key', 'genesis')
  redis.call('HSET', keys[4], 'genesis', entry_id)
  return args[2]
end)

-- ARGV: account, kind, treasury, grant, now. Opens the account (once) with its grant.
redis.register_function('hm_ledger_open', function(keys, args)
  if redis.call('EXISTS', keys[5]) == 0 then
    return redis.error_reply('NO_SUPPLY the ledger has no supply yet')
  end
  if redis.call('HSETNX', keys[2], args[1],
      cjson.encode({kind = args[2], created_at = args[5]})) == 1 then
    redis.call('HSETNX', keys[1], args[1], '0')
  end
  return transfer(keys, args[3], args[1], args[4], 'registration grant', '',
    'grant:' .. args[1], args[5])
end)

-- ARGV: from, to, amount, reason, task, idempotency key, now
redis.register_function('hm_ledger_transfer', function(keys, args)
  return transfer(keys, args[1], args[2], args[3], args[4], args[5], args[6], args[7])
end)

-- Settle an ended task in one step: pay the worker (and add it to what the worker has
-- earned), refund the rest, mark the task settled.
-- KEYS: the five ledger keys, then the task hash, then the earnings hash.
-- ARGV: task id, worker ('' for none), cost, owner, refund, now, escrow account.
-- Returns the cost paid.
redis.register_function('hm_ledger_settle', function(keys, args)
  local settled = redis.call('HMGET', keys[6], 'settled', 'cost')
  if settled[1] == '1' then
    return settled[2]
  end
  local task = args[1]
  if args[3] ~= '0' then
    local fresh = redis.call('HEXISTS', keys[4], 'pay:' .. task) == 0
    local paid = transfer(keys, args[7], args[2], args[3], 'task ' .. task, task,
      'pay:' .. task, args[6])
    if paid.err then
      return paid
    end
    if fresh then
      redis.call('HINCRBY', keys[7], args[2], args[3])
    end
  end
  if args[5] ~= '0' then
    local refunded = transfer(keys, args[7], args[4], args[5],
      'task ' .. task .. ': unused price cap', task, 'refund:' .. task, args[6])
    if refunded.err then
      return refunded
    end
  end
  redis.call('HSET', keys[6], 'settled', 1, 'cost', args[3])
  return args[3]
end)
