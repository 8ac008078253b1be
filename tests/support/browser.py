"""Headless Chromium for browser tests, run *inside* a lab host's network namespace.

Why inside the namespace: a lab host (``tests/support/lab.py``) is a network namespace whose only
links are its loopback and a veth on the lab bridge; the root namespace has no address on
that bridge. Selenium talks to chromedriver over HTTP on ``localhost:<port>`` and
chromedriver talks to Chromium over the DevTools port, also on loopback. Started inside a
namespace, both listen on *that namespace's* loopback, which the root namespace (where
pytest runs) cannot reach; started in the root namespace, the browser cannot reach the
hosts' underlay addresses. So the whole browser session — Selenium client, chromedriver,
Chromium — runs as one subprocess inside the namespace (``run_in_host``, i.e. ``ip netns
exec`` like ``Host.run``), and only a JSON result crosses back.

The runner pattern (a test module ``tests/e2e/test_x.py``)::

    def browse(args: list[str]) -> dict[str, object]:       # runs inside the namespace
        url, shots = args
        with headless_chromium(Path(shots)) as driver:
            driver.get(url)
            wait_for(driver, By.ID, "name").send_keys("Ada")
            ...
            return {"title": driver.title, "shot": str(screenshot(driver, "home"))}

    if __name__ == "__main__":
        runner_main(browse)                                   # prints one JSON line

    def test_x(lab: Lab) -> None:                             # runs in the root namespace
        host = lab.add_host("web")                            # + a server on host.ip
        result = run_in_host(host, "tests.e2e.test_x", url, str(artifacts_dir("x")))

``runner_main`` prints ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...,
"traceback": ...}`` as the last stdout line; ``run_in_host`` returns ``result`` or raises
``AssertionError`` with the runner's stdout and stderr.

Cleanup: chromedriver is started in a new session (process group); Chromium and its
helpers inherit that group, except the crashpad handlers, which call setsid() and are found
by the temporary profile path on their command line. On leaving ``headless_chromium``
(also after an exception, or SIGTERM/SIGINT, which ``runner_main`` turns into SystemExit)
the driver is quit, the group and the crashpad handlers are SIGKILLed and waited for, and
the temporary profile is removed. ``Lab.close`` kills whatever is left in a namespace if
the runner itself is SIGKILLed.

No phone-home (checked by tests/e2e/test_browser_smoke.py with a net-log): Selenium
Manager is never run (explicit driver and browser paths), proxies are off for both
Selenium and Chromium, background networking, component updates, sync, crash and metrics
upload, translation and network time are disabled, the on-device AI model manifest is
overridden with an empty directory, the first tab is about:blank (not the search engine's
new tab page), and ``--host-resolver-rules`` lets only names and IP literals matching
``REACHABLE`` resolve, so what Chromium still tries (``KNOWN_BLOCKED_REQUESTS``) fails
inside the browser without a packet. A lab host has no default route besides.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.support.lab import UNDERLAY, Host
from tests.support.prerequisites import REPO

T = TypeVar("T")
Driver = TypeVar("Driver", bound=webdriver.Chrome)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# Window (CSS pixel) sizes for screenshots.
DESKTOP = (1280, 900)
MOBILE = (390, 844)  # a current phone in portrait

# Host names and IP literals the browser may resolve (``--host-resolver-rules`` patterns; IP
# literals go through the rules too): loopback, the lab underlay and the default overlay.
REACHABLE = ("localhost", "127.0.0.1", "::1", f"{UNDERLAY}.*", "100.64.*")

# Chromium features that contact Google on their own. Not ``OptimizationHints``: disabling
# it has been reported to crash Chromium 151+ when the on-device model update then fails.
DISABLED_FEATURES = (
    "AutofillServerCommunication",
    "CertificateTransparencyComponentUpdater",
    "DialMediaRouteProvider",
    "InterestFeedContentSuggestions",
    "MediaRouter",
    "NetworkTimeServiceQuerying",  # GET clients2.google.com/time/1/current at startup
    "OptimizationGuideModelDownloading",
    "OptimizationGuideOnDeviceModel",
    "Translate",
)

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # root cannot use the setuid/user-namespace sandbox
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--mute-audio",
    # Nothing but the pages we open may go on the network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--safebrowsing-disable-auto-update",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--metrics-recording-only",
    "--no-pings",
    "--disable-search-engine-choice-screen",
    "--password-store=basic",
    "--no-proxy-server",
    "--disable-features=" + ",".join(DISABLED_FEATURES),
)

# Profile preferences: start on about:blank, not on the default search engine's new tab
# page (Debian's is DuckDuckGo: https://start.duckduckgo.com/ would be fetched at startup),
# and no sign-in to Chromium.
PREFS = {
    "session.restore_on_startup": 4,
    "session.startup_urls": ["about:blank"],
    "signin.allowed": False,
}

# Requests Chromium 156 still starts, whatever the switches; the host resolver rules fail
# them inside the browser (net::ERR_NAME_NOT_RESOLVED), so no packet leaves. The account
# cookie check runs once the namespace has a non-loopback address.
KNOWN_BLOCKED_REQUESTS = ("https://accounts.google.com/ListAccounts?",)


def artifacts_dir(name: str) -> Path:
    """``$HIVEMIND_ARTIFACTS/<name>`` (default ``<repo>/build/artifacts/<name>``), created
    empty so that what a test finds there is from this run."""
    root = Path(os.environ.get("HIVEMIND_ARTIFACTS") or REPO / "build" / "artifacts")
    directory = root / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def browser_prerequisites() -> list[str]:
    """What is missing to run a browser session (empty when everything is there)."""
    return [
        f"{path} is not installed (make setup)"
        for path in (CHROMIUM, CHROMEDRIVER)
        if not os.access(path, os.X_OK)
    ]


class HeadlessChromium(webdriver.Chrome):
    """A ``selenium.webdriver.Chrome`` that knows where its screenshots go."""

    screenshot_dir: Path
    profile_dir: Path  # temporary; removed when ``headless_chromium`` exits
    startup_seconds: float  # from starting chromedriver to a ready session


def _leftovers(pgid: int, marker: str) -> list[int]:
    """Live PIDs in process group ``pgid`` or with ``marker`` in their command line.

    Chromium's crashpad handlers call setsid(), so they leave the group; their command
    line names the crash database, which lives in our temporary profile (``marker``).
    Zombies are skipped: they are dead and only their parent (or init) can reap them.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may contain spaces; after it
        # come the state (field 3) and the process group (field 5).
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if state in {"Z", "X"}:
            continue
        if int(pgrp) == pgid or marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _kill_leftovers(pgid: int, marker: str, timeout: float = 10) -> None:
    """SIGKILL the group and any process carrying ``marker``; wait until none is left."""
    deadline = time.monotonic() + timeout
    while pids := _leftovers(pgid, marker):
        if pgid > 1:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"Chromium processes survived SIGKILL: {pids}")
        time.sleep(0.02)


@contextlib.contextmanager
def headless_chromium(
    screenshot_dir: Path,
    *,
    size: tuple[int, int] = DESKTOP,
    mobile: bool = False,
    timeout: float = 10,
    log_path: Path | None = None,
    reachable: Sequence[str] = REACHABLE,
    extra_args: Sequence[str] = (),
) -> Iterator[HeadlessChromium]:
    """A fresh headless Chromium (temporary profile) driven through /usr/bin/chromedriver.

    ``size`` is the viewport in CSS pixels; ``mobile=True`` emulates a phone instead
    (Chrome's mobile emulation: a ``MOBILE`` viewport, touch, coarse pointer; the user
    agent stays HeadlessChrome's). ``timeout`` is the page-load and script timeout
    (explicit waits take their own). ``log_path`` receives chromedriver's and Chromium's
    log. Only host names and IP literals matching a pattern of ``reachable`` resolve;
    anything else fails with ``net::ERR_NAME_NOT_RESOLVED`` (``driver.get`` raises).
    ``extra_args`` are more Chromium switches (e.g. ``--log-net-log=PATH``). On an
    exception inside the block, ``failure.png`` and ``failure.html`` are saved to
    ``screenshot_dir`` before the browser is torn down. The driver's ``startup_seconds``
    is the time from starting chromedriver to a ready session.
    """
    screenshot_dir.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="hivemind-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    rules = ", ".join(["MAP * ~NOTFOUND", *(f"EXCLUDE {pattern}" for pattern in reachable)])
    # An empty model manifest: otherwise the on-device AI model manager asks
    # update.googleapis.com for one at startup, --disable-component-update or not.
    no_models = profile / "no-models"
    no_models.mkdir()
    for argument in (
        *CHROMIUM_ARGS,
        f"--user-data-dir={profile / 'profile'}",
        f"--host-resolver-rules={rules}",
        f"--optimization-guide-manifest-override={no_models}",
        *extra_args,
    ):
        options.add_argument(argument)
    options.add_experimental_option("prefs", PREFS)
    if mobile:
        width, height = MOBILE
        options.add_experimental_option(
            "mobileEmulation",
            {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1, "touch": True}},
        )
    else:
        options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.ignore_local_proxy_environment_variables()
    # Chromium's own files (fontconfig cache, crash dumps…) stay in the temporary profile.
    env = {
        **os.environ,
        "HOME": str(profile),
        "XDG_CONFIG_HOME": str(profile / "config"),
        "XDG_CACHE_HOME": str(profile / "cache"),
    }
    service = Service(
        executable_path=str(CHROMEDRIVER),
        service_args=["--enable-chrome-logs"] if log_path else [],
        log_output=str(log_path) if log_path else None,
        env=env,
        popen_kw={"start_new_session": True},
    )
    driver: HeadlessChromium | None = None
    started = time.monotonic()
    try:
        driver = HeadlessChromium(options=options, service=service)
        driver.startup_seconds = time.monotonic() - started
        driver.screenshot_dir = screenshot_dir
        driver.profile_dir = profile
        driver.set_page_load_timeout(timeout)
        driver.set_script_timeout(timeout)
        if not mobile:
            set_viewport(driver, size)
        try:
            yield driver
        except BaseException:
            with contextlib.suppress(Exception):
                driver.save_screenshot(str(screenshot_dir / "failure.png"))
                (screenshot_dir / "failure.html").write_text(driver.page_source)
            raise
    finally:
        try:
            if driver is not None:
                with contextlib.suppress(Exception):
                    driver.quit()
            else:
                with contextlib.suppress(Exception):
                    service.stop()
        finally:
            process = getattr(service, "process", None)
            _kill_leftovers(process.pid if process is not None else -1, f"{profile}/")
            if process is not None:
                with contextlib.suppress(Exception):
                    process.wait(timeout=5)
            shutil.rmtree(profile, ignore_errors=True)


def wait_until(
    driver: Driver,
    condition: Callable[[Driver], T | None],
    timeout: float,
    what: str,
) -> T:
    """``condition(driver)`` once it is truthy, polled every 0.1 s for ``timeout`` seconds.

    A ``WebDriverException`` from ``condition`` counts as "not yet": while a click loads the
    next page, or a script replaces part of this one, an element found a moment ago can be
    stale, or belong to a document that is being replaced ("Node with given id does not
    belong to the document"). On timeout the last such error is in the message, which
    ``WebDriverWait(..., ignored_exceptions=...)`` would drop (it keeps only the driver's
    stack trace, a list of addresses).
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = condition(driver)
        except WebDriverException as error:
            value, last_error = None, f" (last error: {(error.msg or repr(error)).strip()})"
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutException(f"{what} after {timeout}s{last_error}")
        time.sleep(0.1)


def wait_for(driver: webdriver.Chrome, by: str, selector: str, timeout: float = 10) -> WebElement:
    """The element once it is visible (``by`` is a ``selenium.webdriver.common.by.By``)."""

    def visible(d: webdriver.Chrome) -> WebElement | None:
        element = d.find_element(by, selector)
        return element if element.is_displayed() else None

    return wait_until(driver, visible, timeout, f"no visible element {by}={selector!r}")


def wait_for_text(
    driver: webdriver.Chrome, by: str, selector: str, text: str, timeout: float = 10
) -> WebElement:
    """The element once its text contains ``text``."""
    seen: list[str] = []

    def showing(d: webdriver.Chrome) -> WebElement | None:
        element = d.find_element(by, selector)
        seen[:] = [element.text]
        return element if text in seen[0] else None

    try:
        return wait_until(driver, showing, timeout, f"{by}={selector!r} did not show {text!r}")
    except TimeoutException as error:
        raise TimeoutException(f"{error.msg} (now: {seen!r})") from error


def set_viewport(driver: webdriver.Chrome, size: tuple[int, int]) -> None:
    """Resize the window so that the page viewport is exactly ``size`` CSS pixels.

    Headless Chromium's window includes ~140 px of (invisible) browser UI, so a window of
    ``size`` would give a shorter viewport and screenshot.
    """
    width, height = size
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [innerWidth, innerHeight]")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])
    WebDriverWait(driver, 5).until(
        lambda d: d.execute_script("return [innerWidth, innerHeight]") == [width, height]
    )


def screenshot(driver: HeadlessChromium, name: str, *, size: tuple[int, int] | None = None) -> Path:
    """Save ``<screenshot_dir>/<name>.png`` (the viewport) and return its path.

    ``size`` (CSS pixels, e.g. ``MOBILE`` or ``DESKTOP``) sets the viewport first; it stays
    so. The page's CSS media queries see the new width.
    """
    if size is not None:
        set_viewport(driver, size)
    path = driver.screenshot_dir / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"Chromium could not save screenshot {path}")
    return path


def net_log_destinations(path: Path) -> dict[str, list[str]]:
    """Where a Chromium net-log (``extra_args=["--log-net-log=PATH"]``) shows the browser
    going: ``urls`` it requested, ``tcp`` and ``udp`` addresses its sockets connected to.

    Read it after ``headless_chromium`` has exited (Chromium completes the log on shutdown;
    a truncated one is read as far as it goes). Chromium's IPv6 reachability probe shows
    up in ``udp`` as ``[2001:4860:4860::8888]:443``: a UDP connect() sends no packet.
    """
    text = path.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    constants = log["constants"]
    events = {number: name for name, number in constants["logEventTypes"].items()}
    sources = {number: name for name, number in constants["logSourceType"].items()}
    found: dict[str, set[str]] = {"urls": set(), "tcp": set(), "udp": set()}
    for event in log.get("events", []):
        params = event.get("params") or {}
        name = events.get(event["type"], "")
        if name == "URL_REQUEST_START_JOB" and "url" in params:
            found["urls"].add(params["url"])
        elif name.endswith(("CONNECT", "CONNECT_ATTEMPT")) and "address" in params:
            udp = sources.get(event["source"]["type"], "").startswith("UDP")
            found["udp" if udp else "tcp"].add(params["address"])
    return {key: sorted(values) for key, values in found.items()}


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def runner_main(function: Callable[[list[str]], Any], argv: list[str] | None = None) -> None:
    """Entry point of a browser runner module: ``function(args)`` → one JSON line on stdout.

    SIGTERM and SIGINT become ``SystemExit`` so that ``headless_chromium`` cleans up.
    Exits 0 on success, 1 on failure (the JSON line says why).
    """
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    args = sys.argv[1:] if argv is None else argv
    try:
        result = function(args)
    except Exception as error:
        line = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        line["traceback"] = traceback.format_exc()
        print(json.dumps(line), flush=True)
        sys.exit(1)
    print(json.dumps({"ok": True, "result": result}), flush=True)


def run_in_host(
    host: Host,
    module: str,
    *args: str,
    timeout: float = 180,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Run ``python -m <module> ARGS`` in ``host``'s namespace; return its JSON result.

    Like ``Host.run``, but on a timeout the runner gets SIGTERM (and 10 s to close its
    browser and remove its profile) before SIGKILL; ``Host.run`` would SIGKILL it at once.
    """
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")])
    )
    command = host.command([sys.executable, "-m", module, *args])
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                stdout, stderr = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            raise AssertionError(
                f"[{host.name}] python -m {module} timed out after {timeout}s\n"
                f"stdout: {stdout}\nstderr: {stderr}"
            ) from None
    lines = stdout.strip().splitlines()
    try:
        line = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        line = None
    if process.returncode != 0 or not isinstance(line, dict) or not line.get("ok"):
        detail = line.get("traceback", "") if isinstance(line, dict) else ""
        raise AssertionError(
            f"[{host.name}] python -m {module} exited {process.returncode}\n{detail}\n"
            f"stdout: {stdout}\nstderr: {stderr}"
        )
    return line["result"]
