"""What the pool says on an agent's stream, and the checks on what an agent says.

Builders of the ``PoolMessage``s the pool sends (registered, assign, cancel, accepted,
rejected) and the bounds an agent's log chunks and results must keep, in one place so
that the parts sending them (pool, dispatch, operations) build them alike.
"""

from __future__ import annotations

import re

from hivemind_cluster.core.errors import (
    HiveMindError,
    InvalidInput,
    NotFound,
    StaleAttempt,
    SystemFailure,
    Unavailable,
)
from hivemind_cluster.model.blobs import check_digest
from hivemind_cluster.model.states import REPORTED_STATES
from hivemind_cluster.pool.records import TaskRecord
from hivemind_cluster.protos import pool_pb2 as pb

MAX_LOG_CHUNK = 256 * 1024
# Agent messages about one attempt: a rejection names the attempt it refuses.
ATTEMPT_MESSAGES = ("started", "log", "result")
# The streams of an agent's log chunks: the task's, and the worker's own lines about the
# attempt (its image's pull), shown as the pool's are.
LOG_STREAMS = ("stdout", "stderr", "system")
IMAGE_DIGEST = re.compile(r"(sha256:[0-9a-f]{64})?")


def cancel_message(task_id: str, attempt: int) -> pb.PoolMessage:
    return pb.PoolMessage(cancel=pb.CancelTask(task_id=task_id, attempt=attempt))


def registered_message(
    node_id: str,
    heartbeat_interval: float,
    unrecognised: list[tuple[str, int]],
    ended: list[tuple[str, int]],
) -> pb.PoolMessage:
    """The answer to a Register: the beat to keep; of the reported attempts the pool does
    not book, those that ended their task (its result arrived, its acknowledgement was
    lost) and those superseded (the agent drops them)."""
    superseded = [key for key in unrecognised if key not in ended]
    return pb.PoolMessage(
        registered=pb.Registered(
            node_id=node_id,
            heartbeat_interval=heartbeat_interval,
            superseded=[pb.RunningAttempt(task_id=t, attempt=a) for t, a in superseded],
            ended=[pb.RunningAttempt(task_id=t, attempt=a) for t, a in ended],
        )
    )


def assign_message(
    record: TaskRecord, attempt: int, allow_pulls: bool, price_cap_seconds: float = 0.0
) -> pb.PoolMessage:
    """The attempt for its worker, its data by reference (fetched with ``Blobs.Read``)."""
    return pb.PoolMessage(
        assign=pb.Assign(
            task_id=record.id,
            attempt=attempt,
            image=record.image,
            command=record.command,
            env=record.env,
            resources=record.request.to_proto(),
            timeout_seconds=record.timeout_seconds,
            network=record.network,
            pull=allow_pulls,
            disk_bytes=record.disk_bytes,
            price_cap_seconds=price_cap_seconds,
            bundle=record.bundle.message() if record.bundle else None,
            inputs=[ref.message() for ref in record.inputs],
        )
    )


def accepted_message(result: pb.TaskResult) -> pb.PoolMessage:
    return pb.PoolMessage(
        accepted=pb.ResultAccepted(task_id=result.task_id, attempt=result.attempt)
    )


def rejected_message(message: pb.AgentMessage, refusal: HiveMindError) -> pb.PoolMessage:
    """Refuse an agent's message, naming its attempt when it is about one, and whether that
    attempt is superseded (the agent drops it), the pool cannot take it just now (the
    agent sends it again) or the message was wrong."""
    kind = message.WhichOneof("kind")
    about = getattr(message, kind) if kind in ATTEMPT_MESSAGES else None
    return pb.PoolMessage(
        rejected=pb.Rejected(
            task_id=getattr(about, "task_id", ""),
            attempt=getattr(about, "attempt", 0),
            reason=refusal.message,
            superseded=isinstance(refusal, StaleAttempt | NotFound),
            retry=isinstance(refusal, Unavailable | SystemFailure),
        )
    )


def check_log_chunk(chunk: pb.LogChunk) -> None:
    if chunk.stream not in LOG_STREAMS:
        raise InvalidInput(
            f"log stream must be stdout, stderr or system, not {chunk.stream[:20]!r}"
        )
    if len(chunk.data) > MAX_LOG_CHUNK:
        raise InvalidInput(f"log chunk larger than {MAX_LOG_CHUNK} bytes")


def chunk_offset(chunk: pb.LogChunk) -> int | None:
    """Where the chunk starts in its attempt's output; None from an agent that does not say
    (its chunks are stored as they come)."""
    return chunk.offset if chunk.HasField("offset") else None


def check_result(result: pb.TaskResult) -> None:
    """The result's own fields; its zip is checked in the store (``TaskBlobs.check_result``)."""
    if result.status not in REPORTED_STATES:
        raise InvalidInput(f"result status {result.status[:20]!r} is not a final state")
    if result.output_digest:
        check_digest(result.output_digest, "result digest")
        if result.output_size <= 0:
            raise InvalidInput("a result with a digest must give its size")
    if not IMAGE_DIGEST.fullmatch(result.image_digest):
        raise InvalidInput(f"image digest {result.image_digest[:80]!r} is not sha256:<hex>")
