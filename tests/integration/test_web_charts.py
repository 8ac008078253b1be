"""The charts on the pages, through Flask's test client over a real pool sampling every
0.2 s (tests/support/webkit.py): the mesh page's cluster charts and sparklines (and its
live fragment, and the range choice), the ledger's balance, the task's usage; all of it
well-formed SVG, with a bad range refused in one line."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.pool import history
from tests.support.webkit import WebCluster, api_login, register_in_browser, web_cluster

pytestmark = pytest.mark.privileged
SVG = "{http://www.w3.org/2000/svg}"
CLUSTER_CHARTS = ("cpu-allocated", "memory-allocated", "tasks-running", "tasks-queued")


@pytest.fixture(scope="module")
def world(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebCluster]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(history, "SAMPLE_INTERVAL", 0.2)
        with web_cluster(redis_server, Path(tmp_path_factory.mktemp("charts"))) as found:
            found.start_worker("w1")
            yield found


@pytest.fixture
def browser(world: WebCluster) -> FlaskClient:
    client = world.app().test_client()
    register_in_browser(client, f"c{time.monotonic_ns() % 10**9}")
    return client


def figures(page: str) -> dict[str, ET.Element]:
    """Every chart figure of a page by id, each parsed as XML on its own."""
    found = {}
    for piece in page.split('<figure class="chart')[1:]:
        element = ET.fromstring('<figure class="chart' + piece.split("</figure>")[0] + "</figure>")
        found[element.attrib["id"]] = element
    return found


def vertices(figure: ET.Element) -> int:
    return max((len(p.attrib["points"].split()) for p in figure.iter(f"{SVG}polyline")), default=0)


def drawn(page: str, chart_id: str) -> bool:
    """Whether the page's chart ``chart_id`` draws a line of more than one point."""
    chart = figures(page).get(chart_id)
    return chart is not None and vertices(chart) > 1


def until(client: FlaskClient, path: str, ready: Callable[[str], bool], timeout: float = 20) -> str:
    """The page once ``ready(page)`` (the pool samples every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while not ready(page := client.get(path).get_data(as_text=True)):
        assert time.monotonic() < deadline, page
        time.sleep(0.2)
    return page


def test_the_mesh_page_charts_the_cluster_and_each_worker(browser: FlaskClient) -> None:
    page = until(
        browser,
        "/mesh",
        lambda page: drawn(page, "chart-tasks-running") and 'class="sparkline"' in page,
    )
    assert set(figures(page)) == {f"chart-{name}" for name in CLUSTER_CHARTS}
    assert 'href="/mesh?range=6h"' in page and 'aria-current="true">1h</a>' in page
    assert 'data-refresh="/mesh?partial=1&amp;range=1h"' in page
    sparkline = page.split('class="cpu"')[1].split("</td>")[0]
    assert ET.fromstring(sparkline[sparkline.index("<svg") :]).tag == f"{SVG}svg"
    partial = until(
        browser, "/mesh?partial=1&range=24h", lambda page: drawn(page, "chart-cpu-allocated")
    )
    assert "<html" not in partial and 'aria-current="true">24h</a>' in partial
    refused = browser.get("/mesh?range=1y")
    assert refused.status_code == 400
    assert "range &#39;1y&#39; is not one of 1h, 6h, 24h" in refused.get_data(as_text=True)


def test_the_ledger_charts_the_balance(browser: FlaskClient) -> None:
    page = browser.get("/ledger").get_data(as_text=True)
    balance = figures(page)["chart-balance"]
    assert vertices(balance) == 4  # the grant, held until now: two steps
    assert "now 150 CPT" in "".join(balance.itertext())


def test_the_task_page_has_its_usage_charts(world: WebCluster) -> None:
    client, name = world.app().test_client(), f"t{time.monotonic_ns() % 10**9}"
    register_in_browser(client, name)
    headers = api_login(client, name)  # the same user's API token
    body = {"image": "hivemind/busybox:latest", "command": ["x"], "cpu": "1", "memory": "64M"}
    task = client.post("/api/v1/tasks", json=body, headers=headers).get_json()
    page = client.get(f"/tasks/{task['id']}").get_data(as_text=True)
    found = figures(page)
    assert {"chart-task-cpu", "chart-task-memory"} <= set(found), page
