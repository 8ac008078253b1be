"""A bundle's ``task.json``: the defaults the original HiveMind templates carry for their task.

The original templates put a ``task.json`` next to their code, naming the file to run and what
the task needs. What of it maps onto a submission fills the fields the request leaves empty
(flags and API fields win); other keys are ignored, so templates written for the original
worker keep working. A task.json that is there but malformed refuses the submission before
anything is stored or charged: running the task anyway would give it other resources than its
author wrote down.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.model.bundles import Source, member_path, read_member
from hivemind_cluster.protos import pool_pb2 as pb

TASK_FILE = "task.json"
MAX_TASK_FILE_BYTES = 64 * 1024
# Bounds of the file's own numbers, as the API has its "within reason": the hub's ranges (its
# longest timeout, the least memory Docker accepts) are checked with the rest of the request.
MAX_CPUS = 1024
MAX_MEMORY_GB = 4096
MAX_GPUS = 64
MAX_STORAGE_GB = 1 << 20
MAX_TIMEOUT_SECONDS = 10**7
GIB = 1 << 30

Document = Mapping[str, Any]


@dataclass(frozen=True)
class TaskFile:
    """What a task.json says, in the units of a ``SubmitRequest``; empty fields say nothing."""

    entrypoint: str = ""  # a file of the bundle, as ``member_path`` spells it
    image: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    timeout_seconds: int = 0
    disk_bytes: int = 0

    def under(self, request: pb.SubmitRequest) -> pb.SubmitRequest:
        """A copy of ``request`` whose empty fields (and missing variables) come from here."""
        merged = pb.SubmitRequest()
        merged.CopyFrom(request)
        if not merged.image.strip():
            merged.image = self.image
        for name, value in self.env.items():
            if name not in merged.env:
                merged.env[name] = value
        resources = merged.resources
        resources.cpu_millis = resources.cpu_millis or self.cpu_millis
        resources.memory_bytes = resources.memory_bytes or self.memory_bytes
        resources.gpus = resources.gpus or self.gpus
        merged.timeout_seconds = merged.timeout_seconds or self.timeout_seconds
        merged.disk_bytes = merged.disk_bytes or self.disk_bytes
        return merged


def read_task_file(bundle: Source, files: Collection[str]) -> TaskFile:
    """The checked bundle's task.json, checked (an empty TaskFile when it has none);
    ``files`` are the bundle's ``file_paths``, which an entrypoint must be one of."""
    content = read_member(bundle, TASK_FILE, MAX_TASK_FILE_BYTES)
    if content is None:
        return TaskFile()
    try:
        document = json.loads(content.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InvalidInput("task.json is not UTF-8 text") from None
    except ValueError as error:  # JSONDecodeError, or an integer of over 4300 digits
        raise InvalidInput(f"task.json is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidInput("task.json is not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidInput("task.json must hold a JSON object ({...})")
    return parse_task_file(document, files)


def parse_task_file(document: Document, files: Collection[str]) -> TaskFile:
    """The keys that map onto a submission; resource keys may also sit under
    ``requirements``, as in the original templates."""
    requirements = document.get("requirements")
    if requirements is None:
        requirements = {}
    if not isinstance(requirements, dict):
        raise InvalidInput(f"task.json: requirements must be an object, got {shown(requirements)}")
    return TaskFile(
        entrypoint=entrypoint_in(files, string_of("entrypoint", document.get("entrypoint"))),
        image=string_of("image", document.get("image")),
        env=variables_of(document.get("env")),
        cpu_millis=number_setting(document, requirements, ("cpu", "cpu_cores"), as_cpu_millis),
        memory_bytes=number_setting(document, requirements, ("memory_gb",), as_memory_bytes),
        gpus=number_setting(document, requirements, ("gpus",), as_gpus),
        timeout_seconds=number_setting(
            document, requirements, ("timeout", "timeout_seconds"), as_seconds
        ),
        disk_bytes=number_setting(document, requirements, ("storage_gb",), as_disk_bytes),
    )


def number_setting(
    document: Document,
    requirements: Document,
    keys: tuple[str, ...],
    convert: Callable[[str, Any], int],
) -> int:
    """One number, under any of ``keys``, in ``requirements`` or at the top level (0 when
    absent); given twice, it is refused rather than one of them picked in silence."""
    given = [(f"requirements.{key}", requirements.get(key)) for key in keys]
    given += [(key, document.get(key)) for key in keys]
    given = [(where, value) for where, value in given if value is not None]
    if len(given) > 1:
        raise InvalidInput(f"task.json gives both {given[0][0]} and {given[1][0]}: keep one")
    return convert(*given[0]) if given else 0


def shown(value: Any) -> str:
    """A value of the file as its author wrote it, shortened, for an error message."""
    return json.dumps(value)[:40]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive_number(where: str, value: Any, most: int) -> float:
    if is_number(value) and 0 < value <= most:
        return float(value)
    raise InvalidInput(
        f"task.json: {where} must be a number above 0, at most {most}, got {shown(value)}"
    )


def whole_number_between(where: str, value: Any, least: int, most: int) -> int:
    if is_number(value) and value == int(value) and least <= value <= most:
        return int(value)
    raise InvalidInput(
        f"task.json: {where} must be a whole number from {least} to {most}, got {shown(value)}"
    )


def as_cpu_millis(where: str, value: Any) -> int:
    return max(1, round(positive_number(where, value, MAX_CPUS) * 1000))


def as_memory_bytes(where: str, value: Any) -> int:
    return max(1, int(positive_number(where, value, MAX_MEMORY_GB) * GIB))


def as_disk_bytes(where: str, value: Any) -> int:
    return max(1, int(positive_number(where, value, MAX_STORAGE_GB) * GIB))


def as_gpus(where: str, value: Any) -> int:
    return whole_number_between(where, value, 0, MAX_GPUS)


def as_seconds(where: str, value: Any) -> int:
    return whole_number_between(where, value, 1, MAX_TIMEOUT_SECONDS)


def string_of(where: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"task.json: {where} must be a string, got {shown(value)}")
    return value.strip()


def entrypoint_in(files: Collection[str], entrypoint: str) -> str:
    """The entrypoint as ``member_path`` spells it (``./main.py`` is ``main.py``)."""
    if not entrypoint:
        return ""
    try:
        path = member_path(entrypoint)
    except InvalidInput:  # absolute, or outside the bundle: not one of its files either
        path = ""
    if path not in files:
        raise InvalidInput(f"task.json: entrypoint {entrypoint[:80]!r} is not a file in the bundle")
    return path


def variables_of(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidInput(
            f'task.json: env must be an object of strings ({{"NAME": "value"}}), got {shown(value)}'
        )
    return dict(value)
