"""``hivemind submit`` and ``hivemind result`` moving real bytes over real sockets, against
boundary fakes of the hub: a stdlib HTTP server that implements the upload endpoints
(``POST /uploads``, ``PATCH /uploads/<id>``), the task and its result (``GET`` with
``Range``) as context14.md specifies them, and a gRPC ``Tasks`` servicer with BeginUpload,
Upload and ReadResult. (The real web app is tests/integration/test_web_uploads.py's and
test_cli_api.py's.) Both keep blobs in files; either can cut a connection at an offset.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import threading
import tracemalloc
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from hivemind_cluster.client import cli, transfer
from hivemind_cluster.client.apiclient import ApiClient
from hivemind_cluster.client.cli import Config, save_config
from hivemind_cluster.client.grpcclient import GrpcTaskClient
from hivemind_cluster.client.transfer import download_result, upload_file
from hivemind_cluster.core.console import run_main
from hivemind_cluster.core.errors import HiveMindError
from hivemind_cluster.core.units import format_bytes
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.scratch import zip_of

MIB = 1 << 20
CHUNK = 1 * MIB


def sha_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


@dataclass
class Upload:
    digest: str
    size: int
    path: Path

    @property
    def offset(self) -> int:
        return self.path.stat().st_size

    def state(self, upload_id: str) -> dict[str, Any]:
        return {
            "upload_id": upload_id, "offset": self.offset, "size": self.size,
            "digest": self.digest, "complete": False,
        }  # fmt: skip


@dataclass
class Hub:
    """The hub's side, on disk: blobs by digest, open uploads, one task's result.

    ``cut_after``: the next upload request (or result download) stops after that many bytes
    of its body: what was read is kept, the connection is closed without an answer."""

    root: Path
    blobs: dict[str, Path] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    submitted: list[Any] = field(default_factory=list)
    patches: list[int] = field(default_factory=list)  # Content-Length of each PATCH
    ranges: list[str] = field(default_factory=list)  # the Range of each result GET
    if_ranges: list[str] = field(default_factory=list)  # and its If-Range
    ignore_ranges: bool = False  # a server without Range support: always 200, the whole zip
    result: Path | None = None
    cut_after: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, digest: str, size: int) -> tuple[bool, str, Upload | None]:
        with self.lock:
            if digest in self.blobs:
                return True, "", None
            for upload_id, held in self.uploads.items():
                if (held.digest, held.size) == (digest, size):
                    return False, upload_id, held
            upload_id = f"u{len(self.uploads) + len(self.blobs)}"
            path = self.root / upload_id
            path.write_bytes(b"")
            self.uploads[upload_id] = Upload(digest, size, path)
            return False, upload_id, self.uploads[upload_id]

    def append(self, upload_id: str, chunks: Iterator[bytes]) -> bool:
        """Write the chunks; True once complete (verified and stored)."""
        held = self.uploads[upload_id]
        with held.path.open("ab") as sink:
            for chunk in chunks:
                sink.write(chunk)
        if held.offset < held.size:
            return False
        assert sha_of(held.path) == held.digest
        self.blobs[held.digest] = held.path
        del self.uploads[upload_id]
        return True

    def take_cut(self) -> int | None:
        cut, self.cut_after = self.cut_after, None
        return cut


def read_body(stream: Any, length: int, cut: int | None) -> Iterator[bytes]:
    """``length`` bytes in chunks, or only ``cut`` of them."""
    left = length if cut is None else min(cut, length)
    while left:
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def http_hub(hub: Hub) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def json_body(self) -> Any:
            return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

        def do_POST(self) -> None:
            if self.path == "/api/v1/uploads":
                body = self.json_body()
                complete, upload_id, held = hub.begin(body["digest"], body["size"])
                if complete or held is None:
                    state = {"upload_id": "", "offset": body["size"], "size": body["size"],
                             "digest": body["digest"], "complete": True}  # fmt: skip
                    return self.reply(200, state)
                return self.reply(201, held.state(upload_id))
            hub.submitted.append(self.json_body())
            return self.reply(201, {"id": "t1", "status": "queued"})

        def do_PATCH(self) -> None:
            upload_id = self.path.rsplit("/", 1)[1]
            held = hub.uploads[upload_id]
            length = int(self.headers["Content-Length"])
            hub.patches.append(length)
            offset = int(self.headers["Upload-Offset"])
            assert self.headers["Content-Type"] == "application/offset+octet-stream"
            if offset != held.offset:
                self.rfile.read(length)
                error = {"error": {"code": "conflict", "message": f"at {held.offset}"}}
                return self.reply(409, error, {"Upload-Offset": str(held.offset)})
            cut = hub.take_cut()
            complete = hub.append(upload_id, read_body(self.rfile, length, cut))
            if cut is not None:
                self.close_connection = True
                return None
            state = {"upload_id": "", "offset": held.size, "size": held.size,
                     "digest": held.digest, "complete": True}  # fmt: skip
            return self.reply(200, state if complete else held.state(upload_id))

        def do_GET(self) -> None:
            if self.path == "/api/v1/tasks/t1":
                assert hub.result is not None
                found = {"id": "t1", "status": "succeeded", "output_digest": sha_of(hub.result),
                         "output_bytes": hub.result.stat().st_size}  # fmt: skip
                return self.reply(200, found)
            assert self.path == "/api/v1/tasks/t1/result" and hub.result is not None
            self.send_result(hub.result)
            return None

        def send_result(self, result: Path) -> None:
            digest, size = sha_of(result), result.stat().st_size
            wanted = re.fullmatch(r"bytes=([0-9]+)-", self.headers.get("Range") or "")
            hub.ranges.append(self.headers.get("Range") or "")
            hub.if_ranges.append(self.headers.get("If-Range") or "")
            fresh = self.headers.get("If-Range") in (None, f'"{digest.split(":")[1]}"')
            fresh = fresh and not hub.ignore_ranges
            start = int(wanted[1]) if wanted and fresh else 0
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.send_header("ETag", f'"{digest.split(":")[1]}"')
            self.send_header("X-Content-SHA256", digest)
            self.end_headers()
            cut = hub.take_cut()
            with result.open("rb") as source:
                source.seek(start)
                for chunk in read_body(source, size - start, cut):
                    self.wfile.write(chunk)
            if cut is not None:
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Hub, str]]:
    """The fake hub over HTTP, and a logged-in ``hivemind`` config for it."""
    monkeypatch.setattr(transfer, "RETRY_PAUSE", 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "hub").mkdir()
    state = Hub(tmp_path / "hub")
    server = http_hub(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    config = tmp_path / "config.json"
    save_config(config, Config(url, "token", "alice"))
    monkeypatch.setenv("HIVEMIND_CONFIG", str(config))
    try:
        yield state, url
    finally:
        server.shutdown()
        server.server_close()


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        for offset in range(0, size, MIB):
            out.write(os.urandom(min(MIB, size - offset)))
    return path


def test_submit_uploads_in_8_mib_requests_then_sends_nothing_twice(
    hub: tuple[Hub, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = hub
    data = random_file(tmp_path / "data.bin", 20 * MIB + 3)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "main.py").write_text("print('hi')\n")
    argv = ["submit", "--json", "--bundle", str(tmp_path / "job"), "--input", str(data)]
    assert run_main(cli.main, [*argv, "--", "python", "main.py"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(u["name"], u["sent_bytes"]) for u in printed["uploads"]] == [
        ("", printed["uploads"][0]["size"]),
        ("data.bin", 20 * MIB + 3),
    ]
    body = state.submitted[0]
    assert body["inputs"] == [{"name": "data.bin", "digest": sha_of(data), "kind": "file"}]
    assert sha_of(state.blobs[body["bundle"]]) == body["bundle"]
    assert state.patches == [printed["uploads"][0]["size"], 8 * MIB, 8 * MIB, 4 * MIB + 3]

    state.patches = []
    assert run_main(cli.main, argv[:1] + argv[2:] + ["--", "true"]) == 0
    bundle_size = format_bytes(printed["uploads"][0]["size"])
    assert capsys.readouterr() == (
        "t1\n",
        f"bundle: already on the hub ({bundle_size}), nothing sent\n"
        "input data.bin: already on the hub (20 MiB), nothing sent\n",
    )
    assert state.patches == [] and state.submitted[1]["inputs"] == body["inputs"]


@pytest.mark.parametrize("cut", [1, 5 * MIB + 17, 8 * MIB - 1])
def test_an_upload_cut_mid_request_resumes_from_what_the_hub_kept(
    hub: tuple[Hub, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: int
) -> None:
    state, _ = hub
    data = random_file(tmp_path / "data.bin", 12 * MIB)
    state.cut_after = cut
    assert run_main(cli.main, ["submit", "--input", str(data), "--", "true"]) == 0
    assert state.blobs[sha_of(data)].read_bytes() == data.read_bytes()
    rest = 12 * MIB - cut  # from the cut on, in requests of 8 MiB
    assert state.patches == [8 * MIB, *([8 * MIB] if rest > 8 * MIB else []), rest % (8 * MIB)]


def test_an_upload_never_holds_the_file_in_memory(hub: tuple[Hub, str], tmp_path: Path) -> None:
    state, url = hub
    data = random_file(tmp_path / "data.bin", 64 * MIB)
    digest = sha_of(data)
    tracemalloc.start()
    try:
        upload_file(ApiClient(url, "token"), data, digest, 64 * MIB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest in state.blobs
    assert peak < 16 * MIB  # a request's worth at most (8 MiB), not the file (64 MiB)


def test_result_resumes_a_cut_download_and_verifies_it(
    hub: tuple[Hub, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = hub
    big = random_file(tmp_path / "big", 5 * MIB)
    state.result = tmp_path / "result.zip"
    state.result.write_bytes(zip_of({"big": big.read_bytes(), "small": b"hi"}))
    state.cut_after = 3 * MIB
    out = tmp_path / "out"
    assert run_main(cli.main, ["result", "t1", "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"2 files from t1 in {out}\n"
    assert state.ranges == ["", f"bytes={3 * MIB}-"]
    assert (out / "big").read_bytes() == big.read_bytes() and sorted(os.listdir(out)) == [
        "big",
        "small",
    ]


def test_a_resumed_download_names_its_blob_and_copes_without_ranges(
    hub: tuple[Hub, str], tmp_path: Path
) -> None:
    state, url = hub
    state.result = tmp_path / "result.zip"
    state.result.write_bytes(zip_of({"x": os.urandom(MIB)}))
    digest, size = sha_of(state.result), state.result.stat().st_size
    client = ApiClient(url, "token")
    part = tmp_path / "r.part"
    part.write_bytes(state.result.read_bytes()[:1000])
    download_result(client, "t1", digest, size, part)
    assert (state.ranges, state.if_ranges) == (["bytes=1000-"], [f'"{digest[7:]}"'])
    assert part.read_bytes() == state.result.read_bytes()

    with pytest.raises(HiveMindError, match=r"sent the result sha256:\w+, but the task's is"):
        client.read_result("t1", 1000, "sha256:" + "0" * 64)

    state.ignore_ranges = True  # 200 and the whole zip: the part starts again
    part.write_bytes(b"an older download")
    download_result(client, "t1", digest, size, part)
    assert part.read_bytes() == state.result.read_bytes()


class GrpcHub:
    """Tasks.BeginUpload, Upload and ReadResult over the same ``Hub`` (the only methods of
    the service served: ``handler``)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def BeginUpload(self, request: pb.UploadRequest, context: Any) -> pb.UploadState:
        complete, upload_id, held = self.hub.begin(request.digest, request.size)
        if complete or held is None:
            return pb.UploadState(complete=True, offset=request.size, size=request.size)
        return pb.UploadState(upload_id=upload_id, offset=held.offset, size=held.size)

    def Upload(self, requests: Iterator[pb.UploadChunk], context: Any) -> pb.UploadState:
        first = next(requests)
        held = self.hub.uploads[first.upload_id]
        assert first.offset == held.offset
        cut = self.hub.take_cut()

        def chunks() -> Iterator[bytes]:
            taken = 0
            for message in itertools.chain([first], requests):
                assert len(message.data) <= CHUNK
                if cut is not None and taken + len(message.data) > cut:
                    yield message.data[: cut - taken]
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
                taken += len(message.data)
                yield message.data

        if self.hub.append(first.upload_id, chunks()):
            return pb.UploadState(complete=True, offset=held.size, size=held.size)
        return pb.UploadState(upload_id=first.upload_id, offset=held.offset, size=held.size)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "hivemind.pool.Tasks",
            {
                "BeginUpload": grpc.unary_unary_rpc_method_handler(
                    self.BeginUpload, pb.UploadRequest.FromString, pb.UploadState.SerializeToString
                ),
                "Upload": grpc.stream_unary_rpc_method_handler(
                    self.Upload, pb.UploadChunk.FromString, pb.UploadState.SerializeToString
                ),
                "ReadResult": grpc.unary_stream_rpc_method_handler(
                    self.ReadResult, pb.ResultRead.FromString, pb.BlobChunk.SerializeToString
                ),
            },
        )

    def ReadResult(self, request: pb.ResultRead, context: Any) -> Iterator[pb.BlobChunk]:
        assert self.hub.result is not None
        self.hub.ranges.append(str(request.offset))
        with self.hub.result.open("rb") as source:
            source.seek(request.offset)
            while chunk := source.read(CHUNK):
                yield pb.BlobChunk(data=chunk)


def test_grpc_uploads_resume_and_results_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "RETRY_PAUSE", 0)
    state = Hub(tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((GrpcHub(state).handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = GrpcTaskClient(channel)
            data = random_file(tmp_path / "data.bin", 5 * MIB + 9)
            state.cut_after = 2 * MIB + 5
            sent = upload_file(client, data, sha_of(data), 5 * MIB + 9)
            assert state.blobs[sha_of(data)].read_bytes() == data.read_bytes()
            assert sent >= 5 * MIB + 9
            assert upload_file(client, data, sha_of(data), 5 * MIB + 9) == 0

            state.result = data
            part = tmp_path / "r.part"
            part.write_bytes(data.read_bytes()[:MIB])
            download_result(client, "t1", sha_of(data), 5 * MIB + 9, part)
            assert part.read_bytes() == data.read_bytes() and state.ranges == [str(MIB)]
    finally:
        server.stop(None)
