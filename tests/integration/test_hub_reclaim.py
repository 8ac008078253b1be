"""``up`` after a dead hub (hub/reclaim.py): it stops exactly the processes the dead hub
recorded and can be proven to have started, nothing else; a live hub is never reclaimed."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivemind_cluster.core.errors import AlreadyExists
from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub.processes import ProcessIdentity, current_boot, executable
from hivemind_cluster.hub.reclaim import claim, network_namespace

SLEEP = shutil.which("sleep") or "sleep"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def sleeper(started: list[subprocess.Popen[bytes]]) -> ProcessIdentity:
    process = subprocess.Popen([SLEEP, "60"])
    started.append(process)
    identity = ProcessIdentity.of(process.pid, executable("sleep"))
    assert identity is not None and identity.is_running()
    return identity


def leave_record(state: Path, **fields: object) -> None:
    dead_hub = {"pid": 999_999, "started": 1, "exe": "python", "boot": current_boot()}
    record = {"hub": dead_hub, "boot": current_boot(), "netns": network_namespace(), **fields}
    (state / "up.json").write_text(json.dumps(record))
    (state / "run.json").write_text(json.dumps({"pid": 999_999}))


def test_only_the_recorded_process_with_its_start_time_is_stopped(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    left = sleeper(sleepers)
    stranger = sleeper(sleepers)
    # The stranger got a pid the dead hub once recorded, but it started at another time.
    recycled = ProcessIdentity(stranger.pid, stranger.started - 1, stranger.exe, stranger.boot)
    leave_record(tmp_path, redis=left.as_json(), web=recycled.as_json())
    record = claim(HubSettings(state_dir=str(tmp_path)), "our public key")
    try:
        assert not left.is_running() and sleepers[0].wait(timeout=5) != 0
        assert stranger.is_running() and sleepers[1].poll() is None
        assert not (tmp_path / "run.json").exists()  # the dead hub's, gone
        written = json.loads((tmp_path / "up.json").read_text())
        assert set(written) == {"hub", "boot", "netns"}  # this hub's, nothing yet
    finally:
        record.close()
    assert not (tmp_path / "up.json").exists()


def test_a_process_with_another_executable_is_not_stopped(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    found = sleeper(sleepers)
    other = ProcessIdentity(found.pid, found.started, executable("redis-server"), found.boot)
    leave_record(tmp_path, redis=other.as_json())
    claim(HubSettings(state_dir=str(tmp_path)), "our public key").close()
    assert found.is_running()


def test_a_second_up_is_refused_while_the_first_holds_the_state_directory(
    tmp_path: Path,
) -> None:
    settings = HubSettings(state_dir=str(tmp_path))
    first = claim(settings, "our public key")
    try:
        with pytest.raises(AlreadyExists) as refused:
            claim(settings, "our public key")
        pid = json.loads((tmp_path / "up.json").read_text())["hub"]["pid"]
        assert refused.value.message.startswith(
            f"a hub is already running from {tmp_path} (pid {pid})"
        )
    finally:
        first.close()
    claim(settings, "our public key").close()  # free again once the first has stopped
