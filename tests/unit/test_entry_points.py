"""Each console script loads only what its side of the architecture needs.

Every script's module is imported in a fresh interpreter, and what ended up in
``sys.modules`` is checked: the laptop's ``hivemind`` and ``hivemind-pool`` carry no
server (no pool, mesh, web or hub module, no Flask, Redis, Docker or password hashing);
the agent no pool server, web or hub; the hub CLI no Flask (only ``hivemind-hub web``
loads it, when it serves).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_LIBRARIES = {"flask", "flask_wtf", "werkzeug", "waitress", "redis", "argon2", "docker"}
SERVER_PACKAGES = {"pool", "mesh", "web", "hub", "agent"}
# script -> (top-level libraries it must not load, hivemind_cluster packages it must not load)
FORBIDDEN: dict[str, tuple[set[str], set[str]]] = {
    "hivemind": (SERVER_LIBRARIES | {"cryptography"}, SERVER_PACKAGES),
    "hivemind-pool": (SERVER_LIBRARIES, SERVER_PACKAGES),
    "hivemind-agent": (
        {"flask", "flask_wtf", "werkzeug", "waitress", "argon2"},
        {"pool", "web", "hub"},
    ),
    "hivemind-hub": ({"flask", "flask_wtf", "werkzeug", "waitress", "argon2"}, {"web", "agent"}),
}


def console_scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts: dict[str, str] = project["scripts"]
    return {name: target.partition(":")[0] for name, target in scripts.items()}


def loaded_modules(module: str) -> list[str]:
    code = (
        "import importlib, json, sys; "
        f"importlib.import_module({module!r}); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    modules: list[str] = json.loads(result.stdout)
    return modules


def test_every_console_script_is_checked() -> None:
    assert set(console_scripts()) == set(FORBIDDEN)


@pytest.mark.parametrize("script", sorted(FORBIDDEN))
def test_console_script_loads_only_its_side(script: str) -> None:
    module = console_scripts()[script]
    modules = loaded_modules(module)
    assert module in modules  # the import really happened
    libraries, packages = FORBIDDEN[script]
    top_level = {name.split(".")[0] for name in modules}
    assert sorted(top_level & libraries) == []
    ours = {name.split(".")[1] for name in modules if name.startswith("hivemind_cluster.")}
    assert sorted(ours & packages) == []
