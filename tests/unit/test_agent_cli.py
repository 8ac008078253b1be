"""``hivemind-agent`` dispatch: every subcommand reaches its own handler and nothing else.

``leave`` deregisters the node and deletes its state, so no command, mistyped, missing or
added without a handler, may end up there.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from hivemind_cluster.agent import cli

HANDLERS = {
    "join": "cmd_join",
    "run": "cmd_run",
    "status": "cmd_status",
    "leave": "cmd_leave",
    "images": "cmd_images",
}
# The fewest arguments each subcommand accepts.
ARGV = {"join": ["join", "a-token"]}


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action


@pytest.fixture
def called(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every handler replaced by one that records its subcommand (nothing real runs)."""
    calls: list[str] = []
    for command, handler in HANDLERS.items():

        def record(args: argparse.Namespace, command: str = command) -> int:
            calls.append(command)
            return 0

        monkeypatch.setattr(cli, handler, record)
    return calls


def test_every_subcommand_names_a_handler_of_its_own() -> None:
    handlers = {
        command: parser.get_default("handler")
        for command, parser in subcommands(cli.build_parser()).choices.items()
    }
    assert handlers == {command: getattr(cli, name) for command, name in HANDLERS.items()}
    assert len(set(handlers.values())) == len(handlers)


@pytest.mark.parametrize("command", sorted(HANDLERS))
def test_main_runs_the_chosen_handler_only(command: str, called: list[str]) -> None:
    assert cli.main(ARGV.get(command, [command])) == 0
    assert called == [command]


@pytest.mark.parametrize("argv", [[], ["lave"], ["--json"]], ids=["none", "unknown", "no-command"])
def test_a_missing_or_unknown_command_is_an_error(argv: list[str], called: list[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    assert called == []


def test_a_subcommand_without_a_handler_is_an_error(
    monkeypatch: pytest.MonkeyPatch, called: list[str]
) -> None:
    build_parser = cli.build_parser

    def with_a_forgotten_command() -> argparse.ArgumentParser:
        parser = build_parser()
        subcommands(parser).add_parser("forgotten")
        return parser

    monkeypatch.setattr(cli, "build_parser", with_a_forgotten_command)
    with pytest.raises(SystemExit) as exit:
        cli.main(["forgotten"])
    assert exit.value.code == 2
    assert called == []
