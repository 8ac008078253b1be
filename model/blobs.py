"""Blobs: data by content. Inputs and results travel as blobs named by their SHA-256 digest
(``sha256:<64 hex>``), in chunks of ``CHUNK_BYTES``, and every side verifies what it got.

A task refers to its inputs by digest (``InputRef``): its bundle (a zip unpacked into the
writable ``/work``) and any number of named inputs mounted read-only under
``/work/inputs/<name>``: a ``file`` as it is, a ``dir`` (a zip of a directory) unpacked.
An input may also name a URL (``URL#sha256=HEX``) the worker fetches it from, where the hub
allows it (hub setting ``input_url_prefixes``).

This module is the task model's part: names, digests, hashing and the input reference. The
hub's store is ``blobs/``, the worker's cache ``agent/inputs.py``, the CLI's transfers
``client/transfer.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hivemind_cluster.core.errors import InvalidInput, PermissionDenied
from hivemind_cluster.core.units import MIB
from hivemind_cluster.protos import pool_pb2 as pb

CHUNK_BYTES = 1 * MIB  # one gRPC message of blob data, one read of a file
DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_URL_DIGEST = re.compile(r"^(?P<url>[^#]+)#sha256=(?P<hex>[0-9a-fA-F]{64})$")
FILE, DIR = "file", "dir"
INPUT_KINDS = (FILE, DIR)
MAX_INPUTS = 64
MAX_INPUT_NAME = 100
MAX_URL = 2048
INPUTS_DIR = "inputs"  # /work/inputs/<name>
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@,-]{0,99}$")

# Called with the number of bytes just moved (progress bars).
OnBytes = Callable[[int], None]


def check_digest(text: str, what: str = "digest") -> str:
    """``text`` if it is ``sha256:<64 lowercase hex>``, else InvalidInput naming ``what``."""
    if not isinstance(text, str) or not _DIGEST.match(text):
        shown = text[:80] if isinstance(text, str) else type(text).__name__
        raise InvalidInput(f"{what} {shown!r} is not sha256:<64 hex digits>")
    return text


def digest_hex(digest: str) -> str:
    """The 64 hex digits of a checked digest."""
    return check_digest(digest).removeprefix(DIGEST_PREFIX)


class Hasher:
    """SHA-256 of bytes fed in order; ``digest`` in our spelling."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return DIGEST_PREFIX + self._hash.hexdigest()


def hash_file(path: Path, on_bytes: OnBytes | None = None, limit: int | None = None) -> Hasher:
    """The digest and size of the file at ``path`` (symlinks not followed), read in chunks;
    stops after ``limit`` bytes when given (the prefix of a partial file)."""
    hasher = Hasher()
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as source:
        while limit is None or hasher.size < limit:
            want = CHUNK_BYTES if limit is None else min(CHUNK_BYTES, limit - hasher.size)
            chunk = source.read(want)
            if not chunk:
                break
            hasher.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return hasher


def check_input_name(name: str) -> str:
    """A name under /work/inputs/: one path component of letters, digits and ``_.+=@,-``."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        shown = name[:40] if isinstance(name, str) else type(name).__name__
        raise InvalidInput(
            f"input name {shown!r}: up to {MAX_INPUT_NAME} letters, digits and _.+=@,- "
            "(not starting with . or -), one name, no /"
        )
    return name


def parse_input_url(text: str) -> tuple[str, str]:
    """``https://host/path#sha256=HEX`` → (url, digest). Only http and https; the digest is
    required, since the worker verifies what it fetched against it."""
    if not isinstance(text, str) or len(text) > MAX_URL or not text.isprintable():
        raise InvalidInput(f"input URL: printable text of at most {MAX_URL} characters")
    found = _URL_DIGEST.match(text.strip())
    if found is None:
        raise InvalidInput(
            f"input URL {text[:80]!r}: write it as URL#sha256=HEX (the content's SHA-256)"
        )
    url = found["url"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise InvalidInput(f"input URL {url[:80]!r}: http(s)://HOST/PATH, no user or password")
    return url, DIGEST_PREFIX + found["hex"].lower()


def url_name(url: str) -> str:
    """The default input name of a URL: its last path segment, or ``download``."""
    last = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    return last if _NAME.match(last or "-") else "download"


def check_url_allowed(url: str, prefixes: str) -> None:
    """Refuse a URL no comma-separated prefix of the hub setting ``input_url_prefixes``
    starts (none: no URL inputs at all)."""
    allowed = [p.strip() for p in prefixes.split(",") if p.strip()]
    if not any(url.startswith(prefix) for prefix in allowed):
        raise PermissionDenied(
            f"input URL {url[:80]!r} is not allowed on this hub "
            f"(hub setting input_url_prefixes: {prefixes!r})"
        )


@dataclass(frozen=True)
class InputRef:
    """One input of a task, by content (the wire form is ``pb.InputRef``)."""

    name: str  # under /work/inputs/; "" for the bundle
    digest: str
    size: int = 0  # the blob's bytes (0: not known yet, a URL's)
    kind: str = FILE  # FILE | DIR (a zip of a directory)
    url: str = ""

    def message(self) -> pb.InputRef:
        return pb.InputRef(
            name=self.name, digest=self.digest, size=self.size, kind=self.kind, url=self.url
        )

    @classmethod
    def of(cls, message: pb.InputRef) -> InputRef:
        return cls(message.name, message.digest, message.size, message.kind, message.url)

    def as_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> InputRef:
        return cls(
            str(data.get("name") or ""),
            str(data.get("digest") or ""),
            int(str(data.get("size") or 0)),
            str(data.get("kind") or FILE),
            str(data.get("url") or ""),
        )


def check_input(message: pb.InputRef) -> InputRef:
    """A submitted input's shape: a valid name, a digest, a known kind, a URL that parses."""
    name = check_input_name(message.name)
    kind = message.kind or FILE
    if kind not in INPUT_KINDS:
        kinds = ", ".join(INPUT_KINDS)
        raise InvalidInput(f"input {name}: kind {kind[:20]!r} is not one of {kinds}")
    if message.url:
        url, digest = parse_input_url(f"{message.url}#sha256={digest_hex(message.digest)}")
        if kind != FILE:
            raise InvalidInput(f"input {name}: a URL input is a file")
        return InputRef(name, digest, 0, FILE, url)
    return InputRef(name, check_digest(message.digest, f"input {name}: digest"), 0, kind)


def check_inputs(messages: list[pb.InputRef]) -> list[InputRef]:
    """Every input checked; at most MAX_INPUTS, names unique."""
    if len(messages) > MAX_INPUTS:
        raise InvalidInput(f"at most {MAX_INPUTS} inputs")
    inputs = [check_input(message) for message in messages]
    names = [ref.name for ref in inputs]
    for name in names:
        if names.count(name) > 1:
            raise InvalidInput(f"two inputs are named {name!r}")
    return inputs
