"""Shared fixtures: a real redis-server, and the CI rule that nothing may be skipped."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import socket
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.mesh import store

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    """Skip when a privileged prerequisite is missing; with CI=true, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a privileged prerequisite is missing: {reason}")
    pytest.skip(reason)


def require_root_network() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces, WireGuard)")
    for tool in ("ip", "wg", "wireguard-go", "redis-server", "nft", "ping"):
        require(shutil.which(tool) is not None, f"{tool} is not installed (make setup)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"


def zip_of(files: Mapping[str, str | bytes]) -> bytes:
    """A zip archive of ``name -> content``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def scratch_redis(directory: Path) -> Iterator[RedisServer]:
    """A started redis-server of its own (data in ``directory``, a free port on 127.0.0.1, a
    random password), stopped on the way out."""
    server = RedisServer(directory, "127.0.0.1", free_port(), secrets.token_hex(16))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    with scratch_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = store.connect(redis_server.bind, redis_server.port, redis_server.password)
    connection.flushall()
    store.load_libraries(connection)
    yield connection
    connection.close()


@pytest.fixture
def repo_root() -> Path:
    return REPO
