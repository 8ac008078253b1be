"""A task's stdout and stderr, read from the container's attach socket.

The socket is opened *before* the container starts, so even a container that exits at once
loses nothing, and stdout and stderr stay apart (Docker's frame headers).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time

import docker
from docker.models.containers import Container
from docker.utils.socket import frames_iter_no_tty

from hivemind_cluster.agent.taskrun import OnOutput

log = logging.getLogger(__name__)

# How long one wait (for output, for room in the queue, for the container) lasts at most.
POLL_SECONDS = 0.25
STREAM_NAMES = {1: "stdout", 2: "stderr"}
QUEUED_CHUNKS = 1024


class OutputPump:
    """Reads the attach socket on a thread and queues (stream name, chunk) for the caller.

    A None in the queue marks the end of the stream (every process closed its stdout/stderr).
    The queue is bounded: a task that writes faster than ``on_output`` consumes is slowed
    down (its writes block) instead of filling the agent's memory.
    """

    def __init__(self, client: docker.DockerClient, container: Container) -> None:
        self.socket = client.api.attach_socket(
            str(container.id), params={"stdout": 1, "stderr": 1, "stream": 1}
        )
        self.raw: socket.socket = getattr(self.socket, "_sock", self.socket)
        self.raw.settimeout(None)  # a task may be silent for longer than the API timeout
        self.chunks: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self.ended = False
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.pump, name="task-output", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def pump(self) -> None:
        try:
            for stream_id, data in frames_iter_no_tty(self.socket):
                if isinstance(data, bytes) and data:
                    self.offer((STREAM_NAMES.get(int(stream_id), "stdout"), data))
        except (OSError, ValueError) as error:
            log.debug("output stream ended: %s", error)
        finally:
            self.offer(None)

    def offer(self, item: tuple[str, bytes] | None) -> None:
        """Queue an item, waiting for room, unless the pump is closed meanwhile."""
        while not self.closed.is_set():
            with contextlib.suppress(queue.Full):
                self.chunks.put(item, timeout=POLL_SECONDS)
                return

    def deliver(self, on_output: OnOutput, timeout: float) -> None:
        """Deliver what arrives within ``timeout`` seconds (less if the stream ends)."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            try:
                chunk = self.chunks.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return
            if chunk is None:
                self.ended = True
            else:
                on_output(*chunk)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.socket.close()
        if self.thread.is_alive():  # not started when the container could not start
            self.thread.join(timeout=1)
