"""The agent's status page from a fixed snapshot: the JSON document, the HTML (hostile task
ids and images stay text), an unavailable ledger, a node without a worker, and the HTTP
server's paths, headers and Host check."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from hivemind_cluster.agent.attempts import AttemptView, FinishedAttempt, WorkerSnapshot
from hivemind_cluster.agent.statushtml import render_html
from hivemind_cluster.agent.statuspage import (
    LedgerView,
    Overlay,
    Status,
    status_json,
)
from hivemind_cluster.agent.statusserver import StatusServer, host_allowed
from tests.support.enrollments import lab_enrollment

NOW = 1_700_000_000.0
EVIL_ID = '"><script>alert(1)</script>'
EVIL_IMAGE = "<img src=x onerror=alert(2)>&amp;"
EVIL_ERROR = "pool said <b>no</b>"
ENROLLMENT = lab_enrollment(name="lab<pc>&1", hub_public_key="k", enrolled_at=NOW - 3600)
SNAPSHOT = WorkerSnapshot(
    connected=True,
    since=NOW - 300,
    last_received=NOW - 2,
    last_sent=NOW - 1,
    draining=False,
    completed=2,
    running=(AttemptView(EVIL_ID, 1, EVIL_IMAGE, NOW - 10),),
    recent=(
        FinishedAttempt("t-done", 2, "succeeded", 0, NOW - 20),
        FinishedAttempt("t-failed", 1, "failed", 3, NOW - 60),
    ),
)
LEDGER = LedgerView(
    available=True,
    fetched_at=NOW - 1,
    account="n7",
    kind="worker",
    balance=150_001_234,
    earned=9_001_234,  # the ledger's sum, older payments included
    payments={"t-done": 1_000, "t-old": 234},
)
STATUS = Status(
    generated_at=NOW,
    enrollment=ENROLLMENT,
    overlay=Overlay("hm0", True, "198.51.100.1:51820", NOW - 30, 2048, 5 << 20),
    worker=SNAPSHOT,
    ledger=LEDGER,
)


class PageText(HTMLParser):
    """The tags of a page and its text, as a browser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> PageText:
    parser = PageText()
    parser.feed(page)
    parser.close()
    return parser


def test_the_document_has_identity_overlay_stream_tasks_and_earnings() -> None:
    doc = status_json(STATUS)
    assert doc["node"] == {
        "id": "n7",
        "name": "lab<pc>&1",
        "role": "worker",
        "overlay_ip": "100.64.0.7",
    }
    assert doc["overlay"]["up"] and doc["overlay"]["last_handshake"] == NOW - 30
    assert doc["overlay"]["rx_bytes"] == 2048 and doc["overlay"]["tx_bytes"] == 5 << 20
    assert doc["hub"]["connected"] is True and doc["hub"]["since"] == NOW - 300
    assert doc["hub"]["pool_address"] == "100.64.0.1:50051"
    assert doc["tasks"]["running"] == [
        {"task_id": EVIL_ID, "attempt": 1, "image": EVIL_IMAGE, "started_at": NOW - 10}
    ]
    recent = {t["task_id"]: t for t in doc["tasks"]["recent"]}
    assert [t["task_id"] for t in doc["tasks"]["recent"]] == ["t-done", "t-failed"]
    assert recent["t-done"]["earned_micro"] == 1_000 and recent["t-done"]["earned_cpt"] == "0.001"
    assert recent["t-failed"]["earned_micro"] is None and recent["t-failed"]["exit_code"] == 3
    ledger = doc["ledger"]
    assert ledger["balance_micro"] == 150_001_234 and ledger["balance_cpt"] == "150.001234"
    assert ledger["earned_micro"] == 9_001_234 and ledger["earned_cpt"] == "9.001234"
    json.dumps(doc)  # plain JSON all the way down


def test_the_page_escapes_everything_and_runs_no_script() -> None:
    page = render_html(status_json(STATUS))
    assert EVIL_ID not in page and EVIL_IMAGE not in page and "lab<pc>" not in page
    parsed = parse(page)
    assert not parsed.tags & {"script", "img", "iframe", "b"}, parsed.tags
    assert not [name for name, _ in parsed.attributes if name.startswith("on")]
    text = "".join(parsed.text)
    # What the browser shows is the value itself, as text.
    assert EVIL_ID in text and EVIL_IMAGE in text and "lab<pc>&1" in text
    assert 'http-equiv="refresh"' in page and 'name="viewport"' in page
    assert "150.001234 CPT" in text and "9.001234 CPT" in text
    assert "connected" in text and "succeeded" in text and "2 KiB" in text


def test_an_unavailable_ledger_is_shown_as_such() -> None:
    status = replace(STATUS, ledger=LedgerView(available=False, error=EVIL_ERROR))
    doc = status_json(status)
    assert doc["ledger"]["available"] is False and doc["ledger"]["balance_micro"] is None
    assert doc["tasks"]["recent"][0]["earned_micro"] is None
    page = render_html(doc)
    text = "".join(parse(page).text)
    assert "unavailable" in text and EVIL_ERROR in text and "<b>" not in page


def test_a_node_without_worker_has_no_stream_and_no_tasks() -> None:
    status = replace(
        STATUS,
        enrollment=replace(ENROLLMENT, role="operator"),
        worker=None,
        overlay=Overlay("hm0", False, "", None, 0, 0),
    )
    doc = status_json(status)
    assert doc["hub"]["connected"] is None and doc["tasks"]["running"] == []
    text = "".join(parse(render_html(doc)).text)
    assert "DOWN" in text and "never" in text and "runs no tasks" in text


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("", True),
        ("127.0.0.1:5000", True),
        ("127.0.0.1", True),
        ("localhost:5000", True),
        ("LOCALHOST", True),
        ("[::1]:5000", True),
        ("100.64.0.7:5000", True),
        ("evil.example:5000", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io:5000", False),
    ],
)
def test_only_ip_literals_and_localhost_may_be_the_host(host: str, allowed: bool) -> None:
    assert host_allowed(host) is allowed


class FixedPage:
    def __init__(self, status: Status) -> None:
        self.value = status
        self.failing = False
        self.closed = False

    def status(self) -> Status:
        if self.failing:
            raise RuntimeError("the collector failed")
        return self.value

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def served() -> Iterator[tuple[StatusServer, FixedPage]]:
    page = FixedPage(STATUS)
    server = StatusServer(page, "127.0.0.1", 0).start()
    try:
        yield server, page
    finally:
        server.stop()


Answer = tuple[int, dict[str, str], bytes]


def get(url: str, host: str | None = None, method: str = "GET") -> Answer:
    request = urllib.request.Request(url, method=method)
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def test_the_server_serves_both_forms_with_safe_headers(
    served: tuple[StatusServer, FixedPage],
) -> None:
    server, page = served
    assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}/"
    code, headers, body = get(server.url + "status.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == status_json(STATUS)
    code, headers, body = get(server.url)
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body.decode() == render_html(status_json(STATUS))
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"
    code, headers, body = get(server.url, method="HEAD")
    assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert get(server.url + "nothing")[0] == 404
    assert get(server.url + "status.json", host="rebound.example:5000")[0] == 421
    assert get(server.url, method="POST")[0] == 501
    server.stop()
    assert page.closed


def test_a_failing_collector_costs_one_page(served: tuple[StatusServer, FixedPage]) -> None:
    server, page = served
    page.failing = True
    assert get(server.url + "status.json")[0] == 500
    page.failing = False
    assert get(server.url + "status.json")[0] == 200
