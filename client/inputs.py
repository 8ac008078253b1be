"""The data of a submission: ``--bundle DIR|ZIP``, ``--input [NAME=]PATH`` and
``--input-url [NAME=]URL#sha256=HEX``, as the body of ``POST /api/v1/tasks`` names them
(``bundle``: a digest; ``inputs``: ``{name, digest, kind}`` or ``{name, url}``).

Three steps, so that bad input is one error before anything is sent: ``plan_data`` checks
the options (paths exist, names are valid and distinct, URLs carry their digest);
``digest_data`` finds every digest (the digest cache first: a file unchanged since last time
is not read, a directory unchanged is not zipped); ``upload_data`` sends what the hub does
not hold yet. A directory is zipped into the scratch directory only when it must be
uploaded (or its zip's digest is not known yet).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivemind_cluster.client.digests import DigestCache, Known, listing_key
from hivemind_cluster.client.progress import QUIET, Bars
from hivemind_cluster.client.transfer import UploadTransport, upload_file
from hivemind_cluster.core.errors import HiveMindError, InvalidInput, NotFound
from hivemind_cluster.model.blobs import (
    DIR,
    FILE,
    MAX_INPUTS,
    check_input_name,
    digest_hex,
    hash_file,
    parse_input_url,
    url_name,
)
from hivemind_cluster.model.bundles import INPUT_RULES, bundle_from_path, pack_directory


@dataclass(frozen=True)
class Item:
    """A file or a directory to send: the bundle (``name`` "") or a named input."""

    name: str
    path: Path  # absolute, symlinks resolved
    kind: str  # FILE (a bundle's .zip too) or DIR (zipped before it is sent)

    @property
    def label(self) -> str:
        return f"input {self.name}" if self.name else "bundle"


@dataclass(frozen=True)
class UrlInput:
    name: str
    url: str
    digest: str


@dataclass(frozen=True)
class Plan:
    bundle: Item | None
    inputs: list[Item | UrlInput]


@dataclass
class Prepared:
    """An item with its digest; ``zipped``: the file sent for it (a directory's zip, None
    while it was not needed)."""

    item: Item
    known: Known
    zipped: Path | None = None
    listing: str = ""  # a directory's cache key


@dataclass(frozen=True)
class Uploaded:
    name: str  # "" for the bundle
    digest: str
    size: int
    sent_bytes: int  # 0: the hub held it already

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "size": self.size,
            "sent_bytes": self.sent_bytes,
        }


def plan_data(bundle: str, inputs: list[str], urls: list[str], scratch: Path) -> Plan:
    """The options checked, nothing read but a .zip bundle's directory."""
    planned: list[Item | UrlInput] = [input_path(text) for text in inputs]
    planned += [input_url(text) for text in urls]
    if len(planned) > MAX_INPUTS:
        raise InvalidInput(f"at most {MAX_INPUTS} inputs")
    names = [entry.name for entry in planned]
    for name in names:
        if names.count(name) > 1:
            raise InvalidInput(f"two inputs are named {name!r}: name them, --input NAME=PATH")
    return Plan(bundle_item(bundle, scratch) if bundle else None, planned)


def bundle_item(text: str, scratch: Path) -> Item:
    path = Path(text)  # as given, for its errors
    if path.is_dir():
        return Item("", path.resolve(), DIR)
    return Item("", bundle_from_path(path, scratch).resolve(), FILE)  # a .zip, checked


def input_path(text: str) -> Item:
    """``PATH`` (named by its last component) or ``NAME=PATH``."""
    name, sep, rest = text.partition("=")
    named = bool(sep) and not os.path.lexists(text)
    given = rest if named else text
    if not given:
        raise InvalidInput(f"--input {text!r}: give a path (PATH or NAME=PATH)")
    path = Path(os.path.abspath(given))
    name = name if named else path.name
    try:
        check_input_name(name)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc.message}; name it: --input NAME=PATH") from None
    resolved = path.resolve()
    if resolved.is_dir():
        return Item(name, resolved, DIR)
    if not resolved.is_file():
        if not resolved.exists():
            raise NotFound(f"input {name}: {given!r} does not exist")
        raise InvalidInput(f"input {name}: {given!r} is neither a file nor a directory")
    if not resolved.stat().st_size:
        raise InvalidInput(f"input {name}: {given!r} is empty (the hub takes no empty files)")
    return Item(name, resolved, FILE)


def input_url(text: str) -> UrlInput:
    """``URL#sha256=HEX`` (named by the URL's last path segment) or ``NAME=URL#sha256=HEX``."""
    name, sep, rest = text.partition("=")
    named = sep and not text.lower().startswith(("http://", "https://"))
    url, digest = parse_input_url(rest if named else text)
    name = name if named else url_name(url)
    try:
        check_input_name(name)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc.message}; name it: --input-url NAME=URL#sha256=HEX") from None
    return UrlInput(name, url, digest)


def items_of(plan: Plan) -> list[Item]:
    files = [entry for entry in plan.inputs if isinstance(entry, Item)]
    return [plan.bundle, *files] if plan.bundle else files


def digest_data(
    plan: Plan, cache: DigestCache, scratch: Path, bars: Bars = QUIET
) -> list[Prepared]:
    """Every item's digest: from the cache, else hashed (a directory zipped first)."""
    prepared = []
    for item in items_of(plan):
        if item.kind == FILE:
            prepared.append(Prepared(item, cache.file_digest(item.path, bars, item.label)))
            continue
        listing, count = listing_key(item.path)
        if not count:
            raise InvalidInput(f"{item.label}: directory {str(item.path)!r} has no files")
        known = cache.get(listing)
        entry = Prepared(item, known or Known("", 0), listing=listing)
        if known is None:
            zip_directory(entry, cache, scratch, bars)
        prepared.append(entry)
    return prepared


def zip_directory(entry: Prepared, cache: DigestCache, scratch: Path, bars: Bars) -> None:
    """Zip the entry's directory into ``scratch``; its digest goes into the cache."""
    item = entry.item
    target = scratch / (f"input-{item.name}" if item.name else "bundle")
    target.mkdir(exist_ok=True)
    if not item.name:
        zipped = bundle_from_path(item.path, target)
    else:
        zipped = target / "input.zip"
        pack_directory(item.path, zipped, INPUT_RULES, f"input directory {str(item.path)!r}")
    with bars.meter(f"hashing {item.label}", zipped.stat().st_size) as meter:
        hashed = hash_file(zipped, meter.advance)
    entry.known, entry.zipped = Known(hashed.digest, hashed.size), zipped
    cache.put(entry.listing, entry.known)


def upload_data(
    transport: UploadTransport,
    prepared: list[Prepared],
    cache: DigestCache,
    scratch: Path,
    bars: Bars = QUIET,
) -> list[Uploaded]:
    """Send what the hub does not hold; each error names its input."""
    done = []
    for entry in prepared:
        try:
            done.append(upload_one(transport, entry, cache, scratch, bars))
        except HiveMindError as exc:
            raise type(exc)(f"{entry.item.label}: {exc.message}") from None
    return done


def upload_one(
    transport: UploadTransport,
    entry: Prepared,
    cache: DigestCache,
    scratch: Path,
    bars: Bars,
) -> Uploaded:
    item = entry.item
    if item.kind == DIR and entry.zipped is None:  # known from the cache: zip if needed
        state = transport.begin_upload(entry.known.digest, entry.known.size)
        if state["complete"]:
            return Uploaded(item.name, entry.known.digest, entry.known.size, 0)
        zip_directory(entry, cache, scratch, bars)
    source = entry.zipped or item.path
    sent = upload_file(transport, source, entry.known.digest, entry.known.size, bars, item.label)
    if entry.zipped is not None:
        entry.zipped.unlink(missing_ok=True)  # sent: the scratch space is free again
    return Uploaded(item.name, entry.known.digest, entry.known.size, sent)


def body_fields(plan: Plan, uploaded: list[Uploaded]) -> dict[str, Any]:
    """``bundle`` and ``inputs`` of the submission body (left out when there are none)."""
    by_name = {done.name: done for done in uploaded}
    fields: dict[str, Any] = {}
    if plan.bundle is not None:
        fields["bundle"] = by_name[""].digest
    inputs: list[dict[str, str]] = []
    for entry in plan.inputs:
        if isinstance(entry, UrlInput):
            url = f"{entry.url}#sha256={digest_hex(entry.digest)}"
            inputs.append({"name": entry.name, "url": url})
        else:
            inputs.append(
                {"name": entry.name, "digest": by_name[entry.name].digest, "kind": entry.kind}
            )
    if inputs:
        fields["inputs"] = inputs
    return fields


def send_data(
    transport: UploadTransport,
    bundle: str,
    inputs: list[str],
    urls: list[str],
    bars: Bars = QUIET,
    cache: DigestCache | None = None,
) -> tuple[dict[str, Any], list[Uploaded]]:
    """The submission's data, checked then uploaded: its body fields and what was sent.
    The digest cache is saved even when an upload fails (the hashing is not lost)."""
    cache = cache or DigestCache.default()
    with tempfile.TemporaryDirectory(prefix="hivemind-submit-") as directory:
        scratch = Path(directory)
        plan = plan_data(bundle, inputs, urls, scratch)
        try:
            prepared = digest_data(plan, cache, scratch, bars)
            uploaded = upload_data(transport, prepared, cache, scratch, bars)
        finally:
            cache.save()
    return body_fields(plan, uploaded), uploaded
