"""The API client against a scripted HTTP server on loopback: requests, errors, polling."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.client import cli
from hivemind_cluster.client.apiclient import ApiClient, api_error
from hivemind_cluster.client.cli import Config, save_config
from hivemind_cluster.core import errors
from hivemind_cluster.core.console import run_main
from hivemind_cluster.core.errors import (
    HiveMindError,
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
)

Answer = tuple[int, str, bytes]  # status, content type, body


def json_answer(status: int, data: Any) -> Answer:
    return status, "application/json", json.dumps(data).encode()


def error_answer(status: int, code: str, message: str) -> Answer:
    return json_answer(status, {"error": {"code": code, "message": message}})


@dataclass
class Script:
    """Answers in order; every request is recorded."""

    answers: list[Answer] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            script.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "body": json.loads(self.rfile.read(length)) if length else None,
                }
            )
            status, kind, body = script.answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def test_requests_carry_the_token_json_and_query(server: tuple[str, Script]) -> None:
    url, script = server
    client = ApiClient(url, "tok-1")
    script.answers += [
        json_answer(201, {"id": "t1", "status": "queued"}),
        json_answer(200, {"tasks": [{"id": "t1"}]}),
        json_answer(201, {"to": "project:x", "amount_micro": 2_500_000}),
    ]
    assert client.submit({"command": ["true"], "cpu": "0.5"})["id"] == "t1"
    assert client.tasks(["queued", "running"], 5) == [{"id": "t1"}]
    client.tip("project:x", 2_500_000)
    assert script.seen == [
        {
            "method": "POST",
            "path": "/api/v1/tasks",
            "authorization": "Bearer tok-1",
            "body": {"command": ["true"], "cpu": "0.5"},
        },
        {
            "method": "GET",
            "path": "/api/v1/tasks?status=queued&status=running&limit=5",
            "authorization": "Bearer tok-1",
            "body": None,
        },
        {
            "method": "POST",
            "path": "/api/v1/tips",
            "authorization": "Bearer tok-1",
            "body": {"project": "project:x", "amount": "2.5"},
        },
    ]


def test_task_ids_are_escaped_in_paths(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers.append(error_answer(404, "not_found", "no task ../x"))
    with pytest.raises(errors.NotFound, match=r"^no task \.\./x$"):
        ApiClient(url, "t").get("../x")
    assert script.seen[0]["path"] == "/api/v1/tasks/..%2Fx"


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "invalid_input", errors.InvalidInput),
        (409, "unschedulable", errors.Unschedulable),
        (404, "not_found", errors.NotFound),
        (409, "already_exists", errors.AlreadyExists),
        (403, "permission_denied", errors.PermissionDenied),
        (503, "unavailable", errors.Unavailable),
        (401, "unauthenticated", Unauthenticated),
        (429, "rate_limited", RateLimited),
        (413, "too_large", TooLarge),
        (405, "method_not_allowed", errors.InvalidInput),  # Flask's own, by status
        (400, "csrf_failed", errors.InvalidInput),
        (500, "internal", HiveMindError),
    ],
)
def test_api_errors_become_their_class_with_the_servers_message(
    status: int, code: str, kind: type[HiveMindError]
) -> None:
    body = json.dumps({"error": {"code": code, "message": "what the server said"}}).encode()
    error = api_error(status, body, "http://hub/api/v1")
    assert type(error) is kind
    assert error.message == "what the server said"


@pytest.mark.parametrize("body", [b"<html>Bad Gateway</html>", b"", b"[]", b'{"error": "x"}'])
def test_an_answer_that_is_not_an_api_error_names_the_status(body: bytes) -> None:
    error = api_error(502, body, "http://hub/api/v1")
    assert (
        error.message == "http://hub/api/v1 answered HTTP 502 without an API error (not HiveMind?)"
    )


def test_a_success_that_is_not_json(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers.append((200, "text/html", b"<html>hello</html>"))
    with pytest.raises(HiveMindError, match=r"/api/v1/balance did not answer JSON \(not HiveMind"):
        ApiClient(url, "t").balance("")


def test_a_server_that_never_answers_times_out_with_one_line() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        client = ApiClient(f"127.0.0.1:{port}", "t", timeout=0.3)
        with pytest.raises(Unavailable) as caught:
            client.nodes()
    assert caught.value.message == (
        f"the HiveMind API at http://127.0.0.1:{port}/api/v1 did not answer within 0.3s"
    )


def test_a_closed_port_is_refused_with_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Unavailable, match=r"refused the connection \(is the hub's web server"):
        ApiClient(f"127.0.0.1:{port}").rates()


def page(entries: list[str], after: int, done: bool) -> Answer:
    items = [{"stream": "stdout", "attempt": 1, "time": 0.0, "data": d} for d in entries]
    return json_answer(200, {"entries": items, "next": after + len(entries), "done": done})


def test_logs_follow_polls_until_done(
    server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hivemind_cluster.client.apiclient.LOG_POLL_SECONDS", 0.01)
    url, script = server
    script.answers += [page(["a"], 0, False), page([], 1, False), page(["b", "c"], 1, True)]
    data = [e["data"] for e in ApiClient(url, "t").logs("t1", follow=True)]
    assert data == ["a", "b", "c"]
    assert [s["path"] for s in script.seen] == [
        "/api/v1/tasks/t1/logs",
        "/api/v1/tasks/t1/logs?after=1",
        "/api/v1/tasks/t1/logs?after=1",
    ]


def test_logs_without_follow_reads_the_pages_there_are(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers += [page(["so far"], 0, False), page(["more"], 1, False), page([], 2, False)]
    assert [e["data"] for e in ApiClient(url, "t").logs("t1", follow=False)] == ["so far", "more"]
    assert [s["path"] for s in script.seen][1:] == [
        "/api/v1/tasks/t1/logs?after=1",
        "/api/v1/tasks/t1/logs?after=2",
    ]


def test_an_upload_begins_with_its_digest_and_size(server: tuple[str, Script]) -> None:
    url, script = server
    digest = "sha256:" + "a" * 64
    state = {"upload_id": "u1", "offset": 5, "size": 9, "digest": digest, "complete": False}
    script.answers += [json_answer(201, state), json_answer(200, {"upload_id": "u1"})]
    assert ApiClient(url, "t").begin_upload(digest, 9) == state
    assert script.seen[0]["path"] == "/api/v1/uploads"
    assert script.seen[0]["body"] == {"size": 9, "digest": digest}
    with pytest.raises(HiveMindError, match="the hub answered an upload with"):
        ApiClient(url, "t").begin_upload(digest, 9)  # not an upload state: not HiveMind


def test_an_expired_token_through_the_cli_is_one_line(
    server: tuple[str, Script], config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, script = server
    save_config(config_file, Config(f"{url}/api/v1", "old-token", "alice"))
    message = "the API token is unknown, expired or revoked: log in again"
    script.answers.append(error_answer(401, "unauthenticated", message))
    assert run_main(cli.main, ["balance", "--json"]) == 1
    assert capsys.readouterr() == ("", f"error: {message}\n")
    assert script.seen[0]["authorization"] == "Bearer old-token"


def test_login_saves_the_token_and_logout_revokes_it(
    server: tuple[str, Script], config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, script = server
    path = config_file
    script.answers += [json_answer(201, {"token": "new-token", "username": "alice"})]
    argv = ["login", "--api", url, "--user", "alice", "--password", "long enough", "--json"]
    assert run_main(cli.main, argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"username": "alice", "api": f"{url}/api/v1", "config": str(path)}
    assert script.seen[0]["body"] == {"username": "alice", "password": "long enough"}
    assert cli.load_config(path) == Config(f"{url}/api/v1", "new-token", "alice")
    script.answers.append((204, "application/json", b""))
    assert run_main(cli.main, ["logout"]) == 0
    assert script.seen[1]["method"] == "DELETE"
    assert script.seen[1]["authorization"] == "Bearer new-token"
    assert cli.load_config(path).token == ""
