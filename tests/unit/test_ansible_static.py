"""The playbook and roles are clean for ansible-lint (production profile) and parse."""

from __future__ import annotations

import subprocess

from tests.support.lab import tool
from tests.support.prerequisites import REPO


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False, timeout=300)


def test_ansible_lint_is_clean() -> None:
    result = run(tool("ansible-lint"), "--offline", "ansible")
    assert result.returncode == 0, result.stdout + result.stderr


def test_playbook_syntax() -> None:
    result = run(
        tool("ansible-playbook"),
        "--syntax-check",
        "-i",
        "ansible/inventory.example.ini",
        "ansible/site.yml",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_default_is_commented() -> None:
    found = sorted(REPO.glob("ansible/roles/*/defaults/main.yml"))
    assert found, f"no ansible/roles/*/defaults/main.yml under {REPO}"
    for defaults in found:
        lines = defaults.read_text().splitlines()
        settings = [
            number
            for number, line in enumerate(lines)
            if line and not line.startswith((" ", "#", "-", "---"))
        ]
        assert settings, f"{defaults} sets no variable"
        for number in settings:
            assert lines[number - 1].startswith(("#", "  ")), f"{defaults}:{number + 1}"
