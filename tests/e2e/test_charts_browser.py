"""End to end, as root: the charts of the web UI in headless Chromium over the overlay.

The lab of tests/support/poolworld.py (a hub, Docker workers w1 and w2, operator ``op``),
its hub run with the pool's history sampled every SAMPLE_SECONDS instead of 10 s (a
wrapper of ``hivemind-hub`` that patches ``pool.history.SAMPLE_INTERVAL``), so that the
series fill in seconds. In ``op``'s namespace the browser registers, submits a task that
burns CPU for TASK_SECONDS through the form and watches it end, then reads the mesh page
(cluster charts, a sparkline per worker, the 6h choice), the ledger page (the balance)
and the task page (its CPU and memory), counting the vertices of each chart's lines, on a
desktop and a phone viewport, with screenshots in build/artifacts/charts/.

``python -m tests.e2e.test_charts_browser URL SHOTS USERNAME PASSWORD`` is the browser's
half (tests/support/browser.py ``runner_main``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.e2e.web_browser import fill, register_and_log_in, watch_until_succeeded
from tests.support import lab
from tests.support.browser import (
    MOBILE,
    HeadlessChromium,
    artifacts_dir,
    browser_prerequisites,
    headless_chromium,
    run_in_host,
    runner_main,
    screenshot,
    set_viewport,
    wait_for,
    wait_until,
)
from tests.support.poolworld import PoolWorld, pool_world
from tests.support.prerequisites import require

pytestmark = pytest.mark.privileged
MODULE = "tests.e2e.test_charts_browser"
HUB_WEB = "http://100.64.0.1:5001"
PASSWORD = "charts password 9"
DESKTOP = (1366, 900)
SAMPLE_SECONDS = 1.0
TASK_SECONDS = 12
# Busy for TASK_SECONDS: CPU use the worker's and the task's charts can show.
BURN = (
    f"end=$(($(date +%s)+{TASK_SECONDS})); i=0; "
    'while [ "$(date +%s)" -lt "$end" ]; do i=$((i+1)); done; echo "$i loops"'
)
HUB_WRAPPER = f"""#!{sys.executable}
import sys
from hivemind_cluster.pool import history
history.SAMPLE_INTERVAL = {SAMPLE_SECONDS}
from hivemind_cluster.hub.cli import entry
sys.exit(entry())
"""
SCROLL_TO_CHARTS = "document.querySelector('figure.chart').scrollIntoView({block: 'start'});"
# The vertices of each chart's lines, of each sparkline, and how wide the page is.
READ_CHARTS = """
const count = (root) => Array.from(root.querySelectorAll('polyline'))
  .reduce((most, line) => Math.max(most, line.points.numberOfItems), 0);
const figures = {};
for (const figure of document.querySelectorAll('figure.chart[id]')) {
  const svg = figure.querySelector('svg').getBoundingClientRect();
  figures[figure.id] = {vertices: count(figure), empty: figure.classList.contains('empty'),
                        width: svg.width, height: svg.height};
}
const sparklines = Array.from(document.querySelectorAll('#mesh-nodes svg.sparkline'))
  .map((svg) => svg.querySelector('polyline').points.numberOfItems);
return {figures, sparklines, page_width: document.documentElement.scrollWidth,
        viewport: innerWidth};
"""


def read_charts(driver: HeadlessChromium) -> dict[str, Any]:
    found: dict[str, Any] = driver.execute_script(READ_CHARTS)
    return found


def vertices_of(driver: HeadlessChromium, chart_id: str) -> int:
    figure = read_charts(driver)["figures"].get(chart_id)
    return int(figure["vertices"]) if figure else 0


def wait_for_a_line(driver: HeadlessChromium, chart_id: str, timeout: float = 60) -> None:
    """Until the chart draws a line of more than one point (the page refreshes itself)."""
    wait_until(driver, lambda d: vertices_of(d, chart_id) > 1, timeout, f"no line in #{chart_id}")


def submit_burning_task(driver: HeadlessChromium, url: str) -> str:
    driver.get(f"{url}/tasks/new")
    wait_for(driver, By.ID, "submit-form")
    fields = {"image": "hivemind/busybox:latest", "command": f"sh -c '{BURN}'"}
    fill(driver, "#submit-form", {**fields, "cpu": "1", "memory": "64M", "timeout": "120"})
    driver.find_element(By.ID, "submit-task").click()
    task_id, _ = watch_until_succeeded(driver, 120)
    return task_id


def both_viewports(driver: HeadlessChromium, name: str) -> dict[str, Any]:
    """The page's charts on the desktop, then on the phone (screenshots of each; live.js
    redraws them every 2 s meanwhile)."""
    seen = {}
    for viewport, size in (("desktop", DESKTOP), ("phone", MOBILE)):
        set_viewport(driver, size)
        if viewport == "phone":  # below the fold there: bring the charts into the shot
            driver.execute_script(SCROLL_TO_CHARTS)
        shot = screenshot(driver, f"{name}-{viewport}")
        time.sleep(0.3)  # let a refresh under way land before reading
        seen[viewport] = {**read_charts(driver), "screenshot": str(shot)}
    screenshot(driver, f"{name}-back", size=DESKTOP)
    return seen


def browse(args: list[str]) -> dict[str, Any]:
    """Runs inside the operator's namespace; returns what the test asserts on."""
    url, shots, user, password = args
    result: dict[str, Any] = {}
    with headless_chromium(Path(shots), size=DESKTOP, timeout=30) as driver:
        register_and_log_in(driver, url, user, password)
        task_id = submit_burning_task(driver, url)
        result["task_id"] = task_id

        driver.get(f"{url}/mesh")
        wait_for(driver, By.ID, "mesh-charts")
        for chart in ("chart-tasks-running", "chart-cpu-allocated"):
            wait_for_a_line(driver, chart)
        wait_until(
            driver,
            lambda d: (
                len(read_charts(d)["sparklines"]) == 2 and min(read_charts(d)["sparklines"]) > 1
            ),
            60,
            "no sparkline for each worker",
        )
        result["mesh"] = both_viewports(driver, "mesh")
        six_hours = driver.find_element(By.LINK_TEXT, "6h").get_attribute("href") or ""
        driver.get(six_hours)  # a plain link: the choice works without the script
        wait_until(driver, lambda d: "range=6h" in d.current_url, 10, "no 6h range")
        wait_for_a_line(driver, "chart-tasks-running")
        result["mesh_6h"] = read_charts(driver)
        screenshot(driver, "mesh-6h")

        driver.get(f"{url}/ledger")
        wait_for(driver, By.ID, "chart-balance")
        result["ledger"] = both_viewports(driver, "ledger")

        driver.get(f"{url}/tasks/{task_id}")
        wait_for(driver, By.ID, "task-charts")
        result["task"] = both_viewports(driver, "task")
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolWorld]:
    """The pool lab, its hub sampling every SAMPLE_SECONDS (through the wrapper)."""
    for problem in browser_prerequisites():
        require(False, problem)
    workdir = tmp_path_factory.mktemp("chartlab")
    wrapper = workdir / "hivemind-hub-sampling-fast"
    wrapper.write_text(HUB_WRAPPER)
    wrapper.chmod(0o755)
    real_tool = lab.tool
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            lab, "tool", lambda name: str(wrapper) if name == "hivemind-hub" else real_tool(name)
        )
        with pool_world(workdir) as found:
            yield found


def assert_drawn(figures: dict[str, Any], chart_id: str, viewport: tuple[int, int]) -> None:
    figure = figures[chart_id]
    assert not figure["empty"] and figure["vertices"] > 1, (chart_id, figure)
    assert 0 < figure["width"] <= viewport[0] and figure["height"] > 0, (chart_id, figure)


def test_the_charts_show_data_on_a_desktop_and_a_phone(world: PoolWorld) -> None:
    shots = artifacts_dir("charts")
    result = run_in_host(world.op, MODULE, HUB_WEB, str(shots), "chartist", PASSWORD, timeout=420)
    assert world.status(result["task_id"])["status"] == "succeeded"
    for viewport, size in (("desktop", DESKTOP), ("phone", MOBILE)):
        mesh = result["mesh"][viewport]
        for chart in ("chart-cpu-allocated", "chart-memory-allocated", "chart-tasks-running"):
            assert_drawn(mesh["figures"], chart, size)
        assert len(mesh["sparklines"]) == 2 and min(mesh["sparklines"]) > 1, mesh
        assert mesh["page_width"] <= size[0], mesh  # no sideways scrolling
        ledger = result["ledger"][viewport]
        assert_drawn(ledger["figures"], "chart-balance", size)
        assert ledger["page_width"] <= size[0], ledger
    assert result["mesh_6h"]["figures"]["chart-tasks-running"]["vertices"] > 1
    for name in ("mesh", "ledger", "task"):
        for viewport in ("desktop", "phone"):
            png = Path(result[name][viewport]["screenshot"])
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # The task's own usage over its run: drawn once the pool reports usage samples of
    # running tasks (the task view's usage samples, another part of this issue).
    for viewport, size in (("desktop", DESKTOP), ("phone", MOBILE)):
        task = result["task"][viewport]
        for chart in ("chart-task-cpu", "chart-task-memory"):
            assert_drawn(task["figures"], chart, size)


if __name__ == "__main__":
    runner_main(browse)
