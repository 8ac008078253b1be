"""The browser half of tests/e2e/test_web_mesh.py: run inside the operator's namespace.

``python -m tests.e2e.web_browser URL SHOTS USERNAME PASSWORD`` drives headless Chromium
through the web UI over the overlay: register, log out, log in, submit a task through the
form, watch it finish on its page without reloading, open /mesh and wait for both workers
online — with screenshots (desktop and phone) in SHOTS. ``python -m tests.e2e.web_browser
upload URL SHOTS USERNAME PASSWORD BUNDLE OTHER`` submits the zip BUNDLE through the form,
its script uploading it in slices, and OTHER in its stead midway (``browse_upload``). Each
prints one JSON line (see tests/support/browser.py ``runner_main``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from hivemind_cluster.web.constants import SLICE_BYTES
from tests.support.browser import (
    MOBILE,
    HeadlessChromium,
    headless_chromium,
    runner_main,
    screenshot,
    wait_for,
    wait_for_text,
    wait_until,
)

# Long enough to be seen running on the page, however slowly the page first loads.
COMMAND = "sh -c 'echo from the browser; sleep 15; echo bye > /out/bye.txt'"


def fill(driver: HeadlessChromium, form: str, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = driver.find_element(By.CSS_SELECTOR, f"{form} [name={name}]")
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)


def register_and_log_in(driver: HeadlessChromium, url: str, user: str, password: str) -> None:
    driver.get(f"{url}/register")
    fill(driver, "#register-form", {"username": user, "password": password, "confirm": password})
    screenshot(driver, "01-register")
    driver.find_element(By.ID, "register-submit").click()
    wait_for_text(driver, By.TAG_NAME, "h1", f"Hello, {user}")
    driver.find_element(By.ID, "logout").click()
    wait_for(driver, By.ID, "login-form")
    fill(driver, "#login-form", {"username": user, "password": password})
    driver.find_element(By.ID, "login-submit").click()
    wait_for_text(driver, By.ID, "balance", "150 CPT")
    screenshot(driver, "02-dashboard")


def read_now(driver: HeadlessChromium, element_id: str, what: str) -> Any:
    """``document.getElementById(element_id).<what>`` in one script: live.js replaces the
    status panel every 2 s, so an element found first can be gone when it is read."""
    return driver.execute_script(f"return document.getElementById('{element_id}').{what};")


def watch_until_succeeded(driver: HeadlessChromium, timeout: float) -> tuple[str, list[str]]:
    """On the page a submission led to: its task id and the statuses it showed, once it
    shows "succeeded" (a failure ends the wait). ``window.hivemindNoReload`` is set first:
    a marker that a reload would wipe, so the caller can tell the status changed under it."""
    wait_for(driver, By.ID, "task-status")
    task_id = driver.current_url.rstrip("/").rsplit("/", 1)[1]
    driver.execute_script("window.hivemindNoReload = true;")
    seen = [read_now(driver, "task-status", "dataset.status")]
    deadline = time.monotonic() + timeout
    while seen[-1] != "succeeded":
        assert time.monotonic() < deadline, f"task {task_id} stayed {seen}"
        assert seen[-1] not in ("failed", "cancelled", "timed_out"), seen
        time.sleep(0.25)
        current = read_now(driver, "task-status", "dataset.status")
        if current != seen[-1]:
            seen.append(current)
    return task_id, seen


def submit_and_watch(driver: HeadlessChromium, timeout: float = 90) -> dict[str, Any]:
    driver.find_element(By.ID, "nav-submit").click()
    wait_for(driver, By.ID, "submit-form")
    before = driver.find_element(By.ID, "price-cap").text
    fill(
        driver,
        "#submit-form",
        {
            "image": "hivemind/busybox:latest",
            "command": COMMAND,
            "cpu": "1",
            "memory": "64M",
            "timeout": "60",
        },
    )

    # The price cap follows the fields as they are typed (the page's script asks the API).
    def new_price_cap(d: HeadlessChromium) -> str | None:
        text: str = d.find_element(By.ID, "price-cap").text
        return text if text not in ("", before) else None

    price_cap = wait_until(driver, new_price_cap, 10, "the price cap did not follow the fields")
    screenshot(driver, "03-submit-form")
    driver.find_element(By.ID, "submit-task").click()
    task_id, seen = watch_until_succeeded(driver, timeout)
    wait_for_text(driver, By.ID, "logs", "from the browser", timeout=20)
    wait_for(driver, By.ID, "result-link", timeout=20)
    no_reload = driver.execute_script("return window.hivemindNoReload === true;")
    screenshot(driver, "04-task-succeeded")
    return {
        "task_id": task_id,
        "price_cap": price_cap,
        "statuses": seen,
        "node": read_now(driver, "task-node", "innerText"),
        "logs": read_now(driver, "logs", "innerText"),
        "updated_without_reload": no_reload,
    }


def mesh_page(driver: HeadlessChromium, timeout: float = 30) -> dict[str, Any]:
    driver.find_element(By.ID, "nav-mesh").click()
    wait_for(driver, By.ID, "mesh-nodes")

    def online_workers(nodes: list[dict[str, Any]]) -> list[str]:
        return [n["name"] for n in nodes if n["role"] == "worker" and n["online"]]

    wait_until(
        driver,
        lambda d: len(online_workers(mesh_rows(d))) >= 2,
        timeout,
        "fewer than 2 workers online on /mesh",
    )
    screenshot(driver, "05-mesh")
    nodes = mesh_rows(driver)
    totals = read_now(driver, "mesh-totals", "innerText")
    return {"online_workers": sorted(online_workers(nodes)), "nodes": nodes, "totals": totals}


def mesh_rows(driver: HeadlessChromium) -> list[dict[str, Any]]:
    """The node rows, read in one script (the table is replaced every 2 s)."""
    rows: list[dict[str, Any]] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#mesh-nodes tr.node')).map((r) => ({"
        "name: r.dataset.name, role: r.dataset.role, online: r.dataset.online === 'true',"
        "text: r.innerText}));"
    )
    return rows


def browse(args: list[str]) -> dict[str, Any]:
    url, shots, user, password = args
    with headless_chromium(Path(shots), timeout=30) as driver:
        register_and_log_in(driver, url, user, password)
        task = submit_and_watch(driver)
        mesh = mesh_page(driver)
    with headless_chromium(Path(shots), mobile=True, timeout=30) as phone:
        register_and_log_in(phone, url, user + "m", password)
        phone.get(f"{url}/mesh")
        wait_for(phone, By.ID, "mesh-nodes")
        screenshot(phone, "06-mesh-phone", size=MOBILE)
        widest = phone.execute_script("return document.documentElement.scrollWidth;")
    return {"task": task, "mesh": mesh, "phone_page_width": widest}


# Installed on the submit page before a file is chosen: every call of its script to the
# uploads API (method, path, Upload-Offset, the body's bytes, a fault, whether the script
# has read the answer) goes into window.hivemindUploadCalls. Faults (``arguments[0]``) are
# blips the script must recover from: ``lose_reply_at``: the PATCH at that offset reaches
# the hub, its answer is lost; ``failing_gets``: that many GETs fail before they leave the
# browser; ``hold_at``: the PATCH at that offset waits for window.hivemindRelease().
RECORD_UPLOAD_CALLS = """
const faults = {lose_reply_at: null, failing_gets: 0, hold_at: null, ...arguments[0]};
const blip = () => new TypeError('Failed to fetch (a blip made by the test)');
const released = new Promise((release) => { window.hivemindRelease = release; });
window.hivemindUploadCalls = [];
const original = window.fetch;
window.fetch = async (resource, options = {}) => {
  const url = new URL(String(resource), location.href);
  if (!url.pathname.startsWith('/api/v1/uploads')) return original(resource, options);
  const headers = options.headers || {};
  const call = {
    method: options.method || 'GET', path: url.pathname,
    offset: headers['Upload-Offset'] ?? null,
    bytes: options.body instanceof Blob ? options.body.size : null, fault: null, read: false,
  };
  window.hivemindUploadCalls.push(call);
  if (call.method === 'GET' && faults.failing_gets > 0) {
    faults.failing_gets -= 1;
    call.fault = 'failed';
    throw blip();
  }
  if (call.method === 'PATCH' && call.offset === faults.hold_at) {
    faults.hold_at = null;
    call.fault = 'held';
    await released;
  }
  const reply = await original(resource, options);
  if (call.method === 'PATCH' && call.offset === faults.lose_reply_at) {
    faults.lose_reply_at = null;
    await reply.arrayBuffer();
    call.fault = 'reply lost';
    throw blip();
  }
  // Marked before the script's own continuation runs (both are microtasks): once a call is
  // read, the script's next call, if any, is in the list too.
  const json = reply.json.bind(reply);
  reply.json = async () => { try { return await json(); } finally { call.read = true; } };
  return reply;
};
"""
# The bundle field's progress bar, digest and status line, read at once.
READ_BUNDLE_FIELD = """
const bar = document.getElementById('bundle-progress');
const status = document.getElementById('bundle-status');
return {value: bar.value, max: bar.max, hidden: bar.hidden,
        digest: document.getElementById('bundle-digest').value,
        status: status.innerText, failed: status.classList.contains('error-text')};
"""
UPLOAD_CALLS = "return window.hivemindUploadCalls;"
# A bundle task: its fields besides the bundle (no image, no command: the bundle's main.py
# runs in the Python image).
BUNDLE_TASK = {"cpu": "1", "memory": "256M", "timeout": "120"}


def open_submit_form(driver: HeadlessChromium, faults: dict[str, Any]) -> None:
    """The submit form with BUNDLE_TASK filled in and its calls recorded (with ``faults``)."""
    driver.find_element(By.ID, "nav-submit").click()
    wait_for(driver, By.ID, "submit-form")
    fill(driver, "#submit-form", BUNDLE_TASK)
    driver.execute_script(RECORD_UPLOAD_CALLS, faults)


def wait_on_the_hub(driver: HeadlessChromium, timeout: float) -> dict[str, Any]:
    """Once the script has put the chosen file on the hub: the digest it put in the form and
    the progress bar's (value, max) as seen while polling."""
    progress: list[list[float]] = []

    def on_the_hub(d: HeadlessChromium) -> str | None:
        field: dict[str, Any] = d.execute_script(READ_BUNDLE_FIELD)
        assert not field["failed"], field["status"]
        if not field["hidden"] and (not progress or progress[-1] != [field["value"], field["max"]]):
            progress.append([field["value"], field["max"]])
        digest: str = field["digest"]
        return digest if digest and digest in field["status"] else None

    digest = wait_until(driver, on_the_hub, timeout, "the bundle did not reach the hub")
    return {"digest": digest, "progress": progress}


def upload_calls(driver: HeadlessChromium) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = driver.execute_script(UPLOAD_CALLS)
    return calls


def submit_and_wait_for_logs(driver: HeadlessChromium, timeout: float) -> dict[str, Any]:
    """Submit the form; on the task's page, wait until it succeeded and its logs ended."""
    driver.find_element(By.ID, "submit-task").click()
    task_id, seen = watch_until_succeeded(driver, timeout)
    wait_until(
        driver,
        lambda d: read_now(d, "logs", "dataset.done") == "true",
        20,
        f"the logs of task {task_id} did not end",
    )
    return {"task_id": task_id, "statuses": seen, "logs": read_now(driver, "logs", "innerText")}


def submit_bundle_and_watch(
    driver: HeadlessChromium,
    bundle: str,
    shot: str,
    faults: dict[str, Any] | None = None,
    timeout: float = 120,
) -> dict[str, Any]:
    """Upload ``bundle`` (a path) with the submit form (despite ``faults``), submit it and
    watch the task succeed; the upload's calls, digest and progress, and the task's run."""
    open_submit_form(driver, faults or {})
    driver.find_element(By.ID, "bundle-file").send_keys(bundle)
    uploaded = wait_on_the_hub(driver, timeout)
    screenshot(driver, shot)
    calls = upload_calls(driver)
    return {**uploaded, "calls": calls, **submit_and_wait_for_logs(driver, timeout)}


def change_the_bundle_midway(
    driver: HeadlessChromium, first: str, second: str, timeout: float = 120
) -> dict[str, Any]:
    """Choose ``first``, and while its second slice is held in the browser, ``second``; once
    that is on the hub, let the held slice go, wait until the script has read its answer,
    and submit. The calls made, what the form held, and the task's run."""
    open_submit_form(driver, {"hold_at": str(SLICE_BYTES)})
    field = driver.find_element(By.ID, "bundle-file")
    field.send_keys(first)

    def held(d: HeadlessChromium) -> list[dict[str, Any]]:
        return [call for call in upload_calls(d) if call["fault"] == "held"]

    wait_until(driver, held, timeout, "no slice was held")
    field.send_keys(second)
    uploaded = wait_on_the_hub(driver, timeout)
    driver.execute_script("window.hivemindRelease();")
    wait_until(driver, lambda d: held(d)[0]["read"], timeout, "the held slice got no answer")
    form = driver.execute_script(READ_BUNDLE_FIELD)
    screenshot(driver, "10-bundle-changed-midway")
    calls = upload_calls(driver)
    return {**uploaded, "calls": calls, "form": form, **submit_and_wait_for_logs(driver, timeout)}


def storage(driver: HeadlessChromium) -> dict[str, Any]:
    """GET /api/v1/storage as the page's session (what the user's blobs take)."""
    found: dict[str, Any] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/v1/storage', {credentials: 'same-origin'}).then((r) => r.json()).then(done);"
    )
    return found


def browse_upload(args: list[str]) -> dict[str, Any]:
    """Register, log in, submit ``bundle`` through the form twice (the second time the hub
    holds it already; the first with blips: the answer to its second slice is lost, and so
    is the first question where the hub got to), read the storage the user's blobs take,
    then change the form's bundle from ``fresh`` (one never sent) to ``other`` midway
    through its upload."""
    url, shots, user, password, bundle, other, fresh = args
    blips = {"lose_reply_at": str(SLICE_BYTES), "failing_gets": 1}
    with headless_chromium(Path(shots), timeout=30) as driver:
        register_and_log_in(driver, url, user, password)
        first = submit_bundle_and_watch(driver, bundle, "07-bundle-uploaded", blips)
        screenshot(driver, "08-bundle-task-succeeded")
        again = submit_bundle_and_watch(driver, bundle, "09-bundle-chosen-again")
        used = storage(driver)
        changed = change_the_bundle_midway(driver, fresh, other)
    return {"first": first, "again": again, "storage": used, "changed": changed}


# ``python -m tests.e2e.web_browser [upload] ARGS…``: ``browse``, or ``browse_upload``.
RUNNERS = {"upload": browse_upload}

if __name__ == "__main__":
    named = RUNNERS.get(sys.argv[1]) if len(sys.argv) > 1 else None
    runner_main(named or browse, sys.argv[2:] if named else sys.argv[1:])
