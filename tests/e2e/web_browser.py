"""The browser half of tests/e2e/test_web_mesh.py: run inside the operator's namespace.

``python -m tests.e2e.web_browser URL SHOTS USERNAME PASSWORD`` drives headless Chromium
through the web UI over the overlay: register, log out, log in, submit a task through the
form, watch it finish on its page without reloading, open /mesh and wait for both workers
online — with screenshots (desktop and phone) in SHOTS. Prints one JSON line (see
tests/support/browser.py ``runner_main``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

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
    wait_for(driver, By.ID, "task-status")
    task_id = driver.current_url.rstrip("/").rsplit("/", 1)[1]
    # A marker that a reload would wipe: the status must change under it.
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


if __name__ == "__main__":
    runner_main(browse, sys.argv[1:])
