"""One attempt on a worker, from its ``Assign`` to its ``Outcome``: its inputs fetched and
held (agent/transfers.py), then the executor run on a thread of the worker's.

What goes wrong is sorted by whose it is: an input the task cannot have (refused, too
large, not matching its digest) fails the task; an input this worker cannot fetch, or an
executor that fails rather than the task, interrupts the attempt, so that the pool runs the
task again (elsewhere, perhaps).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol

from hivemind_cluster.agent.inputs import InputUnavailable
from hivemind_cluster.agent.taskrun import (
    OnOutput,
    Outcome,
    TaskRun,
    never_ran,
    system_notes,
    task_run,
)
from hivemind_cluster.agent.transfers import Transfers
from hivemind_cluster.agent.usagesamples import UsageSeries
from hivemind_cluster.core.console import one_line
from hivemind_cluster.model.states import INTERRUPTED
from hivemind_cluster.protos import pool_pb2 as pb

log = logging.getLogger("hivemind.agent.worker")


class Executor(Protocol):
    def run(self, task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome: ...


class Ran(NamedTuple):
    """How an attempt ended here; no outcome when the worker, not the task, failed."""

    task: TaskRun
    outcome: Outcome | None
    status: str
    error: str


async def fetch_and_run(
    executor: Executor,
    transfers: Transfers,
    threads: ThreadPoolExecutor,
    assign: pb.Assign,
    gpu_ids: tuple[str, ...],
    cancel: threading.Event,
    on_output: OnOutput,
    usage: UsageSeries | None = None,
) -> Ran:
    """The task with its inputs fetched (held while it runs), run to its end; its usage
    over time goes into ``usage``."""
    task = task_run(assign, gpu_ids, usage=usage)
    note = system_notes(on_output)
    try:
        async with transfers.inputs(assign, note, cancel) as (bundle, inputs):
            task = task_run(assign, gpu_ids, bundle, inputs, usage)
            return await run_task(executor, threads, task, cancel, on_output)
    except InputUnavailable as unavailable:
        note(unavailable.message)
        outcome = never_ran(unavailable.message, unavailable.status)
        return Ran(task, outcome, outcome.status, outcome.error)
    except Exception as exc:
        why = getattr(exc, "message", None) or one_line(str(exc)) or type(exc).__name__
        log.warning("task %s: inputs not fetched: %s", task.task_id, why)
        return Ran(task, None, INTERRUPTED, f"agent error: {why}")


async def run_task(
    executor: Executor,
    threads: ThreadPoolExecutor,
    task: TaskRun,
    cancel: threading.Event,
    on_output: OnOutput,
) -> Ran:
    loop = asyncio.get_running_loop()
    try:
        outcome = await loop.run_in_executor(threads, executor.run, task, on_output, cancel)
    except Exception as exc:
        log.exception("task %s: executor failed", task.task_id)
        return Ran(task, None, INTERRUPTED, f"agent error: {exc}")
    return Ran(task, outcome, outcome.status, outcome.error)
