"""Fixtures every test directory shares (a real redis-server and clients of it), the rule
that tests using them are marked ``privileged``, and the CI rule that nothing may be skipped.

The helpers behind the fixtures live in ``tests.support``: nothing imports this file.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import redis

from hivemind_cluster.hub.redis_server import RedisServer
from tests.support.prerequisites import IN_CI, REPO, require_redis_server
from tests.support.scratch import connect_with_every_library, scratch_redis

# Fixtures that start a real server: a test that uses one, directly or through another
# fixture, needs the ``privileged`` marker (``pytest -m "not privileged"`` runs without).
PRIVILEGED_FIXTURES = frozenset({"redis_server", "client"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if PRIVILEGED_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("privileged") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start a real server but are not marked privileged:\n  "
            + "\n  ".join(unmarked)
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"
    return report


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis_server()
    with scratch_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of an emptied Redis with every function library loaded (FLUSHALL keeps
    the libraries)."""
    connection = connect_with_every_library(redis_server)
    connection.flushall()
    yield connection
    connection.close()


@pytest.fixture
def repo_root() -> Path:
    return REPO
