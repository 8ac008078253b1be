"""Web benchmark: what the hub's web server answers per second, and how fast.

    python bench/web.py [--seconds 5] [--clients 8] [--runs 3] [--json]

No target in the issue; the figures are here to notice regressions. Method: a real
redis-server and the pool on loopback (``tests/support/webkit.py``: real gRPC with mTLS, one
scripted worker), the web app served by waitress with the same threads ``hivemind-hub
web`` uses, and ``--clients`` client threads in this process (on the same 2 cores, so the
server gets at most what they leave). Each scenario runs for ``--seconds``: requests per
second and p50/p99 latency, median of ``--runs``. Scenarios: GET a task (one token
check in Redis, one gRPC call), a log page (a task with 300 lines), the mesh page (HTML:
registry, WireGuard, pool), and submissions (escrow, store, queue, run, settle).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import waitress.server
from flask import Flask
from waitress import wasyncore
from waitress.task import ThreadedTaskDispatcher

from hivemind_cluster.agent.taskrun import OnOutput, Outcome, TaskRun
from hivemind_cluster.web.server import THREADS
from tests.support.poolkit import echo
from tests.support.scratch import scratch_dir_with_redis
from tests.support.webkit import PASSWORD, api_login, csrf_token, web_cluster

Request = Callable[[http.client.HTTPConnection], int]


class Trigger(Protocol):
    def pull_trigger(self, thunk: Callable[[], object]) -> None: ...


class Serving(Protocol):
    """What this benchmark uses of the server ``create_server`` makes for one host and port
    (a ``TcpWSGIServer``), written out because waitress's stubs lack ``effective_port`` and
    the loop's socket map ``_map``, and call ``trigger`` an int."""

    effective_port: int
    trigger: Trigger
    task_dispatcher: ThreadedTaskDispatcher
    _map: Mapping[int, socket.socket]

    def run(self) -> None: ...


def chatty(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
    for n in range(300):
        on_output("stdout", f"line {n}\n".encode())
    return echo(task, on_output, cancel)


def measure(port: int, request: Request, seconds: float, clients: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        while time.monotonic() < stop:
            began = time.perf_counter()
            status = request(connection)
            mine.append(time.perf_counter() - began)
            if status >= 400:
                errors[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "requests_per_second": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "errors": errors[0],
    }


def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> Request:
    payload = json.dumps(body) if body is not None else None
    sent = headers | ({"Content-Type": "application/json"} if payload else {})

    def send(connection: http.client.HTTPConnection) -> int:
        connection.request(method, path, body=payload, headers=sent)
        answer = connection.getresponse()
        answer.read()
        return answer.status

    return send


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "queue depth": the point
    with (
        scratch_dir_with_redis("hivemind-bench-web-") as (workdir, redis_server),
        web_cluster(redis_server, workdir / "state") as world,
    ):
        world.start_worker("w1", chatty)
        app = world.app()
        server = cast(
            Serving,
            waitress.server.create_server(
                app, host="127.0.0.1", port=0, threads=THREADS, ident="hivemind"
            ),
        )
        serving = threading.Thread(target=server.run, daemon=True)
        serving.start()
        try:
            results = run(app, int(server.effective_port), args)
        finally:
            # Closed from inside its own loop, which then ends: closing the sockets from this
            # thread would pull them from under a select() still running.
            sockets = server._map
            server.trigger.pull_trigger(lambda: wasyncore.close_all(sockets))
            serving.join(10)
            server.task_dispatcher.shutdown()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, figures in results.items():
            print(
                f"{name:<14} {figures['requests_per_second']:7.0f} req/s   "
                f"p50 {figures['p50_ms']:6.1f} ms   p99 {figures['p99_ms']:6.1f} ms   "
                f"(median of {args.runs} runs of {args.seconds:g} s, {args.clients} clients)"
            )
    return 0


def run(app: Flask, port: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    client = app.test_client()
    headers = api_login(client, "bench")
    login = {"username": "bench", "password": PASSWORD}
    task_id = client.post(
        "/api/v1/tasks", headers=headers, json={"image": "hivemind/busybox:latest", "cpu": "0.1"}
    ).get_json()["id"]
    deadline = time.monotonic() + 60
    while (task := client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json())[
        "status"
    ] != "succeeded":
        if time.monotonic() > deadline:
            raise SystemExit(f"the benchmark's first task did not succeed: {task}")
        time.sleep(0.05)
    client.post("/login", data=login | {"csrf_token": csrf_token(client)})  # a browser session
    session = client.get_cookie("session")
    assert session is not None, "the login did not start a session"
    cookie = f"session={session.value}"
    # A small price cap, so that the grant pays for every submission of the benchmark.
    submission = {"image": "hivemind/busybox:latest", "cpu": "0.1", "memory": "16M", "timeout": 5}
    scenarios = {
        "get task": call("GET", f"/api/v1/tasks/{task_id}", headers),
        "log page": call("GET", f"/api/v1/tasks/{task_id}/logs", headers),
        "mesh page": call("GET", "/mesh", {"Cookie": cookie}),
        "submit": call("POST", "/api/v1/tasks", headers, submission),
    }
    results = {}
    for name, request in scenarios.items():
        runs = [measure(port, request, args.seconds, args.clients) for _ in range(args.runs)]
        results[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return results


if __name__ == "__main__":
    raise SystemExit(main())
