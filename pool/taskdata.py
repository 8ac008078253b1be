"""A task's data in the hub's blob store (blobs/): pinned at submission, let go at its end.

Its owner must hold every input the hub is to serve (an upload of theirs: proof they have
the bytes, not just a digest); ``pin`` pins them for the task and learns their sizes, for
the checks and the ``Assign``. When the task ends, ``release`` unpins them and keeps the
result for the hub's retention (``BlobStore.release_task``), once: the task is marked
released, and the pool redoes it at start for an ended task that is not (pool/settlement.py),
as it does settlements. A result is recorded only once its zip was written for its attempt
and passes the rules its owner's CLI unpacks it by (``check_result``).

The store is synchronous (a ``redis.Redis`` and files of its own): every call runs off the
event loop, on the few threads of ``in_store_thread``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import ParamSpec, TypeVar

from hivemind_cluster.blobs.store import BlobStore
from hivemind_cluster.core.errors import InvalidInput, StaleAttempt, TooLarge
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.blobs import InputRef
from hivemind_cluster.model.bundles import RESULT_RULES, check_bundle
from hivemind_cluster.model.spec import TaskData
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.pool.taskstore import TaskStore, check_task_id
from hivemind_cluster.protos import pool_pb2 as pb

STORE_THREADS = 4
_STORE_EXECUTOR = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="hivemind-blob-store")
P = ParamSpec("P")
T = TypeVar("T")


async def in_store_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` (a blob store call: it blocks) on the store's own
    STORE_THREADS threads, not the default executor's many: transfers beyond them wait
    their turn, each with its one batch of chunks, so that many at once stay within the
    hub's memory, and the store's calls never take the threads the rest of the pool uses."""
    call = functools.partial(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_STORE_EXECUTOR, call)


class TaskBlobs:
    def __init__(self, blobs: BlobStore, tasks: TaskStore, max_input_bytes: int) -> None:
        self.blobs = blobs
        self.tasks = tasks
        self.max_input_bytes = max_input_bytes

    async def pin(self, task_id: str, owner: str, refs: TaskData) -> TaskData:
        """Pin the data ``refs`` name for the task (each held by ``owner``, else NotFound
        "upload it first"); returns it with sizes, and the files of its zips. Nothing stays
        pinned when this refuses."""
        return await in_store_thread(self._pin, task_id, owner, refs)

    def _pin(self, task_id: str, owner: str, refs: TaskData) -> TaskData:
        digests = refs.held_digests()
        if not digests:
            return refs
        sizes = self.blobs.pin_inputs(task_id, owner, digests)
        try:

            def sized(ref: InputRef) -> InputRef:
                return replace(ref, size=sizes[ref.digest]) if not ref.url else ref

            data = TaskData(
                sized(refs.bundle) if refs.bundle else None,
                tuple(sized(ref) for ref in refs.inputs),
            )
            for ref in (data.bundle, *data.inputs):
                if ref is not None and ref.size > self.max_input_bytes:
                    raise TooLarge(
                        f"{ref.name or 'the bundle'} is {format_bytes(ref.size)}, more than "
                        f"{format_bytes(self.max_input_bytes)} (hub setting max_input_bytes)"
                    )
            files = {ref.digest: self.blobs.known_path(ref.digest) for ref in data.zips()}
            return replace(data, files=files)
        except BaseException:
            self.blobs.release_task(task_id, owner, digests)
            raise

    async def unpin(self, task_id: str, owner: str, data: TaskData) -> None:
        """The submission that pinned ``data`` stored no task (refused, or the idempotency
        key named an earlier one)."""
        if data.held_digests():
            await in_store_thread(self.blobs.release_task, task_id, owner, data.held_digests())

    async def release(self, task_id: str) -> None:
        """The task ended: unpin its inputs, keep its result for the retention; once."""
        record = await self.tasks.get(task_id)
        if record.released or record.status not in FINAL_STATES:
            return
        await in_store_thread(
            self.blobs.release_task, task_id, record.owner, record.held_digests(), record.output
        )
        await self.tasks.mark_released(task_id)

    async def check_result(self, node_id: str, result: pb.TaskResult) -> None:
        """Refuse a result whose zip was not written for its attempt (``Blobs.WriteResult``
        first), or which the owner's CLI would refuse to unpack; a superseded attempt's as
        such (StaleAttempt: its agent drops it), as recording it would."""
        if not result.output_digest:
            return
        record = await self.tasks.get(check_task_id(result.task_id))
        if not record.runs(result.attempt, node_id):
            raise StaleAttempt(
                f"attempt {result.attempt} on {node_id} is no longer current "
                f"(task is {record.status}, attempt {record.attempt})"
            )
        await in_store_thread(self._check_result, result)

    def _check_result(self, result: pb.TaskResult) -> None:
        digest, size = result.output_digest, result.output_size
        if not self.blobs.result_ready(result.task_id, result.attempt, digest, size):
            raise InvalidInput(
                f"result {digest} ({size} bytes) of task {result.task_id} attempt "
                f"{result.attempt} was not written: send it with Blobs.WriteResult first"
            )
        self.check_result_zip(self.blobs.known_path(digest))

    @staticmethod
    def check_result_zip(path: Path) -> None:
        """A result's zip is what its owner's CLI will unpack: the same rules
        (model/bundles.py RESULT_RULES), so an accepted result always downloads."""
        check_bundle(path, RESULT_RULES)
