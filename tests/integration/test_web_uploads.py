"""Data of any size through the web (issue 14): uploads in pieces, resumable by offset, into
the hub's blob store; results downloaded from it with Range; the submit form's upload.

Over a real pool and Redis (tests/support/webkit.py) and the real blob store; the quota and
size limits with a store of their own (``BLOBS`` in the app's config).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.client
import io
import json
import os
import random
import re
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder, TestResponse, run_wsgi_app

from hivemind_cluster.agent.taskrun import OnOutput, Outcome, ResultFile, TaskRun, Usage
from hivemind_cluster.blobs.store import BlobLimits, BlobStore
from hivemind_cluster.core.units import MIB
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.web import openapi
from hivemind_cluster.web.constants import (
    CHUNK_TYPE,
    FORM_BUNDLE_BYTES,
    MAX_BODY,
    OFFSET_HEADER,
    UPLOAD_CHUNK_BYTES,
)
from hivemind_cluster.web.server import MAX_REQUEST_BODY
from hivemind_cluster.web.uploads import store_file
from tests.support.hubstate import hub_state_dir, web_process
from tests.support.poolkit import LOOPBACK, Behaviour
from tests.support.scratch import zip_of
from tests.support.webkit import WebCluster, api_login, csrf_token, register_in_browser, web_cluster

pytestmark = pytest.mark.privileged
BUSYBOX = {"image": "hivemind/busybox:latest", "cpu": "1", "memory": "64M", "timeout": 60}
SLICE = 1 * MIB  # small slices: several PATCHes per upload even for a few MiB
# Incompressible, so the result zip is as big as its file and a Range is a real part of it.
RESULT_DATA = random.Random(14).randbytes(3 * MIB + 12345)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def send_raw(
    app: Flask,
    path: str,
    body: io.BufferedIOBase | io.RawIOBase,
    length: int | None,
    **request: Any,
) -> tuple[int, str]:
    """A request that announces ``length`` bytes but whose connection then carries only
    ``body``: werkzeug's stream reports a cut (ClientDisconnected) as it does under a server
    that does not buffer bodies (waitress never passes a cut body on). ``length`` None: a
    body of no announced length, as a server passes a chunked one on. Status and text."""
    environ = EnvironBuilder(path, **request).get_environ()
    environ["wsgi.input"] = body
    if length is None:
        environ.pop("CONTENT_LENGTH", None)
        environ |= {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    else:
        environ["CONTENT_LENGTH"] = str(length)
    chunks, status, _headers = run_wsgi_app(app, environ, buffered=True)
    return int(status.split()[0]), b"".join(chunks).decode()


class EndlessBody(io.RawIOBase):
    """A request body that never ends (``start``, then x after x): counts the bytes the app
    read of it."""

    def __init__(self, start: bytes = b"") -> None:
        self.rest = start
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        piece, self.rest = self.rest[:size], self.rest[size:]
        buffer[:size] = piece + b"x" * (size - len(piece))
        self.sent += size
        return size


# A form whose file part goes on and on.
ENDLESS_FILE = (
    b'--x\r\nContent-Disposition: form-data; name="bundle_file"; filename="b.zip"\r\n'
    b"Content-Type: application/zip\r\n\r\n"
)


class FailingFile(io.BytesIO):
    """A form's spooled file whose disk fails after its first MiB."""

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() >= MIB:
            raise OSError(errno.EIO, "Input/output error")
        return super().read(size)


def result_file(directory: Path, files: Mapping[str, str | bytes]) -> ResultFile:
    """A result zip of ``files`` as a worker packs it: a new file in ``directory`` (the agent
    deletes it once the pool has the result)."""
    handle, name = tempfile.mkstemp(dir=directory, suffix=".zip")
    zipped = zip_of(files)
    with os.fdopen(handle, "wb") as sink:
        sink.write(zipped)
    return ResultFile(Path(name), sha256(zipped), len(zipped))


def results_in(directory: Path) -> Behaviour:
    """A worker behaviour: ``output`` commands write RESULT_DATA to /out (``output id``: and
    the task's id, a result of its own), others nothing."""

    def run(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        usage = Usage(0.5, 1 << 20, 0.6, 0.0)
        if task.command[:1] != ["output"]:
            return Outcome("succeeded", 0, "", usage)
        files = {"data.bin": RESULT_DATA} | ({"id": task.task_id} if "id" in task.command else {})
        return Outcome("succeeded", 0, "", usage, result_file(directory, files))

    return run


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebCluster]:
    results = tmp_path_factory.mktemp("results")
    with web_cluster(redis_server, tmp_path_factory.mktemp("uploads")) as found:
        found.start_worker("w1", results_in(results))
        yield found


@pytest.fixture(scope="module")
def app(world: WebCluster) -> Flask:
    return world.app()


@pytest.fixture
def web(app: Flask) -> FlaskClient:
    return app.test_client()


def fresh_name() -> str:
    return f"b{time.monotonic_ns() % 10**10}"


def begin(web: FlaskClient, headers: dict[str, str], data: bytes, digest: bool = True) -> Any:
    body: dict[str, object] = {"size": len(data)} | ({"digest": sha256(data)} if digest else {})
    return web.post("/api/v1/uploads", headers=headers, json=body)


def patch(web: FlaskClient, headers: dict[str, str], upload_id: str, offset: int, body: Any) -> Any:
    return web.patch(
        f"/api/v1/uploads/{upload_id}",
        headers=headers | {OFFSET_HEADER: str(offset)},
        data=body,
        content_type=CHUNK_TYPE,
    )


def send_from(
    web: FlaskClient, headers: dict[str, str], upload_id: str, offset: int, data: bytes
) -> dict[str, Any]:
    """PATCH the rest of ``data`` from ``offset`` in SLICE pieces: the final state."""
    state: dict[str, Any] = {"offset": offset, "complete": False}
    while not state["complete"]:
        reply = patch(web, headers, upload_id, state["offset"], data[state["offset"] :][:SLICE])
        assert reply.status_code == 200, reply.get_json()
        state = reply.get_json()
        assert reply.headers[OFFSET_HEADER] == str(state["offset"])
    return state


def upload_blob(web: FlaskClient, headers: dict[str, str], data: bytes) -> str:
    """``data`` uploaded (unless the hub holds it already): its digest."""
    reply = begin(web, headers, data)
    state = reply.get_json()
    if reply.status_code == 201:
        state = send_from(web, headers, state["upload_id"], state["offset"], data)
    assert state["complete"] and state["digest"] == sha256(data), state
    return str(state["digest"])


def storage(web: FlaskClient, headers: dict[str, str]) -> int:
    used: int = web.get("/api/v1/storage", headers=headers).get_json()["used_bytes"]
    return used


def wait_ended(web: FlaskClient, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        task: dict[str, Any] = web.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
        if task["settled"]:
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


# Uploads


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_cut_upload_resumes_from_what_the_hub_holds(
    world: WebCluster, app: Flask, web: FlaskClient, seed: int
) -> None:
    headers = api_login(web, fresh_name())
    data = random.Random(seed).randbytes(3 * MIB + seed * 1000)
    cut = random.Random(seed).randrange(1, len(data))
    reply = begin(web, headers, data)
    assert reply.status_code == 201, reply.get_json()
    upload_id = reply.get_json()["upload_id"]
    assert reply.get_json()["offset"] == 0 and reply.headers[OFFSET_HEADER] == "0"
    status, _text = send_raw(
        app,
        f"/api/v1/uploads/{upload_id}",
        io.BytesIO(data[:cut]),
        len(data),
        method="PATCH",
        headers=headers | {OFFSET_HEADER: "0"},
        content_type=CHUNK_TYPE,
    )
    assert status == 400
    # A new run of the client announces the same upload again: it goes on from the cut.
    again = begin(web, headers, data)
    assert again.status_code == 201 and again.get_json()["upload_id"] == upload_id
    assert again.get_json()["offset"] == cut
    assert web.get(f"/api/v1/uploads/{upload_id}", headers=headers).get_json()["offset"] == cut
    state = send_from(web, headers, upload_id, cut, data)
    assert state == {
        "upload_id": state["upload_id"],
        "offset": len(data),
        "size": len(data),
        "digest": sha256(data),
        "complete": True,
    }
    assert storage(web, headers) == len(data)
    blobs = world.app().extensions["hivemind"].blobs
    assert hashlib.sha256(blobs.path(sha256(data)).read_bytes()).hexdigest() == sha256(data)[7:]


def test_what_the_hub_holds_is_not_sent_again_but_others_must_prove_they_have_it(
    web: FlaskClient,
) -> None:
    alice, bob = api_login(web, fresh_name()), api_login(web, fresh_name())
    data = random.Random(7).randbytes(MIB + 1)
    upload_blob(web, alice, data)
    held = begin(web, alice, data)
    assert held.status_code == 200, held.get_json()
    assert held.get_json() | {"offset": 0} == {
        "upload_id": "",
        "offset": 0,
        "size": len(data),
        "digest": sha256(data),
        "complete": True,
    }
    theirs = begin(web, bob, data)  # knowing the digest is not having the data
    assert theirs.status_code == 201 and theirs.get_json()["offset"] == 0
    assert (
        web.get(f"/api/v1/uploads/{theirs.get_json()['upload_id']}", headers=alice).status_code
        == 404
    )  # and an upload is its owner's only
    upload_blob(web, bob, data)
    assert storage(web, bob) == len(data)


def test_a_wrong_offset_is_409_with_the_held_offset(web: FlaskClient) -> None:
    headers = api_login(web, fresh_name())
    data = random.Random(8).randbytes(2 * MIB)
    upload_id = begin(web, headers, data).get_json()["upload_id"]
    assert patch(web, headers, upload_id, 0, data[:SLICE]).status_code == 200
    for wrong in (0, SLICE + 1, len(data)):
        reply = patch(web, headers, upload_id, wrong, data[wrong:][:SLICE])
        assert reply.status_code == 409, reply.get_json()
        assert reply.headers[OFFSET_HEADER] == str(SLICE)
        assert str(SLICE) in reply.get_json()["error"]["message"]
    assert send_from(web, headers, upload_id, SLICE, data)["digest"] == sha256(data)


def test_bytes_that_do_not_match_the_digest_are_refused_and_nothing_is_kept(
    world: WebCluster, web: FlaskClient
) -> None:
    headers = api_login(web, fresh_name())
    data = random.Random(9).randbytes(MIB + 5)
    forged = bytes([data[0] ^ 1]) + data[1:]
    upload_id = begin(web, headers, data).get_json()["upload_id"]
    reply = patch(web, headers, upload_id, 0, forged)
    assert reply.status_code == 400, reply.get_json()
    assert reply.get_json()["error"]["code"] == "invalid_input"
    assert web.get(f"/api/v1/uploads/{upload_id}", headers=headers).status_code == 404
    assert storage(web, headers) == 0
    account = web.get("/api/v1/me", headers=headers).get_json()["account"]
    blobs = world.app().extensions["hivemind"].blobs
    assert not blobs.holds(account, sha256(data)) and not blobs.holds(account, sha256(forged))


def test_more_bytes_than_announced_stop_the_upload(web: FlaskClient) -> None:
    headers = api_login(web, fresh_name())
    data = random.Random(10).randbytes(MIB)
    upload_id = begin(web, headers, data).get_json()["upload_id"]
    reply = patch(web, headers, upload_id, 0, data + b"more")
    assert reply.status_code == 413 and reply.get_json()["error"]["code"] == "too_large"
    assert web.get(f"/api/v1/uploads/{upload_id}", headers=headers).status_code == 404
    assert storage(web, headers) == 0


def test_one_request_carries_at_most_16_mib(web: FlaskClient) -> None:
    headers = api_login(web, fresh_name())
    data = bytes(UPLOAD_CHUNK_BYTES + 1)
    upload_id = begin(web, headers, data).get_json()["upload_id"]
    whole = patch(web, headers, upload_id, 0, data[:UPLOAD_CHUNK_BYTES])
    assert whole.status_code == 200 and whole.get_json()["offset"] == UPLOAD_CHUNK_BYTES
    other = begin(web, headers, data + b"x").get_json()["upload_id"]
    over = patch(web, headers, other, 0, data)
    assert over.status_code == 413 and "16 MiB" in over.get_json()["error"]["message"]
    assert web.get(f"/api/v1/uploads/{other}", headers=headers).get_json()["offset"] == 0


def test_uploads_past_the_size_limit_or_the_quota_are_refused(world: WebCluster) -> None:
    limits = BlobLimits(
        max_input_bytes=3 * MIB,
        max_result_bytes=MIB,
        quota_bytes=4 * MIB,
        upload_retention_seconds=3600,
        result_retention_seconds=3600,
    )
    root = world.cluster.settings.blob_path  # the hub's blobs, with tighter limits
    web = world.app(BLOBS=BlobStore(root, world.db(), limits)).test_client()
    headers = api_login(web, fresh_name())
    too_big = web.post("/api/v1/uploads", headers=headers, json={"size": 3 * MIB + 1})
    assert too_big.status_code == 413, too_big.get_json()
    upload_blob(web, headers, random.Random(11).randbytes(3 * MIB))
    over = web.post("/api/v1/uploads", headers=headers, json={"size": MIB + 1})
    assert over.status_code == 413 and "quota" in over.get_json()["error"]["message"]
    used = web.get("/api/v1/storage", headers=headers).get_json()
    assert used == {
        "used": "3 MiB",
        "used_bytes": 3 * MIB,
        "quota": "4 MiB",
        "quota_bytes": 4 * MIB,
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({}, "size"),
        ({"size": 0}, "size"),
        ({"size": True}, "size"),
        ({"size": "10"}, "size"),
        ({"size": 10, "digest": "md5:abc"}, "sha256"),
        ({"size": 10, "digest": 5}, "digest: sha256:"),
        ({"size": 10, "digest": None}, "digest: sha256:"),
        ({"size": 10, "name": "data.bin"}, "unknown field 'name' (an upload takes size, digest)"),
    ],
)
def test_bad_upload_requests_say_why(web: FlaskClient, body: Any, why: str) -> None:
    headers = api_login(web, fresh_name())
    reply = web.post("/api/v1/uploads", headers=headers, json=body)
    assert reply.status_code == 400 and why in reply.get_json()["error"]["message"]


def test_an_unfinished_upload_given_up_frees_its_quota(app: Flask, web: FlaskClient) -> None:
    alice, bob = api_login(web, fresh_name()), api_login(web, fresh_name())
    data = random.Random(13).randbytes(2 * MIB)
    upload_id = begin(web, alice, data).get_json()["upload_id"]
    assert patch(web, alice, upload_id, 0, data[:SLICE]).status_code == 200
    assert storage(web, alice) == len(data)  # counted at its size until it expires
    url = f"/api/v1/uploads/{upload_id}"
    assert web.delete(url).status_code == 401
    assert web.delete(url, headers=bob).status_code == 404  # another user's is not found
    given_up = web.delete(url, headers=alice)
    assert given_up.status_code == 204 and given_up.data == b""
    assert storage(web, alice) == 0
    assert web.get(url, headers=alice).status_code == 404
    assert patch(web, alice, upload_id, SLICE, data[SLICE:]).status_code == 404
    assert web.delete(url, headers=alice).status_code == 404
    again = begin(web, alice, data).get_json()  # a new upload, from 0
    assert again["upload_id"] != upload_id and again["offset"] == 0
    send_from(web, alice, again["upload_id"], 0, data)
    done = web.delete(f"/api/v1/uploads/{again['upload_id']}", headers=alice)
    assert done.status_code == 404 and storage(web, alice) == len(data)  # complete: kept
    # From the page's script (the browser session): with the CSRF token, as other writes.
    browser = app.test_client()
    register_in_browser(browser, fresh_name())
    token = {"X-CSRFToken": csrf_token(browser, "/tasks/new")}
    theirs = f"/api/v1/uploads/{begin(browser, token, data).get_json()['upload_id']}"
    refused = browser.delete(theirs)
    assert refused.status_code == 400 and "CSRF" in refused.get_json()["error"]["message"]
    assert browser.delete(theirs, headers=token).status_code == 204


def test_chunks_need_their_offset_header_and_type(web: FlaskClient) -> None:
    headers = api_login(web, fresh_name())
    upload_id = begin(web, headers, b"abc").get_json()["upload_id"]
    url = f"/api/v1/uploads/{upload_id}"
    no_offset = web.patch(url, headers=headers, data=b"abc", content_type=CHUNK_TYPE)
    assert (
        no_offset.status_code == 400 and OFFSET_HEADER in no_offset.get_json()["error"]["message"]
    )
    wrong_type = web.patch(url, headers=headers | {OFFSET_HEADER: "0"}, data=b"abc")
    assert wrong_type.status_code == 400 and CHUNK_TYPE in wrong_type.get_json()["error"]["message"]
    assert web.patch(url, data=b"abc", content_type=CHUNK_TYPE).status_code == 401


# Submissions by digest, results by Range


def test_a_task_with_an_uploaded_bundle_and_input_gives_its_result_by_range(
    web: FlaskClient,
) -> None:
    alice, bob = api_login(web, fresh_name()), api_login(web, fresh_name())
    bundle = upload_blob(web, alice, zip_of({"input.txt": "data"}))
    data = upload_blob(web, alice, b"input data\n")
    body = BUSYBOX | {
        "command": ["output"],
        "bundle": bundle,
        "inputs": [{"name": "data.txt", "digest": data, "kind": "file"}],
    }
    reply = web.post("/api/v1/tasks", headers=alice, json=body)
    assert reply.status_code == 201, reply.get_json()
    task = wait_ended(web, alice, reply.get_json()["id"])
    assert task["status"] == "succeeded", task
    assert task["bundle"] == bundle and task["inputs"][0]["digest"] == data
    assert task["inputs"][0]["size"] == len(b"input data\n")
    url = f"/api/v1/tasks/{task['id']}/result"
    whole = web.get(url, headers=alice)
    assert whole.status_code == 200 and whole.mimetype == "application/zip"
    digest = whole.headers["X-Content-SHA256"]
    assert digest == task["output_digest"] == sha256(whole.data)
    assert whole.headers["ETag"] == f'"{digest[7:]}"'
    assert "attachment" in whole.headers["Content-Disposition"]
    assert zipfile.ZipFile(io.BytesIO(whole.data)).read("data.bin") == RESULT_DATA
    start = len(whole.data) // 3
    part = web.get(url, headers=alice | {"Range": f"bytes={start}-"})
    assert part.status_code == 206 and part.data == whole.data[start:]
    assert part.headers["Content-Range"] == f"bytes {start}-{len(whole.data) - 1}/{len(whole.data)}"
    same = web.get(url, headers=alice | {"If-None-Match": whole.headers["ETag"]})
    assert same.status_code == 304 and same.data == b""
    for reply in (whole, part, same):
        headers_as_documented(reply)
    outside = web.get(url, headers=alice | {"Range": f"bytes={len(whole.data) + 1}-"})
    assert outside.status_code == 416 and "416" in openapi.RESULT["responses"]
    assert web.get(url, headers=bob).status_code == 404  # another user's result
    assert web.get(f"/api/v1/tasks/{task['id']}", headers=bob).status_code == 404


def headers_as_documented(reply: TestResponse) -> None:
    """The result reply has every header its OpenAPI description says is always sent."""
    promised = openapi.RESULT["responses"][str(reply.status_code)]["headers"]
    for name, header in promised.items():
        sent = reply.headers.get(name, "")
        assert re.fullmatch(header["schema"]["pattern"], sent), (reply.status_code, name, sent)


def test_a_task_that_wrote_nothing_has_no_content(web: FlaskClient) -> None:
    headers = api_login(web, fresh_name())
    task = web.post("/api/v1/tasks", headers=headers, json=BUSYBOX | {"command": ["x"]})
    task_id = wait_ended(web, headers, task.get_json()["id"])["id"]
    assert web.get(f"/api/v1/tasks/{task_id}/result", headers=headers).status_code == 204


def test_a_removed_result_says_so_and_how_long_results_are_kept(
    world: WebCluster, web: FlaskClient
) -> None:
    headers = api_login(web, fresh_name())
    task = web.post("/api/v1/tasks", headers=headers, json=BUSYBOX | {"command": ["output", "id"]})
    digest = wait_ended(web, headers, task.get_json()["id"])["output_digest"]
    world.app().extensions["hivemind"].blobs.path(digest).unlink()  # as if collected just now
    url = f"/api/v1/tasks/{task.get_json()['id']}/result"
    reply = web.get(url, headers=headers)
    assert reply.status_code == 404, reply.get_json()
    assert (
        "no longer on the hub (results are kept 7 days after"
        in reply.get_json()["error"]["message"]
    )
    limits = dataclasses.replace(
        BlobLimits.from_settings(world.cluster.settings), result_retention_seconds=1800
    )
    store = BlobStore(world.cluster.settings.blob_path, world.db(), limits)
    brief = world.app(BLOBS=store).test_client().get(url, headers=headers)
    assert "results are kept 30 minutes after" in brief.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("inputs", "why"),
    [
        ([{"name": "../x", "digest": "sha256:" + "0" * 64}], "input name"),
        ([{"name": "x", "digest": "abc"}], "sha256"),
        ([{"name": "x", "digest": "sha256:" + "0" * 64, "kind": "tar"}], "kind"),
        ([{"name": "x", "url": "https://example.org/x"}], "URL#sha256=HEX"),
        ([{"name": "x", "url": "ftp://example.org/x#sha256=" + "0" * 64}], "http"),
        ([{"url": "https://example.org/x#sha256=" + "0" * 64, "kind": "dir"}], "is a file"),
        ([{"url": "https://example.org/x.csv#sha256=" + "0" * 64}], "not allowed on this hub"),
        ([{"name": "x", "digest": "sha256:" + "0" * 64, "size": "3"}], "unknown field"),
        ([{"name": "x", "digest": "sha256:" + "0" * 64, "kind": 3}], "text fields"),
        ([{"name": "x", "digest": "sha256:" + "0" * 64}] * 2, "two inputs"),
        (["x"], "inputs"),
        ([{"name": "x", "digest": "sha256:" + "0" * 64}], "not on the hub"),
    ],
)
def test_bad_inputs_are_refused_and_cost_nothing(web: FlaskClient, inputs: Any, why: str) -> None:
    headers = api_login(web, fresh_name())
    body = BUSYBOX | {"command": ["x"], "inputs": inputs}
    reply = web.post("/api/v1/tasks", headers=headers, json=body)
    assert 400 <= reply.status_code < 500 and why in reply.get_json()["error"]["message"]
    assert web.get("/api/v1/balance", headers=headers).get_json()["balance"] == 150


def test_the_quote_reads_the_bundle_its_user_uploaded(web: FlaskClient) -> None:
    alice, bob = api_login(web, fresh_name()), api_login(web, fresh_name())
    plain = web.post("/api/v1/tasks/quote", headers=alice, json=BUSYBOX | {"cpu": None})
    bundle = upload_blob(web, alice, zip_of({"task.json": '{"cpu": 2}', "main.py": ""}))
    body = {k: v for k, v in BUSYBOX.items() if k != "cpu"} | {"bundle": bundle}
    asks_more = web.post("/api/v1/tasks/quote", headers=alice, json=body)
    assert asks_more.status_code == 200, asks_more.get_json()
    assert asks_more.get_json()["price_cap_micro"] > plain.get_json()["price_cap_micro"]
    theirs = web.post("/api/v1/tasks/quote", headers=bob, json=body)
    assert theirs.status_code == 404 and "upload it first" in theirs.get_json()["error"]["message"]


# The submit form


def form_fields(browser: FlaskClient) -> dict[str, Any]:
    return {"csrf_token": csrf_token(browser, "/tasks/new"), "command": "output"} | {
        k: str(v) for k, v in BUSYBOX.items()
    }


def test_the_form_without_javascript_uploads_the_bundle_itself(
    app: Flask, web: FlaskClient
) -> None:
    register_in_browser(web, fresh_name())
    bundle = zip_of({"input.txt": "from the form"})
    form = form_fields(web) | {"bundle_file": (io.BytesIO(bundle), "b.zip")}
    reply = web.post("/tasks/new", data=form, content_type="multipart/form-data")
    assert reply.status_code == 302, reply.get_data(as_text=True)
    task_id = reply.headers["Location"].rsplit("/", 1)[1]
    task = web.get(f"/api/v1/tasks/{task_id}").get_json()
    assert task["bundle"] == sha256(bundle)
    # A refused form keeps the uploaded bundle: it is not sent again.
    bad = form_fields(web) | {"timeout": "soon", "bundle_file": (io.BytesIO(bundle), "b.zip")}
    page = web.post("/tasks/new", data=bad, content_type="multipart/form-data")
    assert page.status_code == 400 and f'value="{sha256(bundle)}"' in page.get_data(as_text=True)
    not_a_zip = form_fields(web) | {"bundle_file": (io.BytesIO(b"not a zip"), "b.zip")}
    page = web.post("/tasks/new", data=not_a_zip, content_type="multipart/form-data")
    assert page.status_code == 400 and "zip" in page.get_data(as_text=True)
    assert app.config["MAX_CONTENT_LENGTH"] < 2 * MIB  # JSON bodies are small now
    session = web.get_cookie("session")
    assert session is not None
    status, text = send_raw(  # refused by its Content-Length, before a byte is read
        app,
        "/tasks/new",
        io.BytesIO(),
        FORM_BUNDLE_BYTES + 1,
        method="POST",
        headers={"Cookie": f"session={session.value}"},
        content_type="multipart/form-data; boundary=x",
    )
    assert status == 413 and "16 MiB" in text, text


@pytest.mark.parametrize(
    ("content_type", "start"),
    [("multipart/form-data; boundary=x", ENDLESS_FILE), ("application/x-www-form-urlencoded", b"")],
)
def test_the_form_is_read_no_further_than_its_limit_when_its_length_is_not_announced(
    app: Flask, content_type: str, start: bytes
) -> None:
    """As waitress passes a chunked body on: the CSRF check, which parses the form before
    the view, stops at the form's limit (or before), however long the body goes on. (A
    urlencoded form is cut at the limit by werkzeug, without a 413: its CSRF token is then
    missing.)"""
    browser = app.test_client()
    register_in_browser(browser, fresh_name())
    session = browser.get_cookie("session")
    assert session is not None
    body = EndlessBody(start)
    status, text = send_raw(
        app,
        "/tasks/new",
        body,
        None,
        method="POST",
        headers={"Cookie": f"session={session.value}"},
        content_type=content_type,
    )
    assert status == (413 if start else 400), text
    # A piece past the limit at most: the bundle's for multipart, MAX_BODY for urlencoded
    # (read into memory whole).
    limit = FORM_BUNDLE_BYTES if start else MAX_BODY
    assert body.sent <= limit + MIB <= MAX_REQUEST_BODY


def test_api_bodies_are_read_no_further_than_their_limit_when_their_length_is_not_announced(
    app: Flask, web: FlaskClient
) -> None:
    headers = api_login(web, fresh_name())
    upload_id = begin(web, headers, bytes(2 * UPLOAD_CHUNK_BYTES)).get_json()["upload_id"]
    for path, method, content_type, start, limit, refused in (
        # werkzeug cuts a body read whole at the limit, without a 413: then it is not JSON
        ("/api/v1/uploads", "POST", "application/json", b'{"size": "', MAX_BODY, 400),
        (f"/api/v1/uploads/{upload_id}", "PATCH", CHUNK_TYPE, b"", UPLOAD_CHUNK_BYTES, 413),
    ):
        body = EndlessBody(start)
        status, text = send_raw(
            app,
            path,
            body,
            None,
            method=method,
            headers=headers | {OFFSET_HEADER: "0"},
            content_type=content_type,
        )
        assert status == refused, text
        assert body.sent <= limit + MIB, path
    held = web.get(f"/api/v1/uploads/{upload_id}", headers=headers).get_json()["offset"]
    assert held <= UPLOAD_CHUNK_BYTES  # what came before the limit, to resume from


def test_the_real_server_refuses_a_body_over_the_largest_a_route_takes_before_reading_it(
    world: WebCluster, tmp_path: Path
) -> None:
    settings = hub_state_dir(world, tmp_path / "hub")
    with web_process(settings):
        with socket.create_connection((LOOPBACK, settings.web_port), timeout=20) as connection:
            request = (  # from anyone, to any route: 1 MiB over the largest a route takes
                f"PATCH /api/v1/uploads/{'0' * 32} HTTP/1.1\r\nHost: hub\r\n"
                f"Content-Length: {UPLOAD_CHUNK_BYTES + MIB}\r\n\r\n"
            )
            connection.sendall(request.encode())
            answer = connection.recv(100)  # not a byte of the body sent (20 s: a hang guard)
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        # The largest a route takes still gets through: an upload's biggest PATCH.
        bearer = api_login(world.app().test_client(), fresh_name())  # the same Redis
        hub = http.client.HTTPConnection(LOOPBACK, settings.web_port, timeout=60)
        try:
            data = bytes(UPLOAD_CHUNK_BYTES)
            upload = call(hub, "POST", "/api/v1/uploads", {"size": len(data)}, bearer)[1]
            chunk = bearer | {OFFSET_HEADER: "0", "Content-Type": CHUNK_TYPE}
            status, state = call(
                hub, "PATCH", f"/api/v1/uploads/{upload['upload_id']}", data, chunk
            )
        finally:
            hub.close()
        assert status == 200 and state["digest"] == sha256(data), state


def call(
    hub: http.client.HTTPConnection,
    method: str,
    path: str,
    body: object,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """A request on the real server: its status and JSON (JSON or raw bytes sent)."""
    sent = body if isinstance(body, bytes) else json.dumps(body).encode()
    kind = {} if isinstance(body, bytes) else {"Content-Type": "application/json"}
    hub.request(method, path, sent, kind | (headers or {}))
    answer = hub.getresponse()
    return answer.status, json.loads(answer.read() or b"null")


def test_a_form_bundle_whose_file_fails_midway_leaves_no_upload_holding_quota(
    app: Flask,
) -> None:
    account = f"user:{fresh_name()}"
    with app.app_context(), pytest.raises(OSError, match="Input/output error"):
        store_file(account, FailingFile(random.Random(15).randbytes(3 * MIB)))
    assert app.extensions["hivemind"].blobs.usage(account)[0] == 0


def test_the_form_script_uploads_in_slices_then_sends_the_digest(web: FlaskClient) -> None:
    register_in_browser(web, fresh_name())
    page = web.get("/tasks/new").get_data(as_text=True)
    assert 'id="bundle-progress"' in page and "upload.js" in page and 'name="bundle"' in page
    assert b"Upload-Offset" in web.get("/static/upload.js").data
    token = {"X-CSRFToken": csrf_token(web, "/tasks/new")}
    bundle = zip_of({"big.bin": random.Random(12).randbytes(2 * MIB)})
    refused = web.post("/api/v1/uploads", json={"size": len(bundle)})
    assert refused.status_code == 400 and "CSRF" in refused.get_json()["error"]["message"]
    reply = begin(web, token, bundle, digest=False)  # the browser does not hash it first
    assert reply.status_code == 201 and reply.get_json()["digest"] == ""
    state = send_from(web, token, reply.get_json()["upload_id"], 0, bundle)
    assert state["digest"] == sha256(bundle)
    form = form_fields(web) | {"bundle": state["digest"], "action": "submit"}
    submitted = web.post("/tasks/new", data=form)
    assert submitted.status_code == 302, submitted.get_data(as_text=True)
    task_id = submitted.headers["Location"].rsplit("/", 1)[1]
    task = wait_ended(web, {}, task_id)
    assert task["bundle"] == sha256(bundle)
    assert f'title="{sha256(bundle)}"' in web.get(f"/tasks/{task_id}").get_data(as_text=True)
    download = web.get(f"/tasks/{task_id}/result", headers={"Range": "bytes=0-99"})
    assert download.status_code == 206 and len(download.data) == 100
