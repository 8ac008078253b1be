"""Each attempt's output on its way to the pool, kept until the pool has it.

Every chunk carries its offset in the attempt's output (all streams together). A chunk
stays here after it is written to the stream, since a cut stream loses what was in
flight: a reconnect sends the kept chunks again, before any result, and the pool stores
each byte once (``hm_task_log``). They go when the pool acknowledges the attempt's result:
it handles a stream's messages in order, so it had all the output before it.

Two bounds per attempt keep memory finite: ``REPLAY_BYTES`` of written chunks are kept for
a resend (a cut loses no more than is in flight), ``BACKLOG_BYTES`` of chunks not written
yet (while disconnected). Past the backlog, output is dropped (its offset still advances): the pool
sees the gap in the offsets, or the result's ``log_bytes`` past its last chunk, and the log
says how many bytes never arrived. Nothing is kept on disk: an agent that restarts has
lost its attempts as well (the pool requeues them, and the next attempt's log is whole).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field

from hivemind_cluster.agent.taskrun import OnOutput
from hivemind_cluster.protos import pool_pb2 as pb

LOG_PIECE = 64 * 1024  # the output goes up in pieces of at most this many bytes

REPLAY_BYTES = 2 * 1024 * 1024
BACKLOG_BYTES = 8 * 1024 * 1024

Key = tuple[str, int]


@dataclass
class AttemptLog:
    """One attempt's output not known to be stored yet; changed on the event loop only."""

    task_id: str
    attempt: int
    produced: int = 0  # bytes of output so far: the next chunk's offset
    closed: bool = False  # the pool has it all, or refused the attempt: output is ignored
    written: collections.deque[pb.LogChunk] = field(default_factory=collections.deque)
    written_bytes: int = 0
    unsent: collections.deque[pb.LogChunk] = field(default_factory=collections.deque)
    unsent_bytes: int = 0

    def add(self, stream: str, data: bytes) -> bool:
        """Queue a chunk; False when there is nothing new to send (closed, or dropped)."""
        if self.closed:
            return False
        offset, self.produced = self.produced, self.produced + len(data)
        if self.unsent_bytes + len(data) > BACKLOG_BYTES:
            return False
        chunk = pb.LogChunk(
            task_id=self.task_id, attempt=self.attempt, stream=stream, data=data, offset=offset
        )
        self.unsent.append(chunk)
        self.unsent_bytes += len(data)
        return True

    def take_unsent(self) -> list[pb.LogChunk]:
        """The chunks to write now, kept as written (the oldest forgotten past the bound)."""
        taken = list(self.unsent)
        self.unsent.clear()
        self.unsent_bytes = 0
        for chunk in taken:
            self.written.append(chunk)
            self.written_bytes += len(chunk.data)
        while self.written_bytes > REPLAY_BYTES and len(self.written) > 1:
            self.written_bytes -= len(self.written.popleft().data)
        return taken

    def rewind(self) -> None:
        """A new stream: what was written on the old one is sent again, first."""
        self.written.extend(self.unsent)
        self.written, self.unsent = collections.deque(), self.written
        self.unsent_bytes += self.written_bytes
        self.written_bytes = 0


class TaskLogs:
    """The output of every attempt whose result the pool has not acknowledged yet."""

    def __init__(self) -> None:
        self._attempts: dict[Key, AttemptLog] = {}

    def open(self, task_id: str, attempt: int) -> AttemptLog:
        opened = self._attempts[(task_id, attempt)] = AttemptLog(task_id, attempt)
        return opened

    def close(self, key: Key) -> None:
        """The pool has the attempt's output, or refuses the attempt: forget it."""
        closed = self._attempts.pop(key, None)
        if closed is not None:
            closed.closed = True

    def take_unsent(self) -> list[pb.LogChunk]:
        return [chunk for log in self._attempts.values() for chunk in log.take_unsent()]

    def rewind(self) -> None:
        for log in self._attempts.values():
            log.rewind()


def output_sender(
    loop: asyncio.AbstractEventLoop, output: AttemptLog, on_backlog: Callable[[], None]
) -> OnOutput:
    """The executor's ``on_output``, called on its thread: the output goes up in LOG_PIECE
    chunks, kept through the event loop (the attempt's log is not thread-safe);
    ``on_backlog`` when a piece waits to be sent."""

    def keep(stream: str, piece: bytes) -> None:
        if output.add(stream, piece):
            on_backlog()

    def on_output(stream: str, data: bytes) -> None:
        for start in range(0, len(data), LOG_PIECE):
            loop.call_soon_threadsafe(keep, stream, data[start : start + LOG_PIECE])

    return on_output
