"""The web app through Flask's test client, over a real pool and Redis (tests/support/webkit.py).

Every route: pages and API, the happy path, authentication failures, CSRF, bad forms and
bodies, oversized uploads; and that a refused input changes nothing.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hivemind_cluster.agent.taskrun import OnOutput, Outcome, TaskRun, Usage
from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh.tokens import secret_hash as token_digest
from hivemind_cluster.mesh.wireguard import PeerStatus
from hivemind_cluster.pool.ledger import Ledger
from hivemind_cluster.web import constants as keys
from hivemind_cluster.web.constants import MAX_BODY
from tests.integration.test_web_uploads import result_file, upload_blob
from tests.support.poolkit import Behaviour, block_until_cancelled
from tests.support.scratch import zip_of
from tests.support.webkit import (
    PASSWORD,
    WebCluster,
    api_login,
    csrf_token,
    register_in_browser,
    web_cluster,
)

pytestmark = pytest.mark.privileged
BUSYBOX = {"image": "hivemind/busybox:latest", "cpu": "1", "memory": "64M", "timeout": 60}


def behaviour(results: Path) -> Behaviour:
    """Tasks that block, print much, or (any other command) print to both streams and leave
    a file in /out, like a real task (its zip packed into ``results``)."""

    def run(task: TaskRun, on_output: OnOutput, cancel: Any) -> Outcome:
        if task.command[:1] == ["block"]:
            return block_until_cancelled(task, on_output, cancel)
        if task.command[:1] == ["chatty"]:
            for n in range(2500):
                on_output("stdout", f"line {n}\n".encode())
            return Outcome("succeeded", 0, "", Usage(0.1, 1 << 20, 0.2, 0.0))
        on_output("stdout", b"hello from the task\n")
        on_output("stderr", b"a warning\n")
        usage = Usage(2.0, 32 << 20, 2.5, 0.0)
        return Outcome("succeeded", 0, "", usage, result_file(results, {"answer.txt": "42\n"}))

    return run


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebCluster]:
    results = tmp_path_factory.mktemp("results")
    with web_cluster(redis_server, tmp_path_factory.mktemp("web")) as found:
        found.start_worker("w1", behaviour(results))
        Ledger(found.db()).open_account("project:numpy", "project")
        yield found


@pytest.fixture(scope="module")
def app(world: WebCluster) -> Flask:
    return world.app()


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    """A logged-in browser session of a fresh user."""
    client = app.test_client()
    register_in_browser(client, f"u{time.monotonic_ns() % 10**9}")
    return client


def fresh_name() -> str:
    return f"a{time.monotonic_ns() % 10**10}"


def wait_task(
    client: FlaskClient,
    headers: dict[str, str],
    task_id: str,
    ready: Callable[[dict[str, Any]], bool],
    timeout: float = 15,
) -> dict[str, Any]:
    """The task (GET /api/v1/tasks/ID) once ``ready(task)``."""
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
        if ready(task):
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


def settled(task: dict[str, Any]) -> bool:
    return bool(task["settled"])


def running(task: dict[str, Any]) -> bool:
    return bool(task["status"] == "running")


# Accounts


def test_register_log_in_and_out_in_the_browser(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/").status_code == 302  # pages need a login
    name = fresh_name()
    register_in_browser(client, name)
    page = client.get("/").get_data(as_text=True)
    assert f"Hello, {name}" in page and 'id="balance"' in page and "150 CPT" in page
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    assert client.get("/").status_code == 302
    token = csrf_token(client)
    reply = client.post(
        "/login?next=/mesh",
        data={"username": name, "password": PASSWORD, "csrf_token": token},
    )
    assert reply.status_code == 302 and reply.headers["Location"] == "/mesh"


def test_logging_out_ends_the_session_even_for_a_copied_cookie(app: Flask) -> None:
    client = app.test_client()
    register_in_browser(client, fresh_name())
    cookie = client.get_cookie("session")
    assert cookie is not None and client.get("/").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    thief = app.test_client()
    thief.set_cookie("session", cookie.value)
    assert thief.get("/").status_code == 302
    assert thief.get("/api/v1/me").status_code == 401


def test_a_login_never_redirects_to_another_site(app: Flask) -> None:
    client = app.test_client()
    name = fresh_name()
    api_login(client, name)
    token = csrf_token(client)
    reply = client.post(
        "/login?next=//evil.example/x",
        data={"username": name, "password": PASSWORD, "csrf_token": token},
    )
    assert reply.headers["Location"] == "/"


def test_forms_without_a_csrf_token_are_refused(app: Flask, world: WebCluster) -> None:
    client = app.test_client()
    name = fresh_name()
    reply = client.post(
        "/register", data={"username": name, "password": PASSWORD, "confirm": PASSWORD}
    )
    assert reply.status_code == 400 and "CSRF" in reply.get_data(as_text=True)
    assert not world.db().exists(keys.USER.format(name=name))


def test_bad_registrations_say_why_and_create_nothing(app: Flask, world: WebCluster) -> None:
    client = app.test_client()
    cases = [
        ({"username": "Bad Name!", "password": PASSWORD, "confirm": PASSWORD}, "username"),
        ({"username": "shorty", "password": "short", "confirm": "short"}, "password"),
        ({"username": "mismatch", "password": PASSWORD, "confirm": PASSWORD + "x"}, "differ"),
    ]
    for form, why in cases:
        reply = client.post(
            "/register", data=form | {"csrf_token": csrf_token(client, "/register")}
        )
        assert reply.status_code == 400 and why in reply.get_data(as_text=True)
    assert not world.db().keys("hm:web:user:shorty") + world.db().keys("hm:web:user:mismatch")
    taken = fresh_name()
    register_in_browser(app.test_client(), taken)
    reply = client.post(
        "/register",
        data={"username": taken, "password": PASSWORD, "confirm": PASSWORD}
        | {"csrf_token": csrf_token(client, "/register")},
    )
    assert reply.status_code == 409 and "taken" in reply.get_data(as_text=True)


def test_failed_logins_are_rate_limited(app: Flask) -> None:
    client = app.test_client()
    name = fresh_name()
    api_login(client, name)
    wrong = {"username": name, "password": "not the password"}
    codes = [client.post("/api/v1/tokens", json=wrong).status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    # Even the right password waits now; the message says for how long.
    reply = client.post("/api/v1/tokens", json={"username": name, "password": PASSWORD})
    assert reply.status_code == 429 and "try again in" in reply.get_json()["error"]["message"]


def test_api_tokens_authenticate_and_logout_revokes_them(app: Flask) -> None:
    client = app.test_client()
    headers = api_login(client, fresh_name())
    me = client.get("/api/v1/me", headers=headers).get_json()
    assert me["balance"] == 150 and me["account"].startswith("user:")
    assert client.delete("/api/v1/tokens/current", headers=headers).status_code == 204
    reply = client.get("/api/v1/me", headers=headers)
    assert reply.status_code == 401 and reply.get_json()["error"]["code"] == "unauthenticated"
    for bad in ("Bearer", "Basic abc", "Bearer hm_forged"):
        assert client.get("/api/v1/me", headers={"Authorization": bad}).status_code == 401
    assert client.get("/api/v1/tasks").status_code == 401


def test_expired_tokens_are_forgotten_at_the_next_login(app: Flask, world: WebCluster) -> None:
    client = app.test_client()
    name = fresh_name()
    first = api_login(client, name)["Authorization"].split()[1]
    db = world.db()
    db.delete(keys.TOKEN.format(digest=token_digest(first)))  # as its TTL would
    api_login(client, name)
    remaining = db.smembers(keys.USER_TOKENS.format(name=name))
    assert token_digest(first) not in remaining and len(remaining) == 1


def test_the_browser_session_may_use_the_api_but_must_send_its_csrf_token(
    browser: FlaskClient,
) -> None:
    assert browser.get("/api/v1/me").status_code == 200
    assert browser.post("/api/v1/tasks/quote", json={}).status_code == 400
    token = csrf_token(browser, "/tasks/new")
    reply = browser.post("/api/v1/tasks/quote", json={}, headers={"X-CSRFToken": token})
    assert reply.status_code == 200 and reply.get_json()["price_cap"] > 0


# Tasks through the API


def test_submit_wait_logs_result_and_pay_exactly_the_cost(app: Flask) -> None:
    client = app.test_client()
    headers = api_login(client, fresh_name())
    quote = client.post("/api/v1/tasks/quote", headers=headers, json=BUSYBOX).get_json()
    bundle = upload_blob(client, headers, zip_of({"input.txt": "data"}))
    body = BUSYBOX | {"command": ["echo"], "bundle": bundle}
    reply = client.post("/api/v1/tasks", headers=headers, json=body)
    assert reply.status_code == 201, reply.get_json()
    task = reply.get_json()
    assert task["price_cap_micro"] == quote["price_cap_micro"]
    task = wait_task(client, headers, task["id"], settled)
    assert task["status"] == "succeeded" and task["exit_code"] == 0 and task["node"]
    logs = client.get(f"/api/v1/tasks/{task['id']}/logs", headers=headers).get_json()
    streams = {e["stream"]: e["data"] for e in logs["entries"] if e["stream"] != "system"}
    assert streams == {"stdout": "hello from the task\n", "stderr": "a warning\n"}
    assert logs["done"] is True
    later = client.get(f"/api/v1/tasks/{task['id']}/logs?after={logs['next']}", headers=headers)
    assert later.get_json()["entries"] == []
    result = client.get(f"/api/v1/tasks/{task['id']}/result", headers=headers)
    assert result.mimetype == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(result.data)).read("answer.txt") == b"42\n"
    balance = client.get("/api/v1/balance", headers=headers).get_json()
    assert balance["balance_micro"] == 150_000_000 - task["cost_micro"] and task["cost_micro"] > 0
    history = client.get("/api/v1/history", headers=headers).get_json()["entries"]
    assert {e["reason"].split()[0] for e in history} >= {"escrow"}
    listed = client.get("/api/v1/tasks?status=succeeded", headers=headers).get_json()["tasks"]
    assert [t["id"] for t in listed] == [task["id"]]


def test_long_logs_come_in_pages_by_entry_id_without_gaps(app: Flask) -> None:
    client = app.test_client()
    headers = api_login(client, fresh_name())
    task = client.post("/api/v1/tasks", headers=headers, json=BUSYBOX | {"command": ["chatty"]})
    wait_task(client, headers, task.get_json()["id"], settled)
    after, pages, lines = "", [], []
    while True:
        page = client.get(
            f"/api/v1/tasks/{task.get_json()['id']}/logs",
            headers=headers,
            query_string={"after": after},
        ).get_json()
        pages.append(len(page["entries"]))
        lines += [e["data"] for e in page["entries"] if e["stream"] == "stdout"]
        after = page["next"]
        if page["done"]:
            break
    assert pages[:2] == [1000, 1000] and len(pages) == 3  # 2,500 lines and the system ones
    assert lines == [f"line {n}\n" for n in range(2500)]
    bad = client.get(f"/api/v1/tasks/{task.get_json()['id']}/logs?after=yesterday", headers=headers)
    assert bad.status_code == 400 and "log entry id" in bad.get_json()["error"]["message"]


def test_cancel_a_running_task_and_see_it_end(app: Flask) -> None:
    client = app.test_client()
    headers = api_login(client, fresh_name())
    task = client.post(
        "/api/v1/tasks", headers=headers, json=BUSYBOX | {"command": ["block"]}
    ).get_json()
    wait_task(client, headers, task["id"], running, timeout=10)
    early = client.get(f"/api/v1/tasks/{task['id']}/result", headers=headers)
    assert early.status_code == 409 and "no result yet" in early.get_json()["error"]["message"]
    cancelled = client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200
    assert wait_task(client, headers, task["id"], settled)["status"] == "cancelled"


def test_nodes_and_mesh_show_only_your_own_task_ids(app: Flask) -> None:
    client = app.test_client()
    alice, bob = api_login(client, fresh_name()), api_login(client, fresh_name())
    task = client.post("/api/v1/tasks", headers=alice, json=BUSYBOX | {"command": ["block"]})
    task_id = task.get_json()["id"]
    try:
        wait_task(client, alice, task_id, running, timeout=10)
        for who, expected in ((alice, [task_id]), (bob, [])):
            (node,) = client.get("/api/v1/nodes", headers=who).get_json()["nodes"]
            assert node["running"] == expected and node["running_tasks"] == 1
            mesh = client.get("/api/v1/mesh", headers=who).get_json()
            worker = next(n for n in mesh["nodes"] if n["role"] == "worker")
            assert worker["running"] == expected and mesh["totals"]["running_tasks"] == 1
    finally:
        client.post(f"/api/v1/tasks/{task_id}/cancel", headers=alice)
        wait_task(client, alice, task_id, settled)


def test_other_users_tasks_are_invisible(app: Flask) -> None:
    client = app.test_client()
    alice, bob = api_login(client, fresh_name()), api_login(client, fresh_name())
    task = client.post("/api/v1/tasks", headers=alice, json=BUSYBOX | {"command": ["x"]})
    task_id = task.get_json()["id"]
    for method, path in (
        ("get", f"/api/v1/tasks/{task_id}"),
        ("get", f"/api/v1/tasks/{task_id}/logs"),
        ("get", f"/api/v1/tasks/{task_id}/result"),
        ("post", f"/api/v1/tasks/{task_id}/cancel"),
    ):
        reply = getattr(client, method)(path, headers=bob)
        assert reply.status_code == 404, (path, reply.get_json())
    assert client.get("/api/v1/tasks", headers=bob).get_json()["tasks"] == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ([], "JSON object"),
        ({"command": "echo hi"}, "command: wrong type"),
        ({"command": [1, 2]}, "list of strings"),
        ({"cpu": True}, "cpu: wrong type"),
        ({"surprise": 1}, "unknown field"),
        ({"memory": "lots"}, "memory"),
        ({"bundle": "not a digest"}, "sha256:<64 hex digits>"),
        ({"bundle": "sha256:" + "0" * 64} | BUSYBOX, "not on the hub"),
        ({"inputs": {"x": "y"}}, "inputs: wrong type"),
        ({"max_cost": "-3"}, "positive"),
        ({"timeout": -1}, "0 or more"),
        ({"image": "Not An Image!!"}, "image"),
        ({"command": ["x"]}, "no image"),
        (BUSYBOX | {"cpu": "64"}, "could ever run"),
        (BUSYBOX | {"max_cost": "1000"}, "insufficient balance"),
    ],
)
def test_bad_submissions_are_refused_and_cost_nothing(app: Flask, body: Any, why: str) -> None:
    client = app.test_client()
    headers = api_login(client, fresh_name())
    reply = client.post("/api/v1/tasks", headers=headers, json=body)
    error = reply.get_json()["error"]
    assert 400 <= reply.status_code < 500 and why in error["message"], error
    assert client.get("/api/v1/tasks", headers=headers).get_json()["tasks"] == []
    assert client.get("/api/v1/balance", headers=headers).get_json()["balance"] == 150


@pytest.mark.parametrize(
    ("method", "path", "body", "why"),
    [
        ("get", "/api/v1/tasks?limit=²", None, "limit"),
        ("get", "/api/v1/history?limit=99999999999", None, "limit"),
        ("get", "/api/v1/tasks/tx/logs?after=²", None, ""),
        ("get", f"/api/v1/tasks/tx/logs?after={'9' * 5000}", None, ""),
        ("post", "/api/v1/tasks", "[" * 100_000 + "]" * 100_000, "nested"),
        ("post", "/api/v1/tokens", "[" * 100_000 + "]" * 100_000, "nested"),
        ("post", "/api/v1/tasks", {"image": "x", "name": "\ud800"}, "Unicode"),
        ("post", "/api/v1/tasks", {"command": ["\ud800"]}, "Unicode"),
        ("post", "/api/v1/tasks", {"env": {"A": "\ud800"}}, "Unicode"),
        ("post", "/api/v1/tasks", BUSYBOX | {"cpu": float("inf")}, "cpu"),
        ("post", "/api/v1/tasks", BUSYBOX | {"cpu": "1e30"}, "cpu"),
        ("post", "/api/v1/tasks", BUSYBOX | {"memory": 10**29}, "memory"),
        ("post", "/api/v1/tasks", BUSYBOX | {"max_cost": "sNaN"}, "max_cost"),
        ("post", "/api/v1/tasks", BUSYBOX | {"max_cost": "1e999999999"}, "max_cost"),
        ("post", "/api/v1/tips", {"project": "project:numpy", "amount": "sNaN"}, "amount"),
    ],
)
def test_hostile_input_gets_a_clear_4xx_never_a_500(
    app: Flask, method: str, path: str, body: Any, why: str
) -> None:
    client = app.test_client()
    headers = api_login(client, fresh_name())
    send = getattr(client, method)
    if isinstance(body, str):  # raw text: the JSON encoder would refuse it
        reply = send(path, headers=headers, data=body, content_type="application/json")
    else:
        reply = send(path, headers=headers, json=body)
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.get_data(as_text=True))
    assert why in reply.get_json()["error"]["message"]
    assert client.get("/api/v1/balance", headers=headers).get_json()["balance"] == 150


def test_odd_usernames_and_passwords_are_refused_like_wrong_ones(app: Flask) -> None:
    client = app.test_client()
    name = fresh_name()
    api_login(client, name)
    for username, password in (("\ud800", PASSWORD), (name, "\ud800"), ("x" * 100_000, "p")):
        reply = client.post("/api/v1/tokens", json={"username": username, "password": password})
        assert reply.status_code in (400, 401), reply.get_json()  # never 500
    form = {"username": "x" * 100_000, "password": "p", "csrf_token": csrf_token(client)}
    assert client.post("/login", data=form).status_code == 401
    same = client.post(
        "/api/v1/tokens", json={"username": f" {name.upper()} ", "password": PASSWORD}
    )
    assert same.status_code == 201  # one spelling of a name, for the API as for the form


def test_parallel_guesses_cannot_outrun_the_login_limit(app: Flask) -> None:
    from concurrent.futures import ThreadPoolExecutor

    name = fresh_name()
    api_login(app.test_client(), name)
    wrong = {"username": name, "password": "not the password"}

    def guess(_: int) -> int:
        return int(app.test_client().post("/api/v1/tokens", json=wrong).status_code)

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(guess, range(24)))
    assert codes.count(401) == 5 and codes.count(429) == 19


def test_pages_forbid_framing_and_foreign_scripts(app: Flask) -> None:
    reply = app.test_client().get("/login")
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert "script-src" not in reply.headers["Content-Security-Policy"]  # default-src 'self'
    assert "default-src 'self'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_a_hub_database_outage_is_a_503(world: WebCluster) -> None:
    import redis

    app = world.app(REDIS=redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
    reply = app.test_client().get("/api/v1/me", headers={"Authorization": "Bearer hm_x"})
    assert reply.status_code == 503 and "not answering" in reply.get_json()["error"]["message"]


def test_oversized_bodies_get_413(app: Flask) -> None:
    client = app.test_client()
    headers = api_login(client, fresh_name())
    huge = {"name": "A" * MAX_BODY}
    reply = client.post("/api/v1/tasks", headers=headers, json=huge)
    assert reply.status_code == 413 and reply.get_json()["error"]["code"] == "too_large"
    assert "larger than 1 MiB" in reply.get_json()["error"]["message"]


def test_unknown_routes_and_methods_answer_json_under_the_api(app: Flask) -> None:
    client = app.test_client()
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    wrong = client.put("/api/v1/rates")
    assert wrong.status_code == 405 and "error" in wrong.get_json()
    assert client.get("/nothing-here").status_code == 404


# Ledger


def test_tips_go_to_projects_only(app: Flask, browser: FlaskClient) -> None:
    client = app.test_client()
    headers = api_login(client, fresh_name())
    reply = client.post(
        "/api/v1/tips", headers=headers, json={"project": "project:numpy", "amount": "2.5"}
    )
    assert reply.status_code == 201 and reply.get_json()["amount"] == 2.5
    for body in (
        {"project": "project:numpy", "amount": "abc"},
        {"project": "project:numpy", "amount": True},
        {"project": "NOT valid", "amount": 1},
        {"project": "user:someone", "amount": 1},
        {"project": "project:numpy"},
    ):
        assert client.post("/api/v1/tips", headers=headers, json=body).status_code in (400, 404)
    assert client.get("/api/v1/balance", headers=headers).get_json()["balance"] == 147.5
    form = {"project": "project:numpy", "amount": "1", "csrf_token": csrf_token(browser, "/tip")}
    assert browser.post("/tip", data=form).status_code == 302
    assert "147.5" not in browser.get("/ledger").get_data(as_text=True)
    assert "149 CPT" in browser.get("/ledger").get_data(as_text=True)
    bad = browser.post("/tip", data=form | {"amount": "-1"})
    assert bad.status_code == 400 and "positive" in bad.get_data(as_text=True)


def test_rates_are_public(app: Flask) -> None:
    client = app.test_client()
    rates = client.get("/api/v1/rates").get_json()
    assert rates["registration_grant"] == 150 and rates["cpu_second"] > 0
    assert "Rate card" in client.get("/rates").get_data(as_text=True)


# Pages


def test_submit_through_the_form_then_follow_the_task_page(browser: FlaskClient) -> None:
    page = browser.get("/tasks/new").get_data(as_text=True)
    assert 'id="price-cap"' in page and "CPT" in page
    form = {"csrf_token": csrf_token(browser, "/tasks/new"), "command": "echo 'hello world'"}
    form |= {k: str(v) for k, v in BUSYBOX.items()}
    quoted = browser.post("/tasks/new", data=form | {"action": "quote"})
    assert quoted.status_code == 200 and "0.0" in quoted.get_data(as_text=True)
    reply = browser.post("/tasks/new", data=form | {"action": "submit"})
    assert reply.status_code == 302
    location = reply.headers["Location"]
    task_id = location.rsplit("/", 1)[1]
    deadline = time.monotonic() + 15
    while 'data-status="succeeded"' not in (
        panel := browser.get(f"{location}?partial=1").get_data(as_text=True)
    ):
        assert time.monotonic() < deadline, panel
        time.sleep(0.05)
    assert 'id="result-link"' in panel
    detail = browser.get(location).get_data(as_text=True)
    assert 'id="logs"' in detail and task_id in detail
    assert browser.get(f"/tasks/{task_id}/result").mimetype == "application/zip"
    assert task_id in browser.get("/tasks").get_data(as_text=True)
    assert task_id in browser.get("/").get_data(as_text=True)


def test_a_bad_form_is_shown_again_with_the_reason(browser: FlaskClient) -> None:
    form = {"csrf_token": csrf_token(browser, "/tasks/new"), "command": "x", "timeout": "soon"}
    reply = browser.post("/tasks/new", data=form)
    page = reply.get_data(as_text=True)
    assert reply.status_code == 400 and "timeout: a whole number" in page
    assert 'value="soon"' in page  # what the user typed is kept


def test_the_task_page_of_an_unknown_task_is_404(browser: FlaskClient) -> None:
    assert browser.get("/tasks/tdoesnotexist").status_code == 404
    assert (
        browser.post(
            "/tasks/tdoesnotexist/cancel", data={"csrf_token": csrf_token(browser, "/")}
        ).status_code
        == 404
    )


def test_the_mesh_page_shows_every_node_with_wireguard_figures(
    world: WebCluster, browser: FlaskClient
) -> None:
    world.peers = [
        PeerStatus(
            "w1", "198.51.100.3:51820", ("127.0.0.1/32",), int(time.time()) - 7, 1 << 20, 2 << 20
        )
    ]
    mesh = browser.get("/api/v1/mesh").get_json()
    by_name = {n["name"]: n for n in mesh["nodes"]}
    worker = by_name["name-w1"]
    assert worker["online"] is True and worker["role"] == "worker"
    assert 6 <= worker["handshake_age"] < 30 and worker["rx_bytes"] == 1 << 20
    assert worker["capacity"]["cpu_millis"] == 2000 and worker["heartbeat_age"] < 20
    assert mesh["totals"]["workers_online"] == 1 and mesh["wireguard"] is True
    page = browser.get("/mesh").get_data(as_text=True)
    assert 'data-name="name-w1"' in page and 'data-online="true"' in page
    assert "1.0 MiB" in page or "1 MiB" in page
    assert 'id="mesh-live"' in page and "data-refresh" in page
    assert browser.get("/mesh?partial=1").get_data(as_text=True).count('class="node') == 2


def test_the_mesh_page_survives_an_unreadable_wireguard_interface(world: WebCluster) -> None:
    def broken() -> list[PeerStatus]:
        raise SystemFailure("wg: no such device")

    client = world.app(WIREGUARD_PEERS=broken).test_client()
    register_in_browser(client, fresh_name())
    mesh = client.get("/api/v1/mesh").get_json()
    assert mesh["wireguard"] is False and mesh["totals"]["workers_online"] == 1
    assert "could not be read" in client.get("/mesh").get_data(as_text=True)


def test_escaping_keeps_user_text_inert(browser: FlaskClient) -> None:
    form = {k: str(v) for k, v in BUSYBOX.items()} | {
        "csrf_token": csrf_token(browser, "/tasks/new")
    }
    form["command"] = "echo '<script>alert(1)</script>'"
    reply = browser.post("/tasks/new", data=form)
    assert reply.status_code == 302, reply.get_data(as_text=True)
    location = reply.headers["Location"]
    page = browser.get(location).get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_static_assets_are_served(app: Flask) -> None:
    client = app.test_client()
    assert b"data-refresh" in client.get("/static/live.js").data
    assert client.get("/static/style.css").status_code == 200
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.") and "/tasks" in document["paths"]


def test_the_session_secret_is_created_once_per_hub(tmp_path: Path) -> None:
    from hivemind_cluster.web import _secret_key

    first = _secret_key(tmp_path)
    assert first == _secret_key(tmp_path) and len(first) == 64
    assert (tmp_path / "web-secret.key").stat().st_mode & 0o777 == 0o600
