"""Checking a submitted task: every field bounded, defaults filled in, one clear error each.

``check_submission`` turns a ``SubmitRequest`` into a ``TaskSpec`` or raises InvalidInput;
nothing is stored before it has passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hivemind_cluster.core.errors import InvalidInput, PermissionDenied
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.model.bundles import check_bundle, default_command
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.protos import pool_pb2 as pb

DEFAULT_PYTHON_IMAGE = "hivemind/python:3.11"
MIN_MEMORY_BYTES = 6 << 20  # Docker refuses less
MAX_COMMAND_ARGS = 256
MAX_COMMAND_BYTES = 64 << 10
MAX_ENV = 64  # environment variables per task (the web checks the same bound)
MAX_VALUE_BYTES = 4096
_IMAGE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_NAME = re.compile(r"^[\w .:/@+-]{0,100}$")


@dataclass(frozen=True)
class TaskSpec:
    owner: str
    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    request: Resources
    timeout_seconds: int
    priority: int
    max_attempts: int
    network: bool
    bundle_bytes: int = 0


def check_submission(request: pb.SubmitRequest, owner: str, settings: HubSettings) -> TaskSpec:
    names = check_bundle(request.input_bundle) if request.input_bundle else []
    image, command = request.image.strip(), list(request.command)
    if not command:
        entry = default_command(names)
        if entry is not None:
            command, image = entry, image or DEFAULT_PYTHON_IMAGE
    if not image:
        raise InvalidInput(
            "no image: give --image, or a bundle with main.py/app.py/run.py/start.py"
        )
    if len(image) > 255 or not _IMAGE.match(image):
        raise InvalidInput(f"image {image[:80]!r} is not a valid image reference")
    _check_command(command)
    env = dict(request.env)
    if len(env) > MAX_ENV:
        raise InvalidInput(f"at most {MAX_ENV} environment variables")
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise InvalidInput(f"environment variable name {key[:40]!r} is not valid")
        if len(value.encode()) > MAX_VALUE_BYTES or "\0" in value:
            raise InvalidInput(f"environment variable {key} is too long or contains NUL")
    if not _NAME.match(request.name):
        raise InvalidInput("task name: up to 100 letters, digits, spaces and ._:/@+-")
    return TaskSpec(
        owner=owner,
        name=request.name,
        image=image,
        command=command,
        env=env,
        request=_check_resources(request.resources, settings),
        timeout_seconds=_bounded(
            "timeout",
            timeout_with_default(request.timeout_seconds, settings),
            1,
            settings.max_task_timeout,
        ),
        priority=_bounded("priority", request.priority, 0, 9),
        max_attempts=_bounded("max attempts", request.max_attempts or settings.max_attempts, 1, 10),
        network=_check_network(request.network, settings),
        bundle_bytes=len(request.input_bundle),
    )


def _check_command(command: list[str]) -> None:
    if len(command) > MAX_COMMAND_ARGS:
        raise InvalidInput(f"command has more than {MAX_COMMAND_ARGS} arguments")
    if sum(len(arg.encode()) for arg in command) > MAX_COMMAND_BYTES:
        raise InvalidInput(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    if any("\0" in arg for arg in command):
        raise InvalidInput("command contains a NUL character")


def with_defaults(message: pb.Resources, settings: HubSettings) -> Resources:
    """What a request asks for, the hub's defaults filling its zero fields."""
    return Resources(
        message.cpu_millis or settings.task_cpu_millis,
        message.memory_bytes or settings.task_memory_bytes,
        message.gpus,
    )


def timeout_with_default(seconds: int, settings: HubSettings) -> int:
    return seconds or settings.task_timeout


def _check_resources(message: pb.Resources, settings: HubSettings) -> Resources:
    asked = with_defaults(message, settings)
    cpu, memory = asked.cpu_millis, asked.memory_bytes
    _bounded("CPU (millicores)", cpu, 1, 1024 * 1000)
    if not MIN_MEMORY_BYTES <= memory <= 1 << 42:
        raise InvalidInput(
            f"memory must be between {format_bytes(MIN_MEMORY_BYTES)} and 4 TiB, "
            f"got {format_bytes(memory)}"
        )
    return Resources(cpu, memory, _bounded("GPUs", message.gpus, 0, 64))


def _check_network(wanted: bool, settings: HubSettings) -> bool:
    if wanted and not settings.allow_task_network:
        raise PermissionDenied(
            "this hub does not allow tasks with network access (hub setting allow_task_network)"
        )
    return wanted


def _bounded(what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{what} must be between {low} and {high}, got {value}")
    return value
