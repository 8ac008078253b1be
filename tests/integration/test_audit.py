"""The audit log on a real Redis, every action driven through its real code path: the web
(Flask's test client, the browser at a documentation address) over a real pool
(tests/support/webkit.py), an operator's ``hivemind-pool`` client, enrollment over real
gRPC/TLS, the hub's command line on a state directory pointing at the same Redis, the
policy file. Each action leaves exactly one entry with the right actor, source, action,
target and outcome. Then: appends from several processes and threads at once keep one
chain; an entry altered, removed in the middle or at the end makes ``audit --verify`` exit
1 naming it; the mirror file equals the log after a restart; a bad ``--since`` is one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from hivemind_cluster.agent import enroll as client_side
from hivemind_cluster.client.channel import sync_channel
from hivemind_cluster.client.grpcclient import GrpcTaskClient
from hivemind_cluster.core import audit, names
from hivemind_cluster.core.audit import AsyncAuditLog, AuditLog, Entry, Event
from hivemind_cluster.core.console import run_main
from hivemind_cluster.core.errors import TokenMalformed, TokenRejected
from hivemind_cluster.core.keys import build_csr, generate_tls_key, generate_wireguard_keypair
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub import cli
from hivemind_cluster.hub.auditmirror import start_audit
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import nodes, tokens
from hivemind_cluster.mesh.ca import CertificateAuthority
from hivemind_cluster.mesh.peerpolicy import PolicyFile
from hivemind_cluster.mesh.tokens import secret_hash as token_digest
from hivemind_cluster.pool.ledger import Ledger
from tests.integration.test_enrollment_grpc import CountingEnroller, Server, request_for
from tests.support.hubstate import hub_state_dir
from tests.support.poolkit import LOOPBACK, block_until_cancelled, redis_client
from tests.support.webkit import (
    PASSWORD,
    WebCluster,
    api_login,
    csrf_token,
    register_in_browser,
    web_cluster,
)

pytestmark = pytest.mark.privileged
BROWSER = "198.51.100.23"  # the browser's address, as the web sees it (never the hub's)
BUSYBOX = {"image": "hivemind/busybox:latest", "cpu": "0.1", "memory": "64M", "timeout": 60}
PROJECT = "project:numpy"
PROCESSES, PER_WRITER = 4, 40
Writer = multiprocessing.process.BaseProcess | threading.Thread


@contextlib.contextmanager
def audit_world(redis_server: RedisServer, directory: Path) -> Iterator[WebCluster]:
    """A web over a real pool with a worker whose tasks run until cancelled, and PROJECT."""
    with web_cluster(redis_server, directory) as found:
        found.start_worker("w1", block_until_cancelled)
        Ledger(found.db()).open_account(PROJECT, "project")
        yield found


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebCluster]:
    with audit_world(redis_server, tmp_path_factory.mktemp("audit")) as found:
        yield found


@pytest.fixture
def db(world: WebCluster) -> redis.Redis:
    """The world's Redis with an empty audit log (the rest of it stays: the pool runs)."""
    client = world.db()
    client.delete(audit.LOG, audit.HEAD, *client.keys("hm:enroll-refusals:*"))
    return client


@pytest.fixture(scope="module")
def app(world: WebCluster) -> Flask:
    return world.app()


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    """A client calling from BROWSER."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = BROWSER
    return client


@pytest.fixture
def hub_dir(world: WebCluster, tmp_path: Path) -> HubSettings:
    """A hub state directory on the world's Redis, with its CA (for ``token create``)."""
    settings = hub_state_dir(world, tmp_path / "hub")
    (settings.path / names.CA_KEY).write_bytes(world.cluster.ca.key_pem)
    return settings


def logged(db: redis.Redis) -> list[tuple[str, str, str, str, str]]:
    """Every entry as (actor, source, action, target, outcome), in order."""
    return [(e.actor, e.source, e.action, e.target, e.outcome) for e in AuditLog(db).entries()]


def only(db: redis.Redis, action: str) -> Entry:
    found = AuditLog(db).entries(action=action)
    assert len(found) == 1, found
    return found[0]


def hub_cli(settings: HubSettings, *argv: str) -> int:
    return run_main(cli.main, [*argv, "--state-dir", settings.state_dir])


# Every action, through its own path


def test_accounts_logins_and_api_tokens_from_the_browser(
    db: redis.Redis, browser: FlaskClient
) -> None:
    user = {"username": "alice", "password": PASSWORD}
    assert browser.post("/api/v1/register", json=user).status_code == 201
    wrong = user | {"password": "not the password"}
    assert browser.post("/api/v1/tokens", json=wrong).status_code == 401
    token = browser.post("/api/v1/tokens", json=user).get_json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert browser.delete("/api/v1/tokens/current", headers=headers).status_code == 204
    register_in_browser(browser, "bob")
    form = {"username": "bob", "password": PASSWORD, "csrf_token": csrf_token(browser)}
    assert browser.post("/login", data=form).status_code == 302
    api_token = f"api_token:{token_digest(token)[:12]}"
    assert logged(db) == [
        ("user:alice", BROWSER, "account.create", "user:alice", "ok"),
        ("unknown", BROWSER, "login.fail", "user:alice", "refused"),
        ("user:alice", BROWSER, "login.ok", "user:alice", "ok"),
        ("user:alice", BROWSER, "api_token.issue", api_token, "ok"),
        ("user:alice", BROWSER, "api_token.revoke", api_token, "ok"),
        ("user:bob", BROWSER, "account.create", "user:bob", "ok"),
        ("user:bob", BROWSER, "login.ok", "user:bob", "ok"),
    ]
    assert token not in json.dumps([e.as_json() for e in AuditLog(db).entries()])
    assert PASSWORD not in json.dumps([e.as_json() for e in AuditLog(db).entries()])


def test_tasks_and_tips_from_the_web_name_the_user_and_the_browser(
    db: redis.Redis, browser: FlaskClient
) -> None:
    headers = api_login(browser, "carol")
    body = BUSYBOX | {"command": ["block"]}
    by_api = browser.post("/api/v1/tasks", headers=headers, json=body).get_json()["id"]
    assert browser.post(f"/api/v1/tasks/{by_api}/cancel", headers=headers).status_code == 200
    tip = {"project": PROJECT, "amount": "0.5"}
    assert browser.post("/api/v1/tips", headers=headers, json=tip).status_code == 201
    register_in_browser(browser, "dave")
    form = {"csrf_token": csrf_token(browser, "/tasks/new"), "command": "block"}
    form |= {k: str(v) for k, v in BUSYBOX.items()}
    reply = browser.post("/tasks/new", data=form | {"action": "submit"})
    assert reply.status_code == 302, reply.get_data(as_text=True)
    by_page = reply.headers["Location"].rsplit("/", 1)[1]
    token = csrf_token(browser, f"/tasks/{by_page}")
    cancel = browser.post(f"/tasks/{by_page}/cancel", data={"csrf_token": token})
    assert cancel.status_code == 302
    form = {"project": PROJECT, "amount": "1", "csrf_token": csrf_token(browser, "/tip")}
    assert browser.post("/tip", data=form).status_code == 302
    done = [row for row in logged(db) if row[2] in ("task.submit", "task.cancel", "ledger.tip")]
    assert done == [
        ("user:carol", BROWSER, "task.submit", by_api, "ok"),
        ("user:carol", BROWSER, "task.cancel", by_api, "ok"),
        ("user:carol", BROWSER, "ledger.tip", PROJECT, "ok"),
        ("user:dave", BROWSER, "task.submit", by_page, "ok"),
        ("user:dave", BROWSER, "task.cancel", by_page, "ok"),
        ("user:dave", BROWSER, "ledger.tip", PROJECT, "ok"),
    ]
    assert AuditLog(db).entries(action="ledger.tip")[0].detail == "500000 micro-CPT"


def test_an_operator_node_is_its_own_actor_and_cannot_name_another_source(
    db: redis.Redis, world: WebCluster
) -> None:
    identity = world.run(world.cluster.add_node("op1", "operator"))
    channel = sync_channel(identity)
    world.channels.append(channel)
    pool = GrpcTaskClient(channel).from_address("198.51.100.99")  # only the hub is believed
    pool.balance("")  # opens its account, with the grant
    task = pool.submit(BUSYBOX | {"command": ["block"]})
    pool.cancel(task["id"])
    pool.tip(PROJECT, 1000)
    assert logged(db) == [
        ("node:op1", LOOPBACK, "task.submit", task["id"], "ok"),
        ("node:op1", LOOPBACK, "task.cancel", task["id"], "ok"),
        ("node:op1", LOOPBACK, "ledger.tip", PROJECT, "ok"),
    ]


def test_the_hubs_commands_are_the_hub_administrators(
    db: redis.Redis, world: WebCluster, hub_dir: HubSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hub_cli(hub_dir, "token", "create", "--json", "--label", "site=lab") == 0
    token_id = json.loads(capsys.readouterr().out)["id"]
    assert hub_cli(hub_dir, "token", "revoke", token_id) == 0
    world.run(world.cluster.add_node("w9", "worker"))
    assert hub_cli(hub_dir, "node", "revoke", "w9") == 0
    assert hub_cli(hub_dir, "node", "revoke", "w9") == 0  # already revoked: nothing done
    assert logged(db) == [
        ("hub-admin", "local", "token.create", f"token:{token_id}", "ok"),
        ("hub-admin", "local", "token.revoke", f"token:{token_id}", "ok"),
        ("hub-admin", "local", "node.revoke", "node:w9", "ok"),
    ]
    assert only(db, "token.create").detail == "worker, 1 uses, ttl 1h, site=lab"


def attempts(outcome: str) -> float:
    labels = {"outcome": outcome}
    return REGISTRY.get_sample_value("hivemind_enrollment_attempts_total", labels) or 0.0


def test_enrollment_accepted_refused_and_leaving_over_grpc(db: redis.Redis, tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    settings = HubSettings(state_dir=str(tmp_path), endpoint="198.51.100.2:7443")
    enroller = CountingEnroller(settings, ca, db, None, generate_wireguard_keypair()[1])
    server = Server(enroller, ca)
    before = attempts("accepted"), attempts("token_rejected"), attempts("token_malformed")
    try:
        endpoint = f"127.0.0.1:{server.port}"
        token = tokens.create_token(db, [endpoint], ca.pin)
        key = generate_tls_key()
        request = request_for(token, csr=build_csr(key, "worker-1"))
        joined = client_side.enroll(endpoint, ca.pem, request)
        with pytest.raises(TokenRejected, match="no uses left"):
            client_side.enroll(endpoint, ca.pem, request_for(token, "worker-2"))
        forged = request_for(token, "worker-3")
        forged.token_id = "not an id at all"
        with pytest.raises(TokenMalformed, match="malformed"):
            client_side.enroll(endpoint, ca.pem, forged)
        client_side.leave(endpoint, ca.pem, joined.node_id, key)
    finally:
        server.close()
    node = f"node:{joined.node_id}"
    assert logged(db) == [
        (node, LOOPBACK, "enrollment.accept", f"token:{token.token_id}", "ok"),
        ("unknown", LOOPBACK, "enrollment.refuse", f"token:{token.token_id}", "token_rejected"),
        ("unknown", LOOPBACK, "enrollment.refuse", "token:(malformed)", "token_malformed"),
        (node, LOOPBACK, "node.leave", node, "ok"),
    ]
    accepted = only(db, "enrollment.accept").detail
    assert accepted == f"worker-1 as worker at {joined.overlay_ip}"
    assert token.secret not in json.dumps([e.as_json() for e in AuditLog(db).entries()])
    after = attempts("accepted"), attempts("token_rejected"), attempts("token_malformed")
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    assert nodes.get_node(db, joined.node_id).state == nodes.LEFT


POLICY = """
[[policy.allow]]
from = ["operator"]
to = ["worker"]
ports = ["tcp/{port}"]
"""


def test_policy_applied_and_refused(db: redis.Redis, world: WebCluster, tmp_path: Path) -> None:
    path = tmp_path / names.HUB_CONFIG
    path.write_text(POLICY.format(port=22))
    settings = HubSettings(state_dir=str(tmp_path))

    async def follow() -> None:
        client = redis_client(world.cluster.redis_server)
        await client.delete("hm:policy")
        try:
            policy_file = PolicyFile(settings, client, path)
            running = await policy_file.initial()
            again = await PolicyFile(settings, client, path).initial()  # the same: nothing
            assert again.digest() == running.digest()
            for text in (POLICY.format(port=2222), "[[policy.allow]]\nfrom = 1\n"):
                path.write_text(text)
                assert await policy_file.changed(running) is None  # not settled yet
                running = await policy_file.changed(running) or running
        finally:
            await client.delete("hm:policy")
            await client.aclose()

    asyncio.run(follow())
    rows = logged(db)
    assert [row[2:] for row in rows] == [
        ("policy.change", "hub.toml", "ok"),
        ("policy.change", "hub.toml", "ok"),
        ("policy.refuse", "hub.toml", "refused"),
    ]
    assert {row[:2] for row in rows} == {("hub-admin", "local")}
    assert "line" in AuditLog(db).entries(action="policy.refuse")[0].detail


# The chain


def append_many(address: tuple[str, int, str], writer: str) -> None:
    """PER_WRITER entries from one writer (a process of its own, or a thread)."""
    client = redis.Redis(host=address[0], port=address[1], password=address[2])
    try:
        log = AuditLog(client)
        for n in range(PER_WRITER):
            log.append(Event(writer, LOOPBACK, "task.submit", f"{writer}-{n}"))
    finally:
        client.close()


def test_appends_from_several_processes_and_threads_keep_one_chain(
    db: redis.Redis, world: WebCluster
) -> None:
    server = world.cluster.redis_server
    address = (server.bind, server.port, server.password)
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(target=append_many, args=(address, f"process-{n}")) for n in range(PROCESSES)
    ]
    threads = [threading.Thread(target=append_many, args=(address, f"thread-{n}")) for n in (1, 2)]

    async def from_the_loop() -> None:
        client = redis_client(server)
        log = AsyncAuditLog(client)
        try:
            for n in range(PER_WRITER):
                await log.append(Event("loop", LOOPBACK, "task.cancel", f"loop-{n}"))
        finally:
            await client.aclose()

    writing: list[Writer] = [*processes, *threads]
    for worker in writing:
        worker.start()
    asyncio.run(from_the_loop())
    for worker in writing:
        worker.join(120)
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    writers = PROCESSES + len(threads) + 1
    entries = AuditLog(db).entries()
    assert [e.seq for e in entries] == list(range(1, writers * PER_WRITER + 1))
    assert AuditLog(db).verify() == (writers * PER_WRITER, None)
    for n in range(PROCESSES):  # each writer's entries, each once, in its own order
        mine = [e.target for e in entries if e.actor == f"process-{n}"]
        assert mine == [f"process-{n}-{i}" for i in range(PER_WRITER)]


def five_entries(db: redis.Redis) -> list[str]:
    log = AuditLog(db)
    for n in range(5):
        log.append(Event(f"user:u{n}", BROWSER, "login.ok", f"user:u{n}"))
    return log.lines()


def verify_says(settings: HubSettings, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = hub_cli(settings, "audit", "--verify")
    return status, capsys.readouterr().out.strip()


def test_verify_names_an_altered_entry(
    db: redis.Redis, hub_dir: HubSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = five_entries(db)
    assert verify_says(hub_dir, capsys) == (0, "5 entries, chain intact")
    fields = json.loads(lines[1]) | {"actor": "user:mallory"}
    db.lset(audit.LOG, 1, json.dumps(fields))
    assert verify_says(hub_dir, capsys) == (1, "entry 2 was altered")
    fields["hash"] = audit.digest(fields)  # the hash computed again: the next link breaks
    db.lset(audit.LOG, 1, json.dumps(fields))
    status, said = verify_says(hub_dir, capsys)
    assert status == 1 and said.startswith("entry 2 was altered")
    db.lset(audit.LOG, 1, lines[1])
    db.lset(audit.LOG, 3, lines[3].replace('"outcome":"ok"', '"outcome":"refused"'))
    assert hub_cli(hub_dir, "audit", "--verify", "--json") == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["intact"] is False and verdict["entries"] == 5
    assert verdict["problem"] == {"seq": 4, "kind": "altered", "message": "entry 4 was altered"}


def test_verify_names_a_removed_entry_in_the_middle_and_at_the_end(
    db: redis.Redis, hub_dir: HubSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = five_entries(db)
    db.lrem(audit.LOG, 1, lines[2])
    assert verify_says(hub_dir, capsys) == (1, "entry 3 was removed")
    db.linsert(audit.LOG, "BEFORE", lines[3], lines[2])
    assert verify_says(hub_dir, capsys) == (0, "5 entries, chain intact")
    db.rpop(audit.LOG)
    command = [sys.executable, "-m", "hivemind_cluster.hub.cli", "audit", "--verify"]
    done = subprocess.run(
        [*command, "--state-dir", hub_dir.state_dir], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (1, "entry 5 was removed\n"), done.stderr


def test_the_mirror_equals_the_log_across_restarts(db: redis.Redis, tmp_path: Path) -> None:
    settings = HubSettings(state_dir=str(tmp_path))
    mirror = tmp_path / names.AUDIT_LOG

    async def up_with(appended: int, hub: HubSettings) -> None:
        """A hub's life: ``up`` (settings audited, the mirror started), some entries, stop."""
        async with contextlib.AsyncExitStack() as undo:
            start_audit(hub, db, undo)
            for n in range(appended):
                await asyncio.to_thread(
                    AuditLog(db).append, Event("user:m", BROWSER, "login.ok", f"user:m{n}")
                )

    asyncio.run(up_with(3, settings))
    assert mirror.read_text().splitlines() == AuditLog(db).lines()
    assert len(AuditLog(db).lines()) == 4 and only(db, "settings.change").seq == 1
    for n in range(2):  # while the hub is down
        AuditLog(db).append(Event("user:m", BROWSER, "login.fail", f"user:late{n}"))
    asyncio.run(up_with(1, settings))  # the same settings: nothing to record
    assert mirror.read_text().splitlines() == AuditLog(db).lines()
    assert [json.loads(line)["seq"] for line in mirror.read_text().splitlines()] == [*range(1, 8)]
    asyncio.run(up_with(0, dataclasses.replace(settings, max_attempts=5)))
    changed = AuditLog(db).entries(action="settings.change")
    assert [json.loads(e.detail) for e in changed[1:]] == [{"max_attempts": 5}]
    assert mirror.read_text().splitlines() == AuditLog(db).lines()


# The command line


def test_reading_filters_and_cleans_untrusted_text(
    db: redis.Redis, hub_dir: HubSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog(db)
    log.append(Event("hub-admin", "local", "token.create", "token:aaaaaaaaaaaa"))
    log.append(Event("unknown", BROWSER, "enrollment.refuse", "token:x", "no", "\x1b[31mred"))
    log.append(Event("hub-admin", "local", "token.revoke", "token:aaaaaaaaaaaa"))
    assert hub_cli(hub_dir, "audit", "--json", "--action", "token.") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in shown] == ["token.create", "token.revoke"]
    assert shown[0] == log.entries()[0].as_json()
    assert hub_cli(hub_dir, "audit", "--json", "--since", "1h") == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert hub_cli(hub_dir, "audit", "--json", "--since", "2999-01-01T00:00") == 0
    assert json.loads(capsys.readouterr().out) == []
    assert hub_cli(hub_dir, "audit", "--action", "enrollment") == 0
    table = capsys.readouterr().out
    assert table.startswith("SEQ") and "\\x1b[31mred" in table and "\x1b" not in table


@pytest.mark.parametrize("since", ["yesterday", "1w", "-5m", "2026-13-45"])
def test_a_bad_since_is_one_line(
    hub_dir: HubSettings, since: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hub_cli(hub_dir, "audit", f"--since={since}") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: --since {since!r}: an ISO time")
