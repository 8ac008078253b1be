"""A result the platform accepted downloads: producer, pool and consumer apply one rule set.

A real worker (``DockerExecutor``, busybox) runs the tasks over a real pool with real Redis;
``hivemind`` (the real console script, one process per command) talks to the real web app
served over HTTP on loopback. 200 MiB of zeros deflates about 1000:1, which a compression
ratio alone would call a zip bomb; for results the bomb protection is the unpacked total the
worker enforced when it packed them.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.core.units import MIB
from hivemind_cluster.hub.redis_server import RedisServer
from tests.integration.test_cli_api import Site, User
from tests.support.prerequisites import require_docker_images
from tests.support.webkit import web_cluster

pytestmark = pytest.mark.privileged
BUSYBOX = "hivemind/busybox:latest"
ZEROS = 200 * MIB


def finished(user: User, script: str) -> dict[str, Any]:
    """Submit a busybox ``sh -c script``, wait for its end, return its status."""
    task_id = user.submit("sh", "-c", script)
    user.run("wait", task_id)
    found: dict[str, Any] = user.json("status", task_id)
    return found


@pytest.fixture(scope="module")
def user(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    client = require_docker_images(BUSYBOX)
    root = tmp_path_factory.mktemp("compressible")
    node_id = f"test-{secrets.token_hex(4)}"
    executor = DockerExecutor(root / "worker" / "tasks", node_id, client=client, pids_limit=64)
    try:
        with web_cluster(redis_server, root / "state") as world:
            world.run(world.cluster.start_worker("w1", executor))
            server = make_server("127.0.0.1", 0, world.app(), threaded=True)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                site = Site(f"http://127.0.0.1:{server.port}", world)
                member = User(site, "zeros", root / "hivemind.json")
                member.register()
                yield member
            finally:
                server.shutdown()
                thread.join(timeout=10)
    finally:
        executor.remove_leftovers()
        left = client.containers.list(all=True, filters={"label": f"hivemind.node={node_id}"})
        client.close()
        assert left == [], "a task container was left behind"


def only_zeros(path: Path) -> bool:
    block = bytes(MIB)
    with path.open("rb") as source:
        while chunk := source.read(MIB):
            if chunk != block[: len(chunk)]:
                return False
    return True


def test_a_compressible_result_downloads(user: User, tmp_path: Path) -> None:
    task = finished(user, f"head -c {ZEROS} /dev/zero > /out/zeros")
    assert (task["status"], task["error"]) == ("succeeded", ""), task
    out = tmp_path / "results"
    said = user.ok("result", task["id"], "-o", str(out))
    assert said == f"1 files from {task['id']} in {out}\n"
    assert (out / "zeros").stat().st_size == ZEROS
    assert only_zeros(out / "zeros")
    assert sorted(path.name for path in out.iterdir()) == ["zeros"]  # no staging left behind


def test_a_result_over_the_limit_fails_at_the_worker(user: User, tmp_path: Path) -> None:
    # A sparse file: 65 GiB to read, next to nothing on the task's 1 GiB disk; refused
    # before a byte of it is read.
    task = finished(user, "echo kept > /out/small && truncate -s 65G /out/big")
    assert task["status"] == "failed", task
    assert (
        task["error"] == "task output holds 65 GiB unpacked, more than the 64 GiB a result may hold"
    )
    assert user.ok("result", task["id"], "-o", str(tmp_path / "none")) == "no output files\n"
