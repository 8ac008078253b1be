"""Uploads under /api/v1: data of any size reaches the hub's blob store in pieces, resumable
by offset (docs/architecture.md: blobs), before a submission names it by digest.

``POST /uploads`` announces a size (and the digest, if the client knows it: then an upload
the hub already holds for this user is answered as complete, and an unfinished one resumes
at its offset); each ``PATCH /uploads/<id>`` carries the next bytes at ``Upload-Offset``;
``DELETE /uploads/<id>`` gives an unfinished one up (else it holds quota until it expires).
The body is streamed into the store in CHUNK_BYTES pieces, never read whole into memory.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import IO

from flask import Blueprint, Response, make_response, request
from flask.typing import ResponseReturnValue

from hivemind_cluster.blobs.store import UploadState
from hivemind_cluster.core.errors import Conflict, InvalidInput
from hivemind_cluster.core.units import MAX_BYTES, format_bytes
from hivemind_cluster.model.blobs import CHUNK_BYTES, check_digest
from hivemind_cluster.web.api import api_user, authenticated, json_body
from hivemind_cluster.web.constants import CHUNK_TYPE, OFFSET_HEADER
from hivemind_cluster.web.errorpages import respond
from hivemind_cluster.web.services import services

bp = Blueprint("uploads", __name__, url_prefix="/api/v1")
_OFFSET = re.compile(r"[0-9]{1,19}")
UPLOAD_FIELDS = ("size", "digest")  # what POST /uploads takes


def chunks_of(stream: IO[bytes], length: int | None = None) -> Iterator[bytes]:
    """``stream`` to its end, or its first ``length`` bytes, in CHUNK_BYTES pieces (the
    store stops reading early when an upload would pass its size). A request body is read
    to its announced length and no further: under waitress werkzeug refuses (413) a read
    past the route's limit even when the body has just ended there."""
    left = MAX_BYTES if length is None else length
    while left > 0 and (chunk := stream.read(min(CHUNK_BYTES, left))):
        left -= len(chunk)
        yield chunk


def store_file(account: str, stream: IO[bytes]) -> str:
    """A whole (seekable) file into the store as ``account``'s upload: its digest. For the
    submit form without its script, whose bundle werkzeug spooled to disk already."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    if not size:
        raise InvalidInput("the bundle file is empty")
    blobs = services().blobs
    state = blobs.begin_upload(account, size)
    if state.complete:
        return state.digest
    try:
        state = blobs.append(account, state.upload_id, 0, chunks_of(stream))
        if not state.complete:
            raise InvalidInput("the bundle file ended before its size: send it again")
    except BaseException:  # nobody will resume it: it must not hold the quota for days
        # Gone already when the store refused the bytes; any other failure to remove it
        # must not hide the first (garbage collection takes what is left).
        with contextlib.suppress(Exception):
            blobs.cancel_upload(account, state.upload_id)
        raise
    return state.digest


def state_reply(state: UploadState, status: int = 200) -> Response:
    reply = make_response(state.as_json(), status)
    reply.headers[OFFSET_HEADER] = str(state.offset)
    return reply


@bp.post("/uploads")
@authenticated
def begin() -> ResponseReturnValue:
    """200 and ``complete``: the hub holds it already, send nothing; 201: send from ``offset``."""
    body = json_body()
    unknown = sorted(set(body) - set(UPLOAD_FIELDS))
    if unknown:
        fields = ", ".join(UPLOAD_FIELDS)
        raise InvalidInput(f"unknown field {unknown[0][:40]!r} (an upload takes {fields})")
    size, digest = body.get("size"), body.get("digest", "")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_BYTES:
        raise InvalidInput("size: the upload's bytes, a whole number above 0")
    if not isinstance(digest, str):
        raise InvalidInput("digest: sha256:<64 hex digits>, as text")
    if digest:
        check_digest(digest, "digest")
    state = services().blobs.begin_upload(api_user().account, size, digest)
    return state_reply(state, 200 if state.complete else 201)


@bp.get("/uploads/<upload_id>")
@authenticated
def state(upload_id: str) -> ResponseReturnValue:
    return state_reply(services().blobs.upload_state(api_user().account, upload_id))


@bp.patch("/uploads/<upload_id>")
@authenticated
def append(upload_id: str) -> ResponseReturnValue:
    """The next bytes, at ``Upload-Offset``; a wrong offset is 409 with the held one in that
    header (the client resumes from there). The body's limit: constants.UPLOAD_CHUNK_BYTES."""
    if request.mimetype != CHUNK_TYPE:
        raise InvalidInput(f"send the bytes as Content-Type: {CHUNK_TYPE}")
    offset = _offset_header()
    account, blobs = api_user().account, services().blobs
    try:
        body = chunks_of(request.stream, request.content_length)
        found = blobs.append(account, upload_id, offset, body)
    except Conflict as exc:
        reply = make_response(respond(409, exc.code, exc.message))
        reply.headers[OFFSET_HEADER] = str(blobs.upload_state(account, upload_id).offset)
        return reply
    return state_reply(found)


@bp.delete("/uploads/<upload_id>")
@authenticated
def cancel(upload_id: str) -> ResponseReturnValue:
    """Give up an unfinished upload (its bytes go, its size no longer counts toward the
    quota); 404 for a completed one, whose blob is held now (BlobStore.cancel_upload)."""
    services().blobs.cancel_upload(api_user().account, upload_id)
    return Response(status=204)


def _offset_header() -> int:
    text = request.headers.get(OFFSET_HEADER, "")
    if not _OFFSET.fullmatch(text) or int(text) > MAX_BYTES:
        raise InvalidInput(f"{OFFSET_HEADER}: the bytes already sent, a whole number")
    return int(text)


@bp.get("/storage")
@authenticated
def storage() -> ResponseReturnValue:
    used, quota = services().blobs.usage(api_user().account)
    return {
        "used": format_bytes(used),
        "used_bytes": used,
        "quota": format_bytes(quota, True),
        "quota_bytes": quota,
    }
