"""Sending an attempt's result zip to the hub: ``Blobs.ResultOffset`` says how much of it the
hub holds already (after a reconnect, say), ``Blobs.WriteResult`` streams the rest from the
file in CHUNK_BYTES messages. Only once the hub holds all of it does the worker send the
``TaskResult`` naming it (agent/worker.py): the pool finishes the task on a result that is
there.

The zip waits in ``<agent state>/results/<task>-<attempt>.zip`` until the pool accepts the
result or the attempt is superseded, then it is deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hivemind_cluster.agent.inputsources import PoolChannel
from hivemind_cluster.agent.taskrun import ResultFile
from hivemind_cluster.core.console import one_line
from hivemind_cluster.model.blobs import CHUNK_BYTES
from hivemind_cluster.model.states import INTERRUPTED, TaskState
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RESULTS_DIR = "results"
# Consecutive failures (each after a pause) before the attempt is handed back to the pool.
RETRY_PAUSES = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
# The hub will never take it (too large, not a valid result): the task fails, saying why.
REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
# The attempt is no longer this worker's: its result is dropped.
SUPERSEDED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)


@dataclass(frozen=True)
class Delivery:
    """How sending a result zip ended: ``sent``; else ``superseded`` (drop the attempt), or
    ``refused`` (the task fails with ``error``), or neither (it could not be sent: the
    attempt is interrupted, and the pool retries the task)."""

    sent: bool
    error: str = ""
    superseded: bool = False
    refused: bool = False


SENT = Delivery(True)


def result_path(root: Path, task_id: str, attempt: int) -> Path:
    return root / f"{task_id}-{attempt}.zip"


def remove_leftovers(root: Path) -> None:
    """Result zips of an agent that stopped: its attempts are lost with it (call at start)."""
    if root.is_dir():
        for path in root.glob("*.zip"):
            path.unlink(missing_ok=True)


async def deliver(channel: PoolChannel, task_id: str, attempt: int, output: ResultFile) -> Delivery:
    """Send the zip, resuming after each failure, until the hub holds it or no retry helps:
    RETRY_PAUSES failures in a row with no byte more held by the hub."""
    header = pb.ResultChunk(
        task_id=task_id, attempt=attempt, digest=output.digest, size=output.size
    )
    failures, held = 0, 0
    while True:
        try:
            stub = pb_grpc.BlobsStub(await channel())
            state = await stub.ResultOffset(header)
            if state.offset > held:  # the try before got this far: not a failure in a row
                held, failures = state.offset, 0
            if not state.complete:
                state = await stub.WriteResult(chunks(header, output.path, state.offset))
        except grpc.aio.AioRpcError as error:
            details = one_line(error.details() or error.code().name)
            if error.code() in SUPERSEDED:
                return Delivery(False, details, superseded=True)
            if error.code() in REFUSED:
                return Delivery(False, f"the hub refused the result: {details}", refused=True)
            why = details
        except (ConnectionError, OSError, TimeoutError) as error:
            why = one_line(str(error)) or type(error).__name__
        else:
            if state.complete:
                return SENT
            why = f"the hub holds {state.offset} of {output.size} bytes"
        if failures >= len(RETRY_PAUSES):
            return Delivery(False, f"agent error: could not send the result: {why}")
        log.warning("task %s attempt %d: result not sent yet (%s)", task_id, attempt, why)
        await asyncio.sleep(RETRY_PAUSES[failures])
        failures += 1


async def chunks(header: pb.ResultChunk, path: Path, offset: int) -> AsyncIterator[pb.ResultChunk]:
    """The file from ``offset`` in CHUNK_BYTES messages, the first one carrying ``header``
    (read on a thread: a slow disk does not hold up the event loop)."""
    with open(path, "rb") as source:
        source.seek(offset)
        first = True
        while True:
            data = await asyncio.to_thread(source.read, CHUNK_BYTES)
            if not data and not first:
                return
            message = pb.ResultChunk(offset=offset, data=data)
            if first:
                message.MergeFrom(header)
                message.offset = offset
                first = False
            yield message
            offset += len(data)
            if not data:
                return


async def sent(
    zips: ResultZips, result: pb.TaskResult, zipped: ResultFile
) -> tuple[pb.TaskResult | None, str]:
    """Send an attempt's result zip: (the result to report, ""); (None, "") when the attempt
    is no longer this worker's; (None, why) when the pool superseded it. An interrupted
    attempt's zip is not sent (the pool runs the task again), one the hub refuses fails
    the task, one that cannot be sent interrupts it."""
    key = (result.task_id, result.attempt)
    if result.status == INTERRUPTED:
        zipped.path.unlink(missing_ok=True)
        delivery: Delivery | None = Delivery(False, result.error)
    else:
        delivery = await zips.deliver(key, zipped)
    if delivery is None or delivery.sent:
        return (result if delivery is not None else None), ""
    if delivery.superseded:
        return None, delivery.error
    return without_zip(result, delivery), ""


def without_zip(result: pb.TaskResult, delivery: Delivery) -> pb.TaskResult:
    """The result to report when its zip could not be sent: it names none, and fails (the
    hub refused the zip) or is interrupted (the pool runs the task again)."""
    result.output_digest, result.output_size = "", 0
    result.status = TaskState.FAILED if delivery.refused else INTERRUPTED
    result.error = delivery.error
    return result


Key = tuple[str, int]
Send = Callable[[str, int, ResultFile], Coroutine[Any, Any, Delivery]]


class ResultZips:
    """The worker's result zips: those being sent (their attempts still the worker's, for
    its registration) and those kept until the pool accepts their result. Used on the
    worker's event loop."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.uploads: dict[Key, asyncio.Task[Delivery]] = {}
        self.files: dict[Key, Path] = {}

    async def deliver(self, key: Key, zipped: ResultFile) -> Delivery | None:
        """Send the zip, kept until ``drop``; None when it was dropped meanwhile (the pool
        no longer wants the attempt). An unsent zip is deleted."""
        self.files[key] = zipped.path
        upload = asyncio.create_task(self.send(*key, zipped))
        self.uploads[key] = upload
        try:
            delivery = await upload
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the worker itself is stopping
            return None
        finally:
            self.uploads.pop(key, None)
        if not delivery.sent:
            self.drop(key)
        return delivery

    def drop(self, key: Key) -> None:
        """The attempt needs its zip no more: stop sending it, delete it."""
        upload = self.uploads.get(key)
        if upload is not None:
            upload.cancel()
        zipped = self.files.pop(key, None)
        if zipped is not None:
            zipped.unlink(missing_ok=True)

    def drop_all(self) -> None:
        for key in list(self.files):
            self.drop(key)
