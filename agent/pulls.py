"""A task's image: found on the worker, or pulled from its registry when the hub allows it.

The pull goes through the Docker daemon, so registry credentials stay where ``docker
login`` put them on the worker and never pass through the pool. Its progress reaches the
task's log as a few system lines (the pull, each layer done, the digest), not one per
chunk. Images named ``hivemind/…`` are the ones ``make images`` builds on each worker and
are never pulled: the same name on Docker Hub belongs to whoever registered it there.

The digest returned is what the attempt ran, for its record: the registry digest the
reference resolved to (``repo@sha256:…`` pins it), else the image id of a local image.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
from docker.models.images import Image

from hivemind_cluster.agent.output import POLL_SECONDS
from hivemind_cluster.agent.taskrun import TaskRun
from hivemind_cluster.core.console import one_line
from hivemind_cluster.model.states import TaskState

LOCAL_IMAGES = "hivemind/"
# Pull events worth a line in the task's log, and what the line says of the layer.
LAYER_NOTES = {"Pull complete": "done", "Already exists": "already here"}
DOCKER_HUB_PREFIXES = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")
Note = Callable[[str], None]  # one line for the task's log


class ImageUnavailable(Exception):
    """The task cannot have its image: why, in one line, and the status the task ends in."""

    def __init__(self, message: str, status: str = TaskState.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def image_digest(
    client: docker.DockerClient, task: TaskRun, note: Note, cancel: threading.Event
) -> str:
    """The digest of the task's image, pulled first when missing and allowed; raises
    ImageUnavailable, or a Docker error when the daemon itself fails."""
    try:
        image = client.images.get(task.image)
    except docker.errors.ImageNotFound:
        image = pulled(client, task, note, cancel)
    return resolved_digest(image, task.image)


def pulled(
    client: docker.DockerClient, task: TaskRun, note: Note, cancel: threading.Event
) -> Image:
    if task.image.startswith(LOCAL_IMAGES):
        raise ImageUnavailable(
            f"image {task.image!r} is not available on this worker (build it with make images)"
        )
    if not task.pull:
        raise ImageUnavailable(
            f"image {task.image!r} is not on this worker and this hub does not allow pulls "
            "(hub setting allow_pulls)"
        )
    note(f"pulling {task.image}")
    started = time.monotonic()
    try:
        follow(client, task, note, cancel, started + task.timeout_seconds)
        image = client.images.get(task.image)
    except docker.errors.APIError as error:
        raise ImageUnavailable(
            f"could not pull {task.image}: {one_line(str(error.explanation or error))}"
        ) from None
    digest = resolved_digest(image, task.image)
    note(f"pulled {task.image} {digest} in {time.monotonic() - started:.1f}s")
    return image


def follow(
    client: docker.DockerClient,
    task: TaskRun,
    note: Note,
    cancel: threading.Event,
    deadline: float,
) -> None:
    """Pull, noting each finished layer, until done, cancelled or past the task's timeout.

    The pull's stream has no read timeout (the SDK sets none), so it is read on a thread of
    its own and this one stays free to stop waiting; a pull given up on finishes in the
    daemon, and its image is there for the next task that names it.
    """
    events: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            for event in client.api.pull(task.image, stream=True, decode=True):
                events.put(event)
            events.put(None)
        except Exception as error:  # handed over to the waiting thread
            events.put(error)

    threading.Thread(target=read, name=f"pull-{task.task_id}", daemon=True).start()
    while True:
        if cancel.is_set():
            raise ImageUnavailable("cancelled", TaskState.CANCELLED)
        if time.monotonic() >= deadline:
            raise ImageUnavailable(
                f"timed out after {task.timeout_seconds}s pulling {task.image}",
                TaskState.TIMED_OUT,
            )
        try:
            event = events.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
        if event is None:
            return
        if isinstance(event, Exception):
            raise event
        if "error" in event:
            raise ImageUnavailable(f"could not pull {task.image}: {one_line(str(event['error']))}")
        layer_note = LAYER_NOTES.get(str(event.get("status", "")))
        if layer_note:
            note(f"layer {event.get('id', '?')} {layer_note}")


def resolved_digest(image: Image, reference: str) -> str:
    """The registry digest ``reference`` stands for, else (a local image) the image id."""
    if "@" in reference:
        return reference.partition("@")[2]
    wanted = familiar(repository_of(reference))
    for repo_digest in image.attrs.get("RepoDigests") or []:
        name, _, digest = str(repo_digest).partition("@")
        if familiar(name) == wanted and digest:
            return digest
    return str(image.id)


def repository_of(reference: str) -> str:
    """``host:5000/team/tool:1`` → ``host:5000/team/tool`` (a tag follows the last slash)."""
    name = reference.partition("@")[0]
    head, slash, last = name.rpartition("/")
    return head + slash + last.partition(":")[0]


def familiar(repository: str) -> str:
    """A Docker Hub name as Docker shows it: ``docker.io/library/python`` → ``python``."""
    for prefix in DOCKER_HUB_PREFIXES:
        if repository.startswith(prefix):
            repository = repository.removeprefix(prefix)
            break
    return repository.removeprefix("library/")
