"""The node pool: agents' streams over the overlay, the task queue, placement, the ledger.

``pool.Pool`` wires the parts, each owning its state: ``liveness`` (sessions, heartbeats,
live state in Redis), ``watchdog`` (attempts that never start or end), ``dispatch``
(queued tasks placed by the ``scheduler``), ``settlement`` and ``members`` (the membership
cache). Redis holds the durable truth: ``taskstore`` (tasks, redis_functions.lua) and
``ledger`` with ``accounting`` (CPT, ledger.lua). ``service`` and ``operations`` are the
gRPC side; ``registry`` and ``messages`` what is recorded about and said to agents.
"""
