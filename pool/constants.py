"""Every Redis key the pool uses, in one place (task and node states: model/states.py)."""

TASK = "hm:task:{id}"  # hash: see pool/records.py TaskRecord
TASK_ATTEMPTS = "hm:task:{id}:attempts"  # list: JSON of each finished attempt, in order
TASK_LOGS = "hm:task:{id}:logs"  # stream: stream, data, attempt, time
TASK_USAGE = "hm:task:{id}:usage"  # list: "time cpu_cores memory_bytes" points (pool/taskusage.py)
TASK_USAGE_STATE = "hm:task:{id}:usage-state"  # hash: the points' attempt, stride, last sample
TASKS = "hm:tasks"  # zset: task id -> submission sequence (listing, newest first)
QUEUE = "hm:queue"  # zset: task id -> queue score (priority, then submission order)
TASK_SEQ = "hm:task-seq"  # counter: submission sequence
IDEMPOTENCY = "hm:idem:{owner}:{key}"  # string: task id of an earlier identical submit
NODE_TASKS = "hm:node-tasks:{id}"  # set: task ids assigned to or running on the node
WORKERS = "hm:workers"  # set: node ids that ever registered with the pool
WORKER = "hm:worker:{id}"  # hash: what a worker registered (capacity, GPUs, Docker, labels)
WORKER_LIVE = "hm:worker-live"  # hash: node id -> JSON of its live state, last heartbeat, usage

# The CPT ledger (pool/ledger.lua).
LEDGER_BALANCES = "hm:ledger:balances"  # hash: account -> balance in micro-CPT
LEDGER_ACCOUNTS = "hm:ledger:accounts"  # hash: account -> JSON {kind, created_at}
LEDGER_JOURNAL = "hm:ledger:journal"  # stream: time, from, to, amount, reason, task, key
LEDGER_IDEMPOTENCY = "hm:ledger:idem"  # hash: idempotency key -> journal entry id
LEDGER_SUPPLY = "hm:ledger:supply"  # string: total supply in micro-CPT (set once)
LEDGER_EARNED = "hm:ledger:earned"  # hash: account -> micro-CPT ever paid to it for tasks
