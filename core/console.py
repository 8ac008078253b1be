"""What every HiveMind command-line tool shares: errors as one line, ``--json``, tables, and
no control character from elsewhere ever reaching the terminal (``printable``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO, cast

from hivemind_cluster import __version__
from hivemind_cluster.core.errors import HiveMindError


def run_main(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run a CLI entry point: a HiveMindError becomes ``error: …`` and exit status 1.

    Everything it prints passes through ``TerminalGuard``: a command, a node's name or a
    server's message can never send an escape sequence to the user's terminal.
    """
    with guarded_output():
        return _run(main, argv)


def _run(main: Callable[[list[str]], int], argv: Sequence[str] | None) -> int:
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


def printable(text: str, newlines: bool = True) -> str:
    """Untrusted text as a terminal may show it: every control character (ESC, CR, BEL,
    C1, bidi overrides, …) written out as ``\\x1b``-style escapes, so nothing in it can move
    the cursor, rewrite a line or retitle the window; newlines kept unless ``newlines`` is
    false (a table cell or a one-line field). JSON output needs none of this: ``json.dumps``
    escapes control characters itself."""
    if (text.replace("\n", "") if newlines else text).isprintable():
        return text  # the usual case, at C speed
    return "".join(
        c if c.isprintable() or (newlines and c == "\n") else _escape(ord(c)) for c in text
    )


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class TerminalGuard:
    """A text stream that writes ``printable`` text to the stream it wraps (the rest of
    that stream — ``fileno``, ``isatty``, ``buffer`` — is the wrapped one's)."""

    def __init__(self, stream: TextIO) -> None:
        self.raw = stream

    def write(self, text: str) -> int:
        self.raw.write(printable(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def raw_stream(stream: TextIO) -> TextIO:
    """The stream under a ``TerminalGuard``: for a task's own output, shown as it is
    (like ``docker logs``)."""
    return stream.raw if isinstance(stream, TerminalGuard) else stream


def _guarded(stream: TextIO) -> TextIO:
    if stream is None or isinstance(stream, TerminalGuard):  # no console (pythonw), or nested
        return stream
    return cast(TextIO, TerminalGuard(stream))


@contextlib.contextmanager
def guarded_output() -> Iterator[None]:
    """stdout and stderr through a ``TerminalGuard`` while the block runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _guarded(sys.stdout), _guarded(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


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
    text = [
        [("" if row.get(c) is None else printable(str(row.get(c)), False)) for c in columns]
        for row in rows
    ]
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
