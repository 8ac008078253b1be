"""The agent's status page with an attempt the pool superseded (issue 13, point 9b): the
row says ``superseded``, flagged like a failure, and earns nothing even when the task was
paid for (to another attempt: the payment is keyed by task)."""

from __future__ import annotations

import collections
from dataclasses import replace

from hivemind_cluster.agent.attempts import SUPERSEDED, FinishedAttempt, restated
from hivemind_cluster.agent.statushtml import render_html
from hivemind_cluster.agent.statuspage import status_json
from tests.unit.test_agent_status import NOW, SNAPSHOT, STATUS

RECENT = (
    FinishedAttempt("t-done", 3, "succeeded", 0, NOW - 5),
    FinishedAttempt("t-done", 2, SUPERSEDED, 0, NOW - 20),
)


def test_a_superseded_attempt_is_listed_as_such_and_earns_nothing() -> None:
    status = replace(STATUS, worker=replace(SNAPSHOT, recent=RECENT))
    recent = status_json(status)["tasks"]["recent"]
    assert [(t["attempt"], t["status"], t["earned_micro"]) for t in recent] == [
        (3, "succeeded", 1_000),
        (2, "superseded", None),
    ]
    page = render_html(status_json(status))
    assert '<span class="bad">superseded</span>' in page
    assert '<span class="ok">succeeded</span>' in page


def test_restating_changes_only_that_attempt() -> None:
    recent = collections.deque(
        [FinishedAttempt("t-done", 3, "succeeded", 0, NOW), *RECENT[1:]], maxlen=20
    )
    restated(recent, ("t-done", 3), SUPERSEDED)
    restated(recent, ("t-gone", 1), SUPERSEDED)  # no longer listed: nothing happens
    assert [(f.attempt, f.status) for f in recent] == [(3, SUPERSEDED), (2, SUPERSEDED)]
