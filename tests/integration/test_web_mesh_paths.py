"""The web's mesh page shows each node's direct and relayed peers and what the hub relays
(web/mesh.py, mesh/inventory.py), over a real pool and Redis (tests/support/webkit.py).

The members' path records are written to Redis as mesh/pathreports.py writes them (node
ids; the names come from the registry); the nft
relay counters (mesh/relaycount.py, tested in a namespace in test_relay_counters.py) are
replaced at their edge.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from hivemind_cluster.core.errors import SystemFailure
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import constants, relaycount
from tests.support.webkit import WebCluster, register_in_browser, web_cluster

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebCluster]:
    with web_cluster(redis_server, tmp_path_factory.mktemp("web")) as found:
        found.start_worker("w1")
        yield found


@pytest.fixture
def browser(world: WebCluster) -> FlaskClient:
    client = world.app().test_client()
    register_in_browser(client, f"p{time.monotonic_ns() % 10**9}")
    return client


@pytest.fixture
def w1_reported(world: WebCluster) -> Iterator[None]:
    """w1 reports the peer "gpu-box" direct, "laptop" and one no longer registered via the
    hub (the registry has the first two, by id; none of them is in the pool's list)."""
    record: dict[str, Any] = {"time": time.time() - 1, "applied_revision": 7, "endpoints": []}
    record |= {"direct": ["n1"], "relayed": ["n2", "ngone"], "figures": {}}
    keys = [constants.PATHS.format(id="w1"), *(constants.NODE.format(id=n) for n in ("n1", "n2"))]
    world.db().set(keys[0], json.dumps(record), ex=constants.PATHS_TTL)
    world.db().hset(keys[1], "name", "gpu-box")
    world.db().hset(keys[2], "name", "laptop")
    yield
    world.db().delete(*keys)


@pytest.mark.usefixtures("w1_reported")
def test_the_mesh_page_shows_paths_and_what_the_hub_relayed(
    browser: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_ip = next(
        n["overlay_ip"] for n in browser.get("/api/v1/mesh").get_json()["nodes"] if n["id"] == "w1"
    )
    monkeypatch.setattr(relaycount, "read", lambda _interface: {worker_ip: 3 << 20, "x": 1 << 20})
    mesh = browser.get("/api/v1/mesh").get_json()
    worker = next(n for n in mesh["nodes"] if n["id"] == "w1")
    assert worker["direct_peers"] == ["gpu-box"]
    assert worker["relayed_peers"] == ["laptop", "ngone"]
    assert worker["relayed_bytes"] == 3 << 20 and 0 < worker["path_report_age"] < 60
    assert mesh["totals"]["relayed_bytes"] == 4 << 20
    page = browser.get("/mesh?partial=1").get_data(as_text=True)
    assert "The hub relayed 4 MiB" in page or "The hub relayed 4.0 MiB" in page
    assert '<td data-label="Direct peers" class="direct-peers"' in page and "gpu-box" in page
    assert '<td data-label="Relayed peers" class="relayed-peers"' in page and "laptop" in page


def test_unknown_paths_and_counters_are_shown_as_unknown(
    browser: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(_interface: str) -> dict[str, int]:
        raise SystemFailure("`nft --json list set ...` failed: No such file or directory")

    monkeypatch.setattr(relaycount, "read", unreadable)
    mesh = browser.get("/api/v1/mesh").get_json()
    assert {n["relayed_bytes"] for n in mesh["nodes"]} == {None}
    assert {n["direct_peers"] is None for n in mesh["nodes"]} == {True}
    assert mesh["totals"]["relayed_bytes"] is None
    page = browser.get("/mesh").get_data(as_text=True)
    assert "its relay counters could not be read" in page
    assert 'class="direct-peers"' not in page
