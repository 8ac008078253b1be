"""State directories for the real command-line tools against a test pool on loopback.

``hub_state_dir`` writes what ``hivemind-hub web`` / ``nodes`` and ``hivemind-pool
--identity`` read from a hub's state directory (``hub.toml``, the Redis password, the hub's
client certificate and the CA), pointing at a ``WebCluster``'s Redis and pool;
``node_state_dir`` writes an operator's or worker's (``agent.json``, its certificate).
``web_process`` runs the real ``hivemind-hub web`` (waitress, as ``up`` starts it) on one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hivemind_cluster.client.channel import Identity
from hivemind_cluster.core import names
from hivemind_cluster.core.settings import HubSettings, dump
from tests.support.poolkit import LOOPBACK
from tests.support.scratch import free_port
from tests.support.webkit import WebCluster


def hub_state_dir(world: WebCluster, directory: Path, web_port: int = 0) -> HubSettings:
    """A hub state directory whose Redis and pool are ``world``'s (the web on ``web_port``)."""
    directory.mkdir(parents=True, exist_ok=True)
    server = world.cluster.redis_server
    settings = dataclasses.replace(
        world.cluster.settings,
        state_dir=str(directory),
        redis_port=server.port,
        pool_port=world.cluster.port,
        web_port=web_port or free_port(),
    )
    (directory / names.HUB_CONFIG).write_text(dump(settings))
    (directory / names.REDIS_PASSWORD).write_text(server.password + "\n")
    identity = world.hub_identity()
    write_certificates(identity, directory, names.HUB_CLIENT_CERT, names.HUB_CLIENT_KEY)
    return settings


def node_state_dir(identity: Identity, directory: Path) -> Path:
    """An agent state directory holding ``identity`` (enough for ``hivemind-pool``)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {"node_id": identity.node_id, "pool_address": identity.pool_address}
    (directory / names.STATE_FILE).write_text(json.dumps(state))
    write_certificates(identity, directory, names.NODE_CERT, names.TLS_KEY)
    return directory


def write_certificates(identity: Identity, directory: Path, cert: str, key: str) -> None:
    (directory / cert).write_bytes(identity.cert_pem)
    (directory / key).write_bytes(identity.key_pem)
    (directory / key).chmod(0o600)
    (directory / names.CA_CERT).write_bytes(identity.ca_pem)


@contextmanager
def web_process(settings: HubSettings, timeout: float = 30) -> Iterator[str]:
    """``hivemind-hub web --state-dir …`` in a process of its own until the block ends; its
    URL. Its output goes to ``web.log`` in the state directory."""
    log = open(settings.path / names.WEB_LOG, "ab")  # noqa: SIM115 (closed below)
    command = [sys.executable, "-m", "hivemind_cluster.hub.cli", "web"]
    process = subprocess.Popen(
        [*command, "--state-dir", settings.state_dir],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + timeout
        while not answers(settings.web_port):
            assert process.poll() is None, (settings.path / names.WEB_LOG).read_text()
            assert time.monotonic() < deadline, "hivemind-hub web did not answer"
            time.sleep(0.05)
        yield f"http://{LOOPBACK}:{settings.web_port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False
