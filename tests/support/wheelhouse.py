"""The project's wheelhouse (``scripts/wheelhouse.sh``), built once per test session.

It lands where ``make wheelhouse`` puts it, ``build/wheelhouse``: the Ansible roles' default
install source and what ``hivemind-hub installer`` packs. HiveMind's own wheel is rebuilt
from this tree; the dependencies' wheels are reused from an earlier build.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from tests.support.prerequisites import REPO

WHEELHOUSE = REPO / "build" / "wheelhouse"


@cache
def build_wheelhouse() -> Path:
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
