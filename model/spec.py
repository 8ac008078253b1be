"""Checking a submitted task: every field bounded, defaults filled in, one clear error each.

``check_submission`` turns a ``SubmitRequest`` into a ``TaskSpec`` or raises InvalidInput;
nothing is stored before it has passed. A task's data (its bundle and inputs) is referred
to by digest: ``data_refs`` checks the references' shape and the hub's URL policy, and
``TaskData`` is what the hub holds of them (sizes, and the files of the zips it reads).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from hivemind_cluster.core.errors import InvalidInput, PermissionDenied
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.units import format_bytes, format_cpt
from hivemind_cluster.model.blobs import (
    DIR,
    InputRef,
    check_digest,
    check_inputs,
    check_url_allowed,
)
from hivemind_cluster.model.bundles import (
    DEFAULT_ENTRYPOINTS,
    INPUT_RULES,
    PYTHON_ENV,
    BundleRules,
    check_bundle,
    default_entrypoint,
    file_paths,
    python_command,
    unpacked_size,
)
from hivemind_cluster.model.pricing import MIN_CAP_SECONDS, RateCard
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.taskfile import read_task_file
from hivemind_cluster.protos import pool_pb2 as pb

DEFAULT_PYTHON_IMAGE = "hivemind/python:3.11"
MIN_MEMORY_BYTES = 6 << 20  # Docker refuses less
MIN_DISK_BYTES = 16 << 20  # ext4 keeps a few MiB of a task's disk for itself
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
    disk_bytes: int = 0  # its working copy, /out and /tmp together
    bundle: InputRef | None = None  # the zip unpacked into /work (its size: bundle_bytes)
    inputs: tuple[InputRef, ...] = ()  # mounted under /work/inputs/, with their sizes

    def held_digests(self) -> list[str]:
        """What of its data the hub holds, by digest: what its worker may read from it."""
        return hub_digests(self.bundle, self.inputs)


@dataclass(frozen=True)
class TaskData:
    """A submission's data as the hub holds it: the bundle's and the inputs' references
    with their sizes, and the blob files of the zips among them (the bundle, ``dir``
    inputs), whose task.json and unpacked sizes the checks read."""

    bundle: InputRef | None = None
    inputs: tuple[InputRef, ...] = ()
    files: Mapping[str, Path] = field(default_factory=dict)  # digest -> the blob's file

    def held_digests(self) -> list[str]:
        return hub_digests(self.bundle, self.inputs)

    def zips(self) -> list[InputRef]:
        """The references unpacked onto the task's disk: the bundle and ``dir`` inputs."""
        bundle = [self.bundle] if self.bundle else []
        return bundle + [ref for ref in self.inputs if ref.kind == DIR]


NO_DATA = TaskData()


def hub_digests(bundle: InputRef | None, inputs: tuple[InputRef, ...]) -> list[str]:
    """The digests of a task's bundle and inputs, each once, but for URL inputs (a worker
    fetches those from their URL)."""
    refs = ([bundle] if bundle else []) + list(inputs)
    return list(dict.fromkeys(ref.digest for ref in refs if not ref.url))


def data_refs(request: pb.SubmitRequest, settings: HubSettings) -> TaskData:
    """The request's bundle and inputs, checked in shape (digests, names, kinds) and against
    the hub's URL policy (``input_url_prefixes``); their sizes are not known yet."""
    bundle = None
    if request.bundle_digest:
        bundle = InputRef("", check_digest(request.bundle_digest, "bundle"))
    inputs = tuple(check_inputs(list(request.inputs)))
    for ref in inputs:
        if ref.url:
            check_url_allowed(ref.url, settings.input_url_prefixes)
    return TaskData(bundle, inputs)


def check_submission(
    request: pb.SubmitRequest, owner: str, settings: HubSettings, data: TaskData = NO_DATA
) -> TaskSpec:
    """The checked task; ``data`` is its bundle and inputs as the hub holds them."""
    bundle_file = data.files.get(data.bundle.digest) if data.bundle else None
    request = with_bundle_defaults(request, bundle_file)
    image, command = request.image.strip(), list(request.command)
    if not image:
        raise InvalidInput(
            "no image: give --image, or a bundle with a Python entry point and no command"
        )
    if len(image) > 255 or not _IMAGE.match(image):
        raise InvalidInput(f"image {image[:80]!r} is not a valid image reference")
    check_image_allowed(image, settings)
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
    resources = _check_resources(request.resources, settings)
    _check_price_cap(request.max_cost, resources, settings)
    return TaskSpec(
        owner=owner,
        name=request.name,
        image=image,
        command=command,
        env=env,
        request=resources,
        timeout_seconds=_bounded(
            "timeout",
            timeout_with_default(request.timeout_seconds, settings),
            1,
            settings.max_task_timeout,
        ),
        priority=_bounded("priority", request.priority, 0, 9),
        max_attempts=_bounded("max attempts", request.max_attempts or settings.max_attempts, 1, 10),
        network=_check_network(request.network, settings),
        bundle_bytes=data.bundle.size if data.bundle else 0,
        disk_bytes=_check_unpacked_fits(data, _check_disk(request.disk_bytes, settings)),
        bundle=data.bundle,
        inputs=data.inputs,
    )


def with_bundle_defaults(request: pb.SubmitRequest, bundle: Path | None = None) -> pb.SubmitRequest:
    """``request`` as its bundle (checked here) completes it, in the original convention:
    the bundle's task.json fills the fields left empty, and with no command the bundle's
    Python entry point runs, unbuffered, the bundle on PYTHONPATH, in the Python image
    unless another is named. A bundle with nothing to run is refused here, not left to fail
    on a worker after it was paid for. ``bundle`` is the file of ``request.bundle_digest``
    (the hub's blob); None: the request has no bundle."""
    if bundle is None:
        return request
    names = check_bundle(bundle)
    task_file = read_task_file(bundle, file_paths(names))
    merged = task_file.under(request)
    if not merged.command:
        entrypoint = task_file.entrypoint or default_entrypoint(names)
        if entrypoint is None:
            raise InvalidInput(NOTHING_TO_RUN)
        merged.command.extend(python_command(entrypoint))
        merged.image = merged.image.strip() or DEFAULT_PYTHON_IMAGE
        for name, value in PYTHON_ENV.items():
            if name not in merged.env:
                merged.env[name] = value
    return merged


NOTHING_TO_RUN = (
    "nothing to run: no command was given, and the bundle has none of "
    f"{', '.join(DEFAULT_ENTRYPOINTS)} nor any other *.py at its top level "
    "(give the command after --, or name the file as entrypoint in task.json)"
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


def _check_price_cap(max_cost: int, request: Resources, settings: HubSettings) -> None:
    """Refuse a ``max_cost`` that cannot buy MIN_CAP_SECONDS of the request: the task would
    be stopped before it did anything, and the submitter would pay for that."""
    rates = RateCard.from_settings(settings)
    bought = rates.seconds_bought(request, max_cost) if max_cost > 0 else None
    if bought is not None and bought < MIN_CAP_SECONDS:
        least = rates.cost(request, MIN_CAP_SECONDS)
        raise InvalidInput(
            f"max cost {format_cpt(max_cost)} CPT buys only {bought:g} s of "
            f"{request.describe()} at the rate card; the least it may be is "
            f"{format_cpt(least)} CPT ({MIN_CAP_SECONDS} s)"
        )


def _check_disk(asked: int, settings: HubSettings) -> int:
    """The task's disk limit: the hub's default when not asked, never over its maximum."""
    disk = asked or settings.task_disk_bytes
    if not MIN_DISK_BYTES <= disk <= settings.max_task_disk_bytes:
        raise InvalidInput(
            f"disk must be between {format_bytes(MIN_DISK_BYTES)} and "
            f"{format_bytes(settings.max_task_disk_bytes)} (hub setting max_task_disk_bytes), "
            f"got {format_bytes(disk)}"
        )
    return disk


def _check_unpacked_fits(data: TaskData, disk: int) -> int:
    """Refuse, at submission, a task whose bundle and ``dir`` inputs declare they unpack to
    more than its disk holds: it could only fail on a worker, after it was paid for."""
    unpacked = 0
    for ref in data.zips():
        found = data.files.get(ref.digest)
        if found is not None:
            unpacked += unpacked_size(found, _rules_for(ref))
    if unpacked > disk:
        raise InvalidInput(
            f"the bundle and dir inputs unpack to {format_bytes(unpacked)}, more than the "
            f"task's disk of {format_bytes(disk)} (ask for more with --disk)"
        )
    return disk


def _rules_for(ref: InputRef) -> BundleRules:
    """The input rules, named as the submission names the zip: a bad ``dir`` input says
    "dir input 'data' is not a zip file", not that the bundle is not."""
    return replace(INPUT_RULES, name=f"dir input {ref.name!r}") if ref.name else INPUT_RULES


def _check_network(wanted: bool, settings: HubSettings) -> bool:
    if wanted and not settings.allow_task_network:
        raise PermissionDenied(
            "this hub does not allow tasks with network access (hub setting allow_task_network)"
        )
    return wanted


def check_image_allowed(image: str, settings: HubSettings) -> None:
    """Refuse, before anything is queued or charged, an image the hub's policy does not
    list: a worker would otherwise pull and run it."""
    patterns = [p.strip() for p in settings.allowed_images.split(",") if p.strip()]
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in patterns):
        raise PermissionDenied(
            f"image {image!r} is not allowed on this hub "
            f"(hub setting allowed_images: {settings.allowed_images!r})"
        )


def _bounded(what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{what} must be between {low} and {high}, got {value}")
    return value
