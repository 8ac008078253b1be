"""A task submission from an API body or the submit form, checked, as a ``SubmitRequest``.

Both sources give the same fields (see the OpenAPI document); the form sends the command
as one shell-like line, the API a list. Data is never in the body: the bundle and the
inputs are blobs uploaded first (``POST /api/v1/uploads``) and named here by digest, or
inputs by ``URL#sha256=HEX``. Shapes and types are checked here; ranges (timeout,
resources, image names) and whether the blobs are the owner's by the pool itself.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.core.units import parse_cpt, parse_cpus, parse_size
from hivemind_cluster.model.blobs import (
    FILE,
    MAX_INPUTS,
    check_digest,
    check_inputs,
    parse_input_url,
    url_name,
)
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.spec import (
    MAX_COMMAND_ARGS,
    MAX_ENV,
    timeout_with_default,
    with_bundle_defaults,
    with_defaults,
)
from hivemind_cluster.protos import pool_pb2 as pb

FIELDS: dict[str, type | tuple[type, ...]] = {
    "image": str,
    "command": list,
    "env": dict,
    "cpu": (str, int, float),
    "memory": (str, int),
    "disk": (str, int),
    "gpus": int,
    "timeout": int,
    "priority": int,
    "max_attempts": int,
    "network": bool,
    "name": str,
    "max_cost": (str, int, float),
    "bundle": str,
    "inputs": list,
    "idempotency_key": str,
}
# The keys of one input: {name, digest, kind} (uploaded) or {name, url} (fetched by workers).
INPUT_FIELDS = ("name", "digest", "kind", "url")
MAX_TEXT = 4096
_DIGITS = re.compile(r"[0-9]{1,10}")


def from_json(body: Any) -> pb.SubmitRequest:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0][:40]!r}")
    for field, kind in FIELDS.items():
        value = body.get(field)
        wrong_bool = isinstance(value, bool) and kind is not bool
        if value is not None and (wrong_bool or not isinstance(value, kind)):
            raise InvalidInput(f"{field}: wrong type")
    command = body.get("command") or []
    if not all(isinstance(part, str) for part in command):
        raise InvalidInput("command: a list of strings")
    env = body.get("env") or {}
    if not all(isinstance(v, str) for v in env.values()):
        raise InvalidInput("env: values must be strings")
    inputs = [_input(item) for item in _input_list(body.get("inputs") or [])]
    return _request(body, command, env, body.get("bundle") or "", inputs)


def _input_list(items: list[Any]) -> list[dict[str, Any]]:
    if len(items) > MAX_INPUTS:
        raise InvalidInput(f"inputs: at most {MAX_INPUTS}")
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(v, str) for v in item.values()):
            raise InvalidInput("inputs: objects of text fields {name, digest, kind} or {name, url}")
        unknown = sorted(set(item) - set(INPUT_FIELDS))
        if unknown:
            raise InvalidInput(f"inputs: unknown field {unknown[0][:40]!r}")
    return items


def _input(item: dict[str, str]) -> pb.InputRef:
    """One input as the pool takes it (its shape is checked with the others in ``_request``)."""
    kind = item.get("kind") or FILE
    if "url" in item:
        if "digest" in item:
            raise InvalidInput("inputs: a digest or a url (URL#sha256=HEX), not both")
        url, digest = parse_input_url(item["url"])
        name = item.get("name") or url_name(url)
        return pb.InputRef(name=name, digest=digest, kind=kind, url=url)
    return pb.InputRef(name=item.get("name", ""), digest=item.get("digest", ""), kind=kind)


def from_form(form: Mapping[str, str]) -> pb.SubmitRequest:
    """From the submit form: every field is text; empty means the hub's default; ``bundle``
    is the digest of the uploaded bundle (the form's file, or what its script uploaded)."""
    fields: dict[str, Any] = {k: v.strip() for k, v in form.items() if k in FIELDS and v.strip()}
    for number in ("gpus", "timeout", "priority", "max_attempts"):
        if number in fields:
            fields[number] = whole_number(fields[number], number)
    try:
        command = shlex.split(fields.pop("command", ""))
    except ValueError as exc:
        raise InvalidInput(f"command: {exc}") from None
    fields["network"] = form.get("network") in ("on", "true", "1")
    return _request(fields, command, {}, fields.get("bundle", ""), [])


def whole_number(text: str, name: str, maximum: int = 10**7) -> int:
    """``"42"`` → 42: ASCII digits only (``str.isdigit`` also takes ``²``), at most ``maximum``."""
    if not _DIGITS.fullmatch(text) or int(text) > maximum:
        raise InvalidInput(f"{name}: a whole number from 0 to {maximum}")
    return int(text)


def check_text(value: str, name: str, limit: int = MAX_TEXT) -> str:
    """Text that fits and can be sent on: no NUL, no lone surrogates (JSON allows both)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInput(f"{name}: not valid Unicode text") from None
    if len(value) > limit or "\x00" in value:
        raise InvalidInput(f"{name}: too long or not text")
    return value


def _text(fields: Mapping[str, Any], name: str) -> str:
    return check_text(str(fields.get(name) or ""), name)


def _request(
    fields: Mapping[str, Any],
    command: list[str],
    env: dict[str, str],
    bundle: str,
    inputs: list[pb.InputRef],
) -> pb.SubmitRequest:
    if len(command) > MAX_COMMAND_ARGS:
        raise InvalidInput(f"command: at most {MAX_COMMAND_ARGS} words")
    for part in command:
        check_text(part, "command")
    if len(env) > MAX_ENV:
        raise InvalidInput(f"env: at most {MAX_ENV} variables")
    for key, value in env.items():
        check_text(key + value, "env")
    numbers = {n: fields.get(n) or 0 for n in ("gpus", "timeout", "priority", "max_attempts")}
    if any(not 0 <= v <= 10**7 for v in numbers.values()):
        raise InvalidInput("gpus, timeout, priority and max_attempts: 0 or more, within reason")
    if bundle:
        check_digest(bundle, "bundle")
    checked = [ref.message() for ref in check_inputs(inputs)]
    cpu, memory, max_cost = fields.get("cpu"), fields.get("memory"), fields.get("max_cost")
    return pb.SubmitRequest(
        image=_text(fields, "image"),
        command=command,
        env=env,
        resources=pb.Resources(
            cpu_millis=_parsed("cpu", parse_cpus, cpu),
            memory_bytes=_parsed("memory", parse_size, memory),
            gpus=numbers["gpus"],
        ),
        timeout_seconds=numbers["timeout"],
        priority=numbers["priority"],
        max_attempts=numbers["max_attempts"],
        network=bool(fields.get("network")),
        bundle_digest=bundle,
        inputs=checked,
        name=_text(fields, "name")[:200],
        idempotency_key=_text(fields, "idempotency_key")[:200],
        max_cost=_parsed("max_cost", parse_cpt, max_cost),
        disk_bytes=_parsed("disk", parse_size, fields.get("disk")),
    )


def _parsed(name: str, parse: Callable[[str], int], value: Any) -> int:
    """``parse(value)`` (0 when absent), its error naming the field."""
    if not value:
        return 0
    try:
        return parse(str(value))
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc.message}") from None


def price_cap(request: pb.SubmitRequest, settings: HubSettings, bundle: Path | None) -> int:
    """What the pool will hold in escrow for this request (its ``max_cost`` if given):
    the hub's rate card and defaults, the same ones the pool applies. ``bundle`` is the
    file of ``request.bundle_digest`` (None: no bundle)."""
    if request.max_cost:
        return request.max_cost
    request = with_bundle_defaults(request, bundle)  # its task.json may ask for more
    return RateCard.from_settings(settings).price_cap(
        with_defaults(request.resources, settings),
        timeout_with_default(request.timeout_seconds, settings),
    )
