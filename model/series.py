"""The names of the cluster's history series (core/history.py stores them): the pool's
sampler records them, the web charts them, so both spell them from here."""

from __future__ import annotations

NODE_PREFIX = "node:{id}:"  # every series of one node (forgotten together when it leaves)
NODE_CPU = NODE_PREFIX + "cpu"  # the whole machine's CPU use, percent (0-100)
NODE_MEMORY = NODE_PREFIX + "memory"  # the machine's memory in use, bytes
CPU_ALLOCATED = "cluster:cpu-allocated"  # share (0-1) of connected workers' CPU booked
MEMORY_ALLOCATED = "cluster:memory-allocated"  # the same for memory
TASKS_RUNNING = "cluster:tasks-running"  # attempts holding capacity (assigned or running)
TASKS_QUEUED = "cluster:tasks-queued"  # tasks waiting for a place
CLUSTER = (CPU_ALLOCATED, MEMORY_ALLOCATED, TASKS_RUNNING, TASKS_QUEUED)


def node_cpu(node_id: str) -> str:
    return NODE_CPU.format(id=node_id)


def node_memory(node_id: str) -> str:
    return NODE_MEMORY.format(id=node_id)


def node_prefix(node_id: str) -> str:
    return NODE_PREFIX.format(id=node_id)
