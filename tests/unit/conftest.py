"""Fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where ``hivemind`` keeps its login (``HIVEMIND_CONFIG``): a file not yet written."""
    path = tmp_path / "hivemind.json"
    monkeypatch.setenv("HIVEMIND_CONFIG", str(path))
    return path
