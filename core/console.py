"""What every HiveMind command-line tool shares: errors as one line, ``--json``, tables."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hivemind_cluster import __version__
from hivemind_cluster.core.errors import HiveMindError


def run_main(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run a CLI entry point: a HiveMindError becomes ``error: …`` and exit status 1."""
    try:
        return main(list(sys.argv[1:] if argv is None else argv))
    except HiveMindError as exc:
        print(f"error: {one_line(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`… | head`): quietly, like SIGPIPE
        # Python would fail again flushing stdout at exit: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def program(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's top-level parser (with ``--version``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def options(state_dir: str = "", what: str = "", as_json: bool = True) -> argparse.ArgumentParser:
    """Options every subcommand of a tool shares, as a parent parser: ``--state-dir`` (the
    ``what`` state directory, default ``state_dir``) and ``--json``."""
    parent = argparse.ArgumentParser(add_help=False)
    if state_dir:
        parent.add_argument(
            "--state-dir", default=state_dir, help=f"{what} state directory (default {state_dir})"
        )
    if as_json:
        parent.add_argument("--json", action="store_true", help="machine-readable output")
    return parent


def run_handler(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Parse ``argv`` and run the one handler its subcommand names (``set_defaults(
    handler=...)``). A subcommand without one is refused: nothing is ever guessed, so a
    forgotten branch can never fall through to a destructive command."""
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"{args.command}: this command has no handler")
    return handler(args)


def one_line(text: str) -> str:
    """Text from elsewhere (a server's message) made safe for a terminal: one line, no
    control characters (no escape sequences)."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    text = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in text:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def age(seconds_ago: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``never``."""
    if seconds_ago is None:
        return "never"
    s = max(int(seconds_ago), 0)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"
