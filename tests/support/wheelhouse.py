"""The project's wheelhouse (``scripts/wheelhouse.sh``), built once per test session.

It lands where ``make wheelhouse`` puts it, ``build/wheelhouse``: the Ansible roles' default
install source and what ``hivemind-hub installer`` packs. HiveMind's own wheel is rebuilt
from this tree; the dependencies' wheels are reused from an earlier build.
"""

from __future__ import annotations

import fcntl
import subprocess
from functools import cache
from pathlib import Path

from tests.support.prerequisites import REPO

WHEELHOUSE = REPO / "build" / "wheelhouse"


@cache
def build_wheelhouse() -> Path:
    """Build it (once per session; one session at a time, by a lock beside it)."""
    WHEELHOUSE.parent.mkdir(parents=True, exist_ok=True)
    with open(WHEELHOUSE.parent / "wheelhouse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build()


def build() -> Path:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "wheelhouse.sh"), str(WHEELHOUSE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if result.returncode != 0:
        raise AssertionError(f"scripts/wheelhouse.sh failed:\n{result.stdout}\n{result.stderr}")
    return WHEELHOUSE
