"""The task commands of ``hivemind`` and ``hivemind-pool``: one parser, one dispatch.

Both tools run the same commands (submit, status, wait, logs, result, cancel, list, nodes,
balance, history, tip, rates) over a ``TaskClient`` and print the same ``client/views.py``
dicts: ``hivemind`` (client/cli.py) over the web API with an account, and ``hivemind-pool``,
defined here, over gRPC with this machine's node certificate (``--identity DIR``: an agent or
hub state directory; default ``$HIVEMIND_IDENTITY``, then /var/lib/hivemind-agent, then
/var/lib/hivemind-hub), for the hub's administrator and operator nodes without an account.
Every command takes ``--json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hivemind_cluster.client.channel import Identity, sync_channel
from hivemind_cluster.client.grpcclient import GrpcTaskClient
from hivemind_cluster.client.inputs import Uploaded, send_data
from hivemind_cluster.client.progress import Bars
from hivemind_cluster.client.results import fetch_result
from hivemind_cluster.client.taskclient import TaskClient
from hivemind_cluster.client.views import (
    ENTRY_COLUMNS,
    NODE_COLUMNS,
    TASK_COLUMNS,
    View,
    amount_text,
    describe_task,
    entry_rows,
    node_rows,
    rate_card_of,
    rates_text,
    task_rows,
)
from hivemind_cluster.core.console import (
    print_json,
    print_table,
    program,
    raw_stream,
    run_main,
)
from hivemind_cluster.core.errors import HiveMindError, InvalidInput
from hivemind_cluster.core.units import format_bytes, parse_cpt
from hivemind_cluster.model.bundles import is_bundle_path
from hivemind_cluster.model.states import ALL_STATES, FINAL_STATES, MAX_ROWS, TaskState

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
POLL_SECONDS = 0.25


def limit(text: str) -> int:
    """``--limit``: how many rows, 1 to MAX_ROWS (the pool's bound)."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ROWS:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_ROWS}")
    return int(text)


def seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError("a number of seconds, 0 or more")
    return value


TaskCommand = Callable[[argparse.Namespace, TaskClient], int]


def build_parser(
    prog: str, description: str, common: argparse.ArgumentParser, other_accounts: bool
) -> tuple[argparse.ArgumentParser, Subcommands]:
    """The task commands; ``common`` holds each tool's own options (how to reach the pool).

    ``other_accounts`` adds ``--account`` to balance and history (the hub may look at any).
    Returns the parser and its subcommands, to which a tool may add its own. Each task
    command names its handler (``task_command``), which ``run_command`` calls.
    """
    parser = program(prog, description)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_submit(sub, prog, common)
    add_task_commands(sub, common)
    add_ledger_commands(sub, prog, common, other_accounts)
    return parser, sub


def task_command(
    sub: Subcommands, name: str, run: TaskCommand, common: argparse.ArgumentParser, text: str
) -> argparse.ArgumentParser:
    """A subcommand that runs ``run`` over the tool's ``TaskClient``, and nothing else."""
    parser = sub.add_parser(name, parents=[common], help=text)
    parser.set_defaults(task_command=run)
    return parser


def add_submit(sub: Subcommands, prog: str, common: argparse.ArgumentParser) -> None:
    text = f"submit a task: {prog} submit [OPTIONS] -- CMD…, or {prog} submit [OPTIONS] job.zip"
    p = task_command(sub, "submit", cmd_submit, common, text)
    p.add_argument("--image", default="", help="Docker image (default: Python, for main.py)")
    p.add_argument("--cpu", default="", help="CPUs: 1, 0.5, 500m (default: the hub's, 1)")
    p.add_argument("--memory", default="", help="memory: 512M, 2G (default: the hub's, 512M)")
    p.add_argument(
        "--disk", default="", help="disk for /work, /out and /tmp: 2G (default: the hub's, 1G)"
    )
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--timeout", type=int, default=0, help="seconds (default: the hub's)")
    p.add_argument("--bundle", help="a directory or .zip, unpacked into the writable /work")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a file or directory, read-only at /work/inputs/NAME (default: its name)",
    )
    p.add_argument(
        "--input-url",
        action="append",
        default=[],
        metavar="[NAME=]URL#sha256=HEX",
        help="a file the worker downloads (if the hub allows its URL), checked by its digest",
    )
    p.add_argument("--priority", type=int, default=0, help="0-9, higher runs first")
    p.add_argument("--max-attempts", type=int, default=0)
    p.add_argument("--network", action="store_true", help="ask for network access")
    p.add_argument("--name", default="")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-cost", default="", help="CPT held in escrow (default: rate card)")
    p.add_argument("--wait", action="store_true", help="wait for the task to end")
    p.add_argument(
        "cmd", nargs=argparse.REMAINDER, help="-- then the command; or the bundle's path alone"
    )


def add_task_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    task_command(sub, "status", cmd_status, common, "show a task").add_argument("id")
    task_command(sub, "cancel", cmd_cancel, common, "cancel a task").add_argument("id")
    text = "wait for a task; non-zero unless it succeeded"
    p = task_command(sub, "wait", cmd_wait, common, text)
    p.add_argument("id")
    p.add_argument(
        "--timeout", type=seconds, default=0, help="give up after this many seconds (0: never)"
    )
    p = task_command(sub, "logs", cmd_logs, common, "a task's output")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until it ends")
    p = task_command(sub, "result", cmd_result, common, "download a task's /out files")
    p.add_argument("id")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", help="directory to unpack into")
    where.add_argument("--zip", help="keep the zip itself, as this new file")
    p = task_command(sub, "list", cmd_list, common, "recent tasks")
    p.add_argument("--status", action="append", default=[], choices=ALL_STATES)
    p.add_argument("--limit", type=limit, default=20, help=f"1-{MAX_ROWS}")
    task_command(sub, "nodes", cmd_nodes, common, "the pool's nodes with live state")


def add_ledger_commands(
    sub: Subcommands, prog: str, common: argparse.ArgumentParser, other_accounts: bool
) -> None:
    p = task_command(sub, "balance", cmd_balance, common, "your CPT balance")
    account_option(p, other_accounts)
    p = task_command(sub, "history", cmd_history, common, "your ledger movements")
    account_option(p, other_accounts)
    p.add_argument("--limit", type=limit, default=50, help=f"1-{MAX_ROWS}")
    text = f"tip a project: {prog} tip PROJECT 2.5"
    p = task_command(sub, "tip", cmd_tip, common, text)
    p.add_argument("project")
    p.add_argument("amount", help="CPT, up to 6 decimals")
    task_command(sub, "rates", cmd_rates, common, "the rate card")


def account_option(parser: argparse.ArgumentParser, offered: bool) -> None:
    if offered:
        parser.add_argument("--account", default="", help="another account (the hub only)")
    else:
        parser.set_defaults(account="")


def submit_body(args: argparse.Namespace) -> View:
    """The JSON of ``POST /api/v1/tasks`` from ``submit``'s options (defaults left out),
    but its data (``bundle``, ``inputs``: ``submit_data`` uploads them)."""
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"--env {item!r} is not KEY=VALUE")
        env[key] = value
    body: View = {
        "image": args.image,
        "env": env,
        "cpu": args.cpu,
        "memory": args.memory,
        "disk": args.disk,
        "gpus": args.gpus,
        "timeout": args.timeout,
        "priority": args.priority,
        "max_attempts": args.max_attempts,
        "network": args.network,
        "name": args.name,
        "max_cost": args.max_cost,
    }
    body["command"] = bundle_and_command(args)[1]
    return {key: value for key, value in body.items() if value or key == "command"}


def submit_data(
    args: argparse.Namespace, client: TaskClient, bars: Bars
) -> tuple[View, list[Uploaded]]:
    """The body's ``bundle`` and ``inputs``, uploaded (what the hub lacks), and what was
    sent; every option is checked before anything is."""
    return send_data(client, bundle_and_command(args)[0], args.input, args.input_url, bars)


def bundle_and_command(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``--bundle`` and the command after ``--``. A bundle's path as the only argument
    (``submit job.zip``, as the original CLI takes it) is ``--bundle job.zip``: a directory
    or a .zip file is never a command anyway, and a missing .zip is a typo to report."""
    bundle: str = args.bundle or ""
    if args.cmd[:1] == ["--"]:
        return bundle, args.cmd[1:]
    if not bundle and len(args.cmd) == 1:
        path = Path(args.cmd[0])
        if is_bundle_path(path) or (path.suffix.lower() == ".zip" and not path.exists()):
            return args.cmd[0], []
    return bundle, args.cmd


def wait_for(client: TaskClient, task_id: str, timeout: float, progress: bool) -> View:
    """Poll until the task ends; with ``progress``, a line on stderr at each change."""
    started = time.monotonic()
    last = ""
    while True:
        task = client.get(task_id)
        if progress and task["status"] != last:
            where = f" on {task['node']}" if task["node"] else ""
            print(
                f"[{time.monotonic() - started:6.1f}s] {task['id']} {task['status']}"
                f" (attempt {task['attempt']}){where}",
                file=sys.stderr,
            )
            last = task["status"]
        if task["status"] in FINAL_STATES:
            return task
        if timeout and time.monotonic() - started > timeout:
            raise HiveMindError(f"task {task_id} is still {task['status']} after {timeout:g}s")
        time.sleep(POLL_SECONDS)


def show(args: argparse.Namespace, task: View, client: TaskClient) -> int:
    """Print a task (a settled one with its cost breakdown at the published rates); the
    exit status of ``wait``: 0 only if it succeeded."""
    if args.json:
        print_json(task)
    else:
        print(describe_task(task, rate_card_of(client.rates()) if task["settled"] else None))
    return 0 if task["status"] == TaskState.SUCCEEDED else 1


def cmd_submit(args: argparse.Namespace, client: TaskClient) -> int:
    progress = shows_progress(args)
    body = submit_body(args)
    data, uploaded = submit_data(args, client, Bars(progress))
    if not args.json:
        for done in uploaded:
            if not done.sent_bytes:
                what = f"input {done.name}" if done.name else "bundle"
                size = format_bytes(done.size)
                print(f"{what}: already on the hub ({size}), nothing sent", file=sys.stderr)
    task = client.submit(body | data)
    sent = {"uploads": [done.as_json() for done in uploaded]}
    if not args.wait:
        print_json(task | sent) if args.json else print(task["id"])
        return 0
    if progress:
        print(f"submitted {task['id']}", file=sys.stderr)
    return show(args, wait_for(client, task["id"], 0, progress) | sent, client)


def cmd_logs(args: argparse.Namespace, client: TaskClient) -> int:
    """The task's output exactly as it wrote it (like ``docker logs``: its escape codes
    too); the pool's own lines about it are escaped like everything else."""
    for entry in client.logs(args.id, args.follow):
        if args.json:
            print_json(entry)
        elif entry["stream"] == "system":
            print(f"--- {entry['data']}", file=sys.stderr, flush=True)
        else:
            out = raw_stream(sys.stderr if entry["stream"] == "stderr" else sys.stdout)
            out.write(entry["data"])
            out.flush()
    return 0


def cmd_result(args: argparse.Namespace, client: TaskClient) -> int:
    kept = Path(args.zip) if args.zip else None
    target = kept.parent if kept is not None else Path(args.output)
    names = fetch_result(client, args.id, target, kept, Bars(shows_progress(args)))
    shown = {"zip": str(kept)} if kept is not None else {"directory": str(target)}
    if args.json:
        print_json({"id": args.id, **shown, "files": names})
    else:
        where = kept if kept is not None else target
        print(f"{len(names)} files from {args.id} in {where}" if names else "no output files")
    return 0


def shows_progress(args: argparse.Namespace) -> bool:
    """Progress lines on stderr only for a person at a terminal, never with ``--json``."""
    return sys.stderr.isatty() and not args.json


def print_rows(
    args: argparse.Namespace, views: list[View], rows: list[View], columns: list[str]
) -> int:
    print_json(views) if args.json else print_table(rows, columns)
    return 0


def print_found(args: argparse.Namespace, found: View, text: str) -> int:
    print_json(found) if args.json else print(text)
    return 0


def cmd_status(args: argparse.Namespace, client: TaskClient) -> int:
    show(args, client.get(args.id), client)
    return 0


def cmd_cancel(args: argparse.Namespace, client: TaskClient) -> int:
    show(args, client.cancel(args.id), client)
    return 0


def cmd_wait(args: argparse.Namespace, client: TaskClient) -> int:
    return show(args, wait_for(client, args.id, args.timeout, shows_progress(args)), client)


def cmd_list(args: argparse.Namespace, client: TaskClient) -> int:
    tasks = client.tasks(args.status, args.limit)
    return print_rows(args, tasks, task_rows(tasks), TASK_COLUMNS)


def cmd_nodes(args: argparse.Namespace, client: TaskClient) -> int:
    nodes = client.nodes()
    return print_rows(args, nodes, node_rows(nodes), NODE_COLUMNS)


def cmd_history(args: argparse.Namespace, client: TaskClient) -> int:
    entries = client.history(args.account, args.limit)
    return print_rows(args, entries, entry_rows(entries), ENTRY_COLUMNS)


def cmd_balance(args: argparse.Namespace, client: TaskClient) -> int:
    found = client.balance(args.account)
    return print_found(args, found, f"{amount_text(found['balance_micro'])} ({found['account']})")


def cmd_tip(args: argparse.Namespace, client: TaskClient) -> int:
    found = client.tip(args.project, parse_cpt(args.amount))
    return print_found(args, found, f"tipped {amount_text(found['amount_micro'])} to {found['to']}")


def cmd_rates(args: argparse.Namespace, client: TaskClient) -> int:
    found = client.rates()
    return print_found(args, found, rates_text(found))


def run_command(args: argparse.Namespace, client: TaskClient) -> int:
    """Run the task command ``args`` names (its parser's handler) and print its result.

    Only that handler: a command without one is refused, never run as another.
    """
    run: TaskCommand | None = getattr(args, "task_command", None)
    if run is None:
        raise InvalidInput(f"{args.command!r} is not a task command")
    return run(args, client)


def build_pool_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--identity", help="agent or hub state directory holding the certificate")
    parser, _ = build_parser(
        "hivemind-pool", "Run tasks on a HiveMind pool (node certificate).", common, True
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_pool_parser().parse_args(argv)
    identity = Identity.load(args.identity)
    with sync_channel(identity) as channel:
        return run_command(args, GrpcTaskClient(channel))


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(entry())
