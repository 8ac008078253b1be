"""Every Redis key and task state the pool uses, in one place."""

TASK = "hm:task:{id}"  # hash: see pool/records.py TaskRecord
TASK_ATTEMPTS = "hm:task:{id}:attempts"  # list: JSON of each finished attempt, in order
TASK_LOGS = "hm:task:{id}:logs"  # stream: stream, data, attempt, time
TASKS = "hm:tasks"  # zset: task id -> submission sequence (listing, newest first)
QUEUE = "hm:queue"  # zset: task id -> queue score (priority, then submission order)
TASK_SEQ = "hm:task-seq"  # counter: submission sequence
IDEMPOTENCY = "hm:idem:{owner}:{key}"  # string: task id of an earlier identical submit
NODE_TASKS = "hm:node-tasks:{id}"  # set: task ids assigned to or running on the node
WORKERS = "hm:workers"  # set: node ids that ever registered with the pool
WORKER = "hm:worker:{id}"  # hash: what a worker registered (capacity, GPUs, Docker, labels)
WORKER_LIVE = "hm:worker-live"  # hash: node id -> JSON of its live state, last heartbeat, usage

# Task states. "lost" means: its node was lost, the task waits in the queue for a retry.
QUEUED = "queued"
ASSIGNED = "assigned"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
LOST = "lost"
PENDING_STATES = (QUEUED, LOST)
ACTIVE_STATES = (ASSIGNED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT)
ALL_STATES = (*PENDING_STATES, *ACTIVE_STATES, *FINAL_STATES)
# What an agent may report when an attempt ends. "interrupted": the agent stopped the
# task itself (draining past its window); the pool requeues it.
INTERRUPTED = "interrupted"
REPORTED_STATES = (*FINAL_STATES, INTERRUPTED)

# Worker live states (hm:worker:{id} "state").
READY = "ready"
DRAINING = "draining"
OFFLINE = "offline"
NODE_LOST = "lost"

# The CPT ledger (pool/ledger.lua).
LEDGER_BALANCES = "hm:ledger:balances"  # hash: account -> balance in micro-CPT
LEDGER_ACCOUNTS = "hm:ledger:accounts"  # hash: account -> JSON {kind, created_at}
LEDGER_JOURNAL = "hm:ledger:journal"  # stream: time, from, to, amount, reason, task, key
LEDGER_IDEMPOTENCY = "hm:ledger:idem"  # hash: idempotency key -> journal entry id
LEDGER_SUPPLY = "hm:ledger:supply"  # string: total supply in micro-CPT (set once)
MAX_ROWS = 1000  # the most rows (tasks, movements, log entries) one request returns
LEDGER_EARNED = "hm:ledger:earned"  # hash: account -> micro-CPT ever paid to it for tasks
