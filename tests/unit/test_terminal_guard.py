"""``printable`` and the guard ``run_main`` puts on stdout and stderr of every CLI."""

from __future__ import annotations

import sys

import pytest

from hivemind_cluster.core.console import print_json, print_table, printable, raw_stream, run_main
from hivemind_cluster.core.errors import InvalidInput

HOSTILE = "\x1b]0;owned\x07\x1b[2K\rfake\x9b31m\u202eevil\x00"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain é 日本 🙂", "plain é 日本 🙂"),
        ("two\nlines", "two\nlines"),
        ("\x1b[2K\r\t", "\\x1b[2K\\x0d\\x09"),
        ("\x9b31m\u202e\ud800\U000e0001", "\\x9b31m\\u202e\\ud800\\U000e0001"),
    ],
)
def test_control_characters_are_written_out(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable("cell\n", newlines=False) == "cell\\x0a"


def test_everything_a_cli_prints_is_guarded_but_json_and_raw_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def main(argv: list[str]) -> int:
        print(f"title {HOSTILE}")
        print_table([{"name": HOSTILE + "\nforged"}], ["name"])
        print_json({"name": HOSTILE})
        raw_stream(sys.stdout).write(HOSTILE + "\n")  # a task's log, as it wrote it
        print(HOSTILE, file=sys.stderr)
        return 0

    assert run_main(main, []) == 0
    out, err = capsys.readouterr()
    guarded, _, raw = out.rpartition(HOSTILE)
    assert raw == "\n" and "\\x1b]0;owned\\x07" in guarded and "\\x0aforged" in guarded
    assert all(c == "\n" or c.isprintable() for c in guarded + err)
    assert '"name": "\\u001b]0;owned\\u0007' in guarded  # JSON's own escapes, unchanged
    assert sys.stdout is not None and "TerminalGuard" not in type(sys.stdout).__name__


def test_an_error_message_from_a_server_is_one_clean_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def main(argv: list[str]) -> int:
        raise InvalidInput(f"bad {HOSTILE}\nsecond line")

    assert run_main(main, []) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: bad ") and err.count("\n") == 1
    assert all(c == "\n" or c.isprintable() for c in err)
