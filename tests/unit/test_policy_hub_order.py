"""When the hub's policy table comes and goes (hub/serve.py ``bring_up_overlay``): its
removal runs after the WireGuard interface is gone, so a stopping hub never forwards a
member's packet unfiltered; and it is noted in up.json first, for the crash reclaim.

The system calls are replaced at serve's boundary (interface, sysctl, nft tables) by
recorders of what happened in which order."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.core.settings import HubSettings
from hivemind_cluster.hub import serve
from hivemind_cluster.mesh import guard, policyrules, relaycount


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.notes: dict[str, Any] = {}

    def note(self, **fields: Any) -> None:  # UpRecord.note
        self.notes.update(fields)
        self.events.append("note " + ",".join(sorted(fields)))


class FakeInterface:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def exists(self) -> bool:
        return False

    def up(self, *args: object, **kwargs: object) -> None:
        self.recorder.events.append("interface up")

    def down(self) -> None:
        self.recorder.events.append("interface down")


class FakeBackend:
    name = "kernel"


def test_the_policy_table_goes_after_the_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    events = recorder.events
    monkeypatch.setattr(serve, "select_backend", lambda name: FakeBackend())
    monkeypatch.setattr(serve, "WireGuardInterface", lambda name: FakeInterface(recorder))
    monkeypatch.setattr(serve, "userspace_pid", lambda name: None)
    monkeypatch.setattr(serve, "read_sysctl", lambda key: "0")
    monkeypatch.setattr(serve, "write_sysctl", lambda key, value: events.append(f"{key}={value}"))
    monkeypatch.setattr(relaycount, "install", lambda *a: events.append("relay install"))
    monkeypatch.setattr(relaycount, "remove", lambda *a: events.append("relay remove"))
    monkeypatch.setattr(guard, "install", lambda *a: events.append("guard install"))
    monkeypatch.setattr(guard, "remove", lambda *a: events.append("guard remove"))
    monkeypatch.setattr(policyrules, "remove", lambda *a: events.append("policy remove"))
    settings = HubSettings(state_dir=str(tmp_path))
    files: Any = type("Files", (), {"wg_private_key": "key"})()
    record: Any = recorder  # an UpRecord as far as bring_up_overlay is concerned

    async def up_and_down() -> None:
        async with contextlib.AsyncExitStack() as undo:
            serve.bring_up_overlay(settings, files, "auto", record, undo)
            events.append("running")

    asyncio.run(up_and_down())
    assert recorder.notes["policy_table"] is True
    assert events.index("note policy_table") < events.index("running")
    stopping = events[events.index("running") :]
    assert stopping.index("interface down") < stopping.index("policy remove")
    assert stopping.index("net.ipv4.ip_forward=0") < stopping.index("policy remove")
    assert stopping[-1] == "policy remove"
