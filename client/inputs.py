"""The data of a submission: ``--bundle DIR|ZIP``, ``--input [NAME=]PATH`` and
``--input-url [NAME=]URL#sha256=HEX``, as the body of ``POST /api/v1/tasks`` names them
(``bundle``: a digest; ``inputs``: ``{name, digest, kind}`` or ``{name, url}``).

Three steps, so that bad input is one error before anything is sent: ``plan_data`` checks
the options (paths exist, names are valid and distinct, URLs carry their digest);
``digest_data`` hashes the files (the digest cache first: a file unchanged since last time
is not read) and checks the directories (file count and size; one unchanged is known from
the cache, not zipped); ``upload_data`` sends what the hub does not hold yet, one item at a
time. A directory is zipped (into client/scratch.py's directory, on disk under the user's
cache) just before it is sent, and only if the hub lacks it or its digest is not known;
its zip is removed once sent, so one zip at a time takes space, whatever their number.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivemind_cluster.client.digests import DigestCache, Known, Listing, listing_key
from hivemind_cluster.client.progress import QUIET, Bars
from hivemind_cluster.client.scratch import Scratch
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
    """An item with its digest (None: a directory not zipped yet, nor known from the cache)."""

    item: Item
    known: Known | None
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


def plan_data(bundle: str, inputs: list[str], urls: list[str]) -> Plan:
    """The options checked, nothing read but a .zip bundle's directory."""
    planned: list[Item | UrlInput] = [input_path(text) for text in inputs]
    planned += [input_url(text) for text in urls]
    if len(planned) > MAX_INPUTS:
        raise InvalidInput(f"at most {MAX_INPUTS} inputs")
    names = [entry.name for entry in planned]
    for name in names:
        if names.count(name) > 1:
            raise InvalidInput(f"two inputs are named {name!r}: name them, --input NAME=PATH")
    return Plan(bundle_item(bundle) if bundle else None, planned)


def bundle_item(text: str) -> Item:
    path = Path(text)  # as given, for its errors
    if path.is_dir():
        return Item("", path.resolve(), DIR)  # zipped when its turn to be sent comes
    # Not a directory: bundle_from_path checks the .zip and zips nothing into a scratch.
    return Item("", bundle_from_path(path, Path(os.devnull)).resolve(), FILE)


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


def digest_data(plan: Plan, cache: DigestCache, bars: Bars = QUIET) -> list[Prepared]:
    """Every digest known without zipping: a file's (from the cache, else hashed) and a
    directory's from the cache; other directories are zipped when their turn to be sent
    comes. What zipping a directory would refuse is refused here, before anything is sent."""
    prepared = []
    for item in items_of(plan):
        if item.kind == FILE:
            prepared.append(Prepared(item, cache.file_digest(item.path, bars, item.label)))
            continue
        listing = listing_key(item.path)
        check_directory(item, listing)
        prepared.append(Prepared(item, cache.get(listing.key), listing.key))
    return prepared


def directory_what(item: Item) -> str:
    """How the zipping's errors name a directory (as ``bundle_from_path`` names a bundle's)."""
    return f"{'input' if item.name else 'bundle'} directory {str(item.path)!r}"


def check_directory(item: Item, listing: Listing) -> None:
    """The checks ``pack_directory`` makes first, made from the listing already taken."""
    what = directory_what(item)
    if not listing.files:
        raise InvalidInput(f"{item.label}: directory {str(item.path)!r} has no files")
    if listing.files > INPUT_RULES.max_files:
        raise InvalidInput(f"{what} has more than {INPUT_RULES.max_files} files")
    if listing.size > INPUT_RULES.max_unpacked_bytes:
        raise INPUT_RULES.holds_too_much(what, listing.size)


@contextmanager
def zipped_directory(
    entry: Prepared, cache: DigestCache, scratch: Scratch, bars: Bars
) -> Iterator[tuple[Path, Known]]:
    """The entry's directory zipped into the scratch directory and hashed (its digest goes
    into the cache), for as long as it is being sent; then removed, so that only one
    directory's zip takes space at a time."""
    item = entry.item
    target = scratch.path() / (f"input-{item.name}" if item.name else "bundle")
    try:
        target.mkdir()
        if not item.name:
            zipped = bundle_from_path(item.path, target)
        else:
            zipped = target / "input.zip"
            pack_directory(item.path, zipped, INPUT_RULES, directory_what(item))
        with bars.meter(f"hashing {item.label}", zipped.stat().st_size) as meter:
            hashed = hash_file(zipped, meter.advance)
    except BaseException as exc:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, most likely
            reason = exc.strerror or exc
            where = f"cannot zip {str(item.path)!r} in {target.parent}"
            raise HiveMindError(f"{item.label}: {where}: {reason}") from None
        raise
    entry.known = Known(hashed.digest, hashed.size)
    cache.put(entry.listing, entry.known)
    try:
        yield zipped, entry.known
    finally:
        shutil.rmtree(target, ignore_errors=True)  # sent or not: the space is free again


def upload_data(
    transport: UploadTransport,
    prepared: list[Prepared],
    cache: DigestCache,
    scratch: Scratch,
    bars: Bars = QUIET,
) -> list[Uploaded]:
    """Send what the hub does not hold, one item after the other (a directory zipped just
    before it is sent, its zip removed just after)."""
    return [upload_one(transport, entry, cache, scratch, bars) for entry in prepared]


def upload_one(
    transport: UploadTransport,
    entry: Prepared,
    cache: DigestCache,
    scratch: Scratch,
    bars: Bars,
) -> Uploaded:
    item, known = entry.item, entry.known
    if known is not None:
        if item.kind == FILE:
            return send_item(transport, item, item.path, known, bars)
        with named_by(item):  # a directory known from the cache: zipped only if needed
            held = transport.begin_upload(known.digest, known.size)["complete"]
        if held:
            return Uploaded(item.name, known.digest, known.size, 0)
    with zipped_directory(entry, cache, scratch, bars) as (zipped, known):
        return send_item(transport, item, zipped, known, bars)


def send_item(
    transport: UploadTransport, item: Item, path: Path, known: Known, bars: Bars
) -> Uploaded:
    with named_by(item):
        sent = upload_file(transport, path, known.digest, known.size, bars, item.label)
    return Uploaded(item.name, known.digest, known.size, sent)


@contextmanager
def named_by(item: Item) -> Iterator[None]:
    """The hub's errors about an item, named by it."""
    try:
        yield
    except HiveMindError as exc:
        raise type(exc)(f"{item.label}: {exc.message}") from None


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
    plan = plan_data(bundle, inputs, urls)
    with Scratch() as scratch:
        try:
            prepared = digest_data(plan, cache, bars)
            uploaded = upload_data(transport, prepared, cache, scratch, bars)
        finally:
            cache.save()
    return body_fields(plan, uploaded), uploaded
