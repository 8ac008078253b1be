"""Every subcommand of hivemind-hub, hivemind-pool and hivemind runs its own handler.

The parsers name the handler of each command (``set_defaults``); these tests walk each
parser's whole tree, so a command added without a handler, or with another command's
(a destructive one: revoke, cancel), fails here rather than in front of a user.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from hivemind_cluster.client import cli as hivemind
from hivemind_cluster.client import poolcli
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.hub import auditcli, installercli, policycli
from hivemind_cluster.hub import cli as hub

Path = tuple[str, ...]


def handlers_by_name(module: ModuleType, *commands: str) -> dict[Path, Callable[..., int]]:
    """Each command (its words, space-separated) with the function of ``module`` named
    after its words, ``cmd_<words>``: the naming every HiveMind CLI keeps."""
    return {
        tuple(words.split()): getattr(module, f"cmd_{words.replace(' ', '_')}")
        for words in commands
    }


HUB_COMMANDS = (
    handlers_by_name(
        hub,
        "init",
        "up",
        "web",
        "token create",
        "token list",
        "token revoke",
        "nodes",
        "node revoke",
        "ledger audit",
        "ledger history",
        "account list",
        "account create",
    )
    | handlers_by_name(policycli, "policy show", "policy check")
    | handlers_by_name(auditcli, "audit")
    | handlers_by_name(installercli, "installer")
)
TASK_COMMANDS = handlers_by_name(
    poolcli,
    "submit",
    "status",
    "cancel",
    "wait",
    "logs",
    "result",
    "list",
    "nodes",
    "balance",
    "history",
    "tip",
    "rates",
)
LOGIN_COMMANDS: dict[Path, Callable[..., int]] = {
    ("register",): hivemind.cmd_login,  # registers first when args.command says so
    ("login",): hivemind.cmd_login,
    ("logout",): hivemind.cmd_logout,
}


def leaves(parser: argparse.ArgumentParser, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(the words of each runnable command, its parser), depth first."""
    choices = [
        action.choices
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    if not choices:
        yield path, parser
        return
    for subcommands in choices:
        for name, child in subcommands.items():
            yield from leaves(child, (*path, name))


def filler(parser: argparse.ArgumentParser) -> list[str]:
    """Values for a command's required arguments, enough for it to parse."""
    words: list[str] = []
    for action in parser._actions:
        if not action.option_strings:
            words += [] if action.nargs == argparse.REMAINDER else ["x"]
        elif action.required:
            words += [action.option_strings[0], "x"]
    for group in parser._mutually_exclusive_groups:  # one of them required: the first
        if group.required:
            words += [group._group_actions[0].option_strings[0], "x"]
    return words


def handlers(parser: argparse.ArgumentParser, *keys: str) -> dict[Path, dict[str, Any]]:
    """Each command's dispatch attributes (of ``keys``) once its words are parsed."""
    found = {}
    for path, leaf in leaves(parser):
        args = parser.parse_args([*path, *filler(leaf)])
        assert args.command == path[0]
        found[path] = {key: getattr(args, key, None) for key in keys}
    return found


def test_every_hub_command_runs_its_own_handler() -> None:
    found = handlers(hub.build_parser(), "handler")
    assert {path: names["handler"] for path, names in found.items()} == HUB_COMMANDS
    assert len(set(HUB_COMMANDS.values())) == len(HUB_COMMANDS)


def test_every_pool_command_runs_its_own_handler() -> None:
    found = handlers(poolcli.build_pool_parser(), "task_command")
    assert {path: names["task_command"] for path, names in found.items()} == TASK_COMMANDS
    assert len(set(TASK_COMMANDS.values())) == len(TASK_COMMANDS)


def test_every_hivemind_command_runs_its_own_handler() -> None:
    found = handlers(hivemind.build_hivemind_parser(), "task_command", "login_command")
    expected = {
        **{
            path: {"task_command": run, "login_command": None}
            for path, run in TASK_COMMANDS.items()
        },
        **{
            path: {"task_command": None, "login_command": run}
            for path, run in LOGIN_COMMANDS.items()
        },
    }
    assert found == expected


def test_a_hub_command_without_a_handler_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = hub.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.add_parser("forgotten")
    monkeypatch.setattr(hub, "build_parser", lambda: parser)
    with pytest.raises(SystemExit) as exited:
        hub.main(["forgotten"])
    assert exited.value.code == 2 and "forgotten: this command has no handler" in (
        capsys.readouterr().err
    )


def test_a_task_command_without_a_handler_is_refused() -> None:
    class NoClient:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the client was asked for {name}")

    with pytest.raises(InvalidInput, match="'forgotten' is not a task command"):
        poolcli.run_command(argparse.Namespace(command="forgotten", json=False), NoClient())
