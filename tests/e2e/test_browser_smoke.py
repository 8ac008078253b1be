"""Headless Chromium inside a lab host's network namespace (the template for browser tests).

One host, ``web``: a small stdlib HTTP server on its underlay address serves a page with a
form whose submit handler POSTs to ``/api/greet`` with ``fetch`` and writes the reply into
the page. The browser session runs in the same namespace as a subprocess (see
``tests/support/browser.py`` for why): ``python -m tests.e2e.test_browser_smoke browse URL DIR``
fills and submits the form, waits for the JS-updated text, takes screenshots and prints a
JSON line. The test checks that result, the screenshots, the server's log, a Chromium
net-log (only the page's origin was contacted) and that no browser process or temporary
profile is left behind.

Run directly inside a namespace: ``python -m tests.e2e.test_browser_smoke serve IP PORT``
or ``python -m tests.e2e.test_browser_smoke browse URL DIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.support.browser import (
    DESKTOP,
    KNOWN_BLOCKED_REQUESTS,
    MOBILE,
    artifacts_dir,
    browser_prerequisites,
    headless_chromium,
    net_log_destinations,
    run_in_host,
    runner_main,
    screenshot,
    wait_for,
    wait_for_text,
)
from tests.support.lab import Host, Lab
from tests.support.prerequisites import REPO, require, require_root_network

pytestmark = pytest.mark.privileged

MODULE = "tests.e2e.test_browser_smoke"
PORT = 8080
NAME = "Ada Lovelace"
GREETING = f"Hello, {NAME}!"
# Chromium's IPv6 reachability probe: it connects a UDP socket (no packet is sent).
IPV6_PROBE = "[2001:4860:4860::8888]:443"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>HiveMind browser smoke</title>
<style>
  body { font-family: sans-serif; margin: 2rem; max-width: 40rem; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; }
  input { flex: 1 1 12rem; padding: .4rem; }
  #status { margin-top: 1rem; padding: .6rem; background: #eef3ff; border-radius: .3rem; }
</style>
</head>
<body>
<h1>Browser smoke</h1>
<form id="greet">
  <input id="name" name="name" placeholder="Your name" required>
  <button id="submit" type="submit">Greet</button>
</form>
<p id="status">Waiting for a name</p>
<script>
document.getElementById("greet").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("status");
  status.textContent = "Sending…";
  const response = await fetch("/api/greet", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({name: document.getElementById("name").value}),
  });
  const reply = await response.json();
  status.textContent = reply.greeting;
});
</script>
</body>
</html>
"""


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        self.reply(200, "text/html; charset=utf-8", PAGE.encode())

    def do_POST(self) -> None:
        if self.path != "/api/greet":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        reply = {"greeting": f"Hello, {body['name']}!"}
        self.reply(200, "application/json", json.dumps(reply).encode())

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def serve(ip: str, port: int) -> None:
    """Runs in the namespace until SIGTERM; requests are logged to stderr."""
    server = ThreadingHTTPServer((ip, port), Handler)
    print(f"listening on http://{ip}:{port}/", flush=True)
    server.serve_forever()


def browse(args: list[str]) -> dict[str, Any]:
    """Runs in the namespace: the browser steps; returns what the test asserts on."""
    url, directory = args
    shots = Path(directory)
    net_log = shots / "netlog.json"
    with headless_chromium(
        shots, log_path=shots / "chromedriver.log", extra_args=[f"--log-net-log={net_log}"]
    ) as driver:
        driver.get(url)
        before = wait_for(driver, By.ID, "status").text
        wait_for(driver, By.ID, "name").send_keys(NAME)
        driver.find_element(By.ID, "submit").click()
        after = wait_for_text(driver, By.ID, "status", GREETING).text
        desktop = screenshot(driver, "greeted")
        mobile = screenshot(driver, "greeted-mobile", size=MOBILE)
        result = {
            "title": driver.title,
            "before": before,
            "after": after,
            "screenshots": [str(desktop), str(mobile)],
            "mobile_viewport": driver.execute_script("return [innerWidth, innerHeight]"),
            "startup_seconds": driver.startup_seconds,
            "profile": str(driver.profile_dir),
        }
    result["profile_left"] = Path(result["profile"]).exists()
    result["net_log"] = net_log_destinations(net_log)
    return result


def start_server(host: Host, log: Path) -> subprocess.Popen[str]:
    server = host.popen(
        "env",
        f"PYTHONPATH={REPO}",
        sys.executable,
        "-m",
        MODULE,
        "serve",
        host.ip,
        str(PORT),
        log=log,
    )
    deadline = time.monotonic() + 20
    while "listening on" not in (log.read_text() if log.exists() else ""):
        if server.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("the HTTP server did not start:\n" + log.read_text())
        time.sleep(0.05)
    return server


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def namespace_processes(host: Host) -> list[str]:
    """``pid:command`` of every process in the host's namespace."""
    listed = subprocess.run(
        ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=True
    )
    processes = []
    for pid in listed.stdout.split():
        with contextlib.suppress(OSError):
            processes.append(f"{pid}:{Path(f'/proc/{pid}/comm').read_text().strip()}")
    return processes


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_root_network()
    for problem in browser_prerequisites():
        require(False, problem)
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def test_form_submit_and_fetch_in_a_namespace(lab: Lab, tmp_path: Path) -> None:
    host = lab.add_host("web")
    shots = artifacts_dir("browser-smoke")
    url = f"http://{host.ip}:{PORT}/"
    server_log = tmp_path / "server.log"
    server = start_server(host, server_log)
    try:
        result = run_in_host(host, MODULE, "browse", url, str(shots), timeout=180)
        leftovers = [p for p in namespace_processes(host) if "chrom" in p.split(":", 1)[1]]
    finally:
        stop(server)
    (shots / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"browser start inside the namespace: {result['startup_seconds']:.2f}s")

    assert result["title"] == "HiveMind browser smoke"
    assert result["before"] == "Waiting for a name"
    assert result["after"] == GREETING
    assert tuple(result["mobile_viewport"]) == MOBILE
    for name, size in (("greeted.png", DESKTOP), ("greeted-mobile.png", MOBILE)):
        png = shots / name
        assert str(png) in result["screenshots"]
        assert png.stat().st_size > 0
        header = png.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", header[16:24]) == size  # IHDR: width, height
    assert not (shots / "failure.png").exists()

    log = server_log.read_text()
    assert f"{host.ip} - - " in log and '"GET / HTTP/1.1" 200' in log
    assert '"POST /api/greet HTTP/1.1" 200' in log

    # The browser connected nowhere but to the page's origin. Other requests are only the
    # known ones that the host resolver rules fail inside Chromium (no packet leaves).
    net_log = result["net_log"]
    assert f"{url}api/greet" in net_log["urls"]
    elsewhere = [u for u in net_log["urls"] if not u.startswith(url)]
    assert all(u.startswith(KNOWN_BLOCKED_REQUESTS) for u in elsewhere), elsewhere
    assert net_log["tcp"] == [f"{host.ip}:{PORT}"], net_log["tcp"]
    assert set(net_log["udp"]) <= {IPV6_PROBE}, net_log["udp"]

    # Nothing left behind: no browser process in the namespace, no temporary profile.
    assert leftovers == []
    assert result["profile_left"] is False


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["browse"]:
        runner_main(browse, sys.argv[2:])
    else:
        sys.exit(__doc__)
