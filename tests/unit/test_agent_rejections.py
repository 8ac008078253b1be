"""What an agent does with the pool's refusals (issue 13, points 1 and 9b): a superseded
attempt is dropped and shown as such; a message the pool could not take just now (its
database not answering) is kept and sent again on a new stream, never dropped."""

from __future__ import annotations

import pytest

from hivemind_cluster.agent.attempts import FinishedAttempt
from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.worker import ResendLater, Worker
from hivemind_cluster.client.channel import Identity
from hivemind_cluster.core.errors import HiveMindError, InvalidInput, StaleAttempt, Unavailable
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.pool.messages import rejected_message
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.poolkit import GiB, ScriptedExecutor

KEY = ("t000000000001", 1)
CHUNK = pb.AgentMessage(log=pb.LogChunk(task_id=KEY[0], attempt=KEY[1], data=b"x", offset=0))


def test_a_refusal_says_whether_the_attempt_is_gone_or_to_be_sent_again() -> None:
    flags = {
        name: (answer.task_id, answer.attempt, answer.superseded, answer.retry)
        for name, refusal in (
            ("stale", StaleAttempt("attempt 1 on w1 is no longer current")),
            ("down", Unavailable("the database is not answering")),
            ("malformed", InvalidInput("log stream must be stdout, stderr or system")),
        )
        for answer in [rejected_message(CHUNK, refusal).rejected]
    }
    assert flags == {
        "stale": (*KEY, True, False),
        "down": (*KEY, False, True),
        "malformed": (*KEY, False, False),
    }


def a_worker_with_an_unacknowledged_result() -> Worker:
    identity = Identity("w1", b"", b"", b"", "127.0.0.1:1")
    worker = Worker(identity, ScriptedExecutor(), Facts(Resources(1000, GiB, 0)))
    worker.unacknowledged[KEY] = pb.TaskResult(task_id=KEY[0], attempt=KEY[1])
    worker.recent.appendleft(FinishedAttempt(*KEY, "succeeded", 0, 0.0))
    return worker


def test_what_the_pool_could_not_take_now_is_kept_for_a_new_stream() -> None:
    worker = a_worker_with_an_unacknowledged_result()
    with pytest.raises(ResendLater, match="database is not answering"):
        worker._dispatch(rejected_message(CHUNK, Unavailable("the database is not answering")))
    assert KEY in worker.unacknowledged and worker.recent[0].status == "succeeded"


@pytest.mark.parametrize(
    ("refusal", "shown"),
    [(StaleAttempt("no longer current"), "superseded"), (InvalidInput("bad"), "refused")],
)
def test_a_refused_attempt_is_dropped_and_shown_so(refusal: HiveMindError, shown: str) -> None:
    worker = a_worker_with_an_unacknowledged_result()
    worker._dispatch(rejected_message(CHUNK, refusal))
    assert KEY not in worker.unacknowledged and worker.recent[0].status == shown
