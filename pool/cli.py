"""``hivemind-pool``: the pool's own client, over gRPC with a node certificate.

Users run ``hivemind`` (web/cli.py), which speaks the web API with an account. This tool
is for the hub's administrator and for operator nodes without an account.

It speaks the pool's gRPC API over the overlay with this machine's node certificate
(``--identity DIR``: an agent or hub state directory; default ``$HIVEMIND_IDENTITY``, then
/var/lib/hivemind-agent, then /var/lib/hivemind-hub). Every command takes ``--json``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from hivemind_cluster import __version__
from hivemind_cluster.mesh.console import print_json, print_table, run_main
from hivemind_cluster.mesh.errors import HiveMindError, InvalidInput
from hivemind_cluster.mesh.grpcutil import error_from_rpc
from hivemind_cluster.pool.bundles import bundle_from_path, check_bundle, unpack_bundle
from hivemind_cluster.pool.client import Identity, sync_channel
from hivemind_cluster.pool.constants import ALL_STATES, FINAL_STATES, SUCCEEDED
from hivemind_cluster.pool.ledger import parse_cpt
from hivemind_cluster.pool.resources import parse_cpus, parse_size
from hivemind_cluster.pool.views import (
    ENTRY_COLUMNS,
    NODE_COLUMNS,
    TASK_COLUMNS,
    amount_text,
    balance_view,
    describe_task,
    entry_rows,
    entry_view,
    node_rows,
    node_view,
    rates_text,
    rates_view,
    task_rows,
    task_view,
)
from hivemind_cluster.protos import pool_pb2 as pb
from hivemind_cluster.protos import pool_pb2_grpc as pb_grpc

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind-pool", description="Run tasks on a HiveMind pool (node certificate)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--identity", help="agent or hub state directory holding the certificate")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", parents=[common], help="submit a task: hivemind submit -- CMD…")
    p.add_argument("--image", default="", help="Docker image (default: Python, for main.py)")
    p.add_argument("--cpu", default="", help="CPUs: 1, 0.5, 500m (default: the hub's, 1)")
    p.add_argument("--memory", default="", help="memory: 512M, 2G (default: the hub's, 512M)")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--timeout", type=int, default=0, help="seconds (default: the hub's)")
    p.add_argument("--bundle", help="a directory or .zip mounted read-only at /work")
    p.add_argument("--priority", type=int, default=0, help="0-9, higher runs first")
    p.add_argument("--max-attempts", type=int, default=0)
    p.add_argument("--network", action="store_true", help="ask for network access")
    p.add_argument("--name", default="")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-cost", default="", help="CPT held in escrow (default: rate card)")
    p.add_argument("--wait", action="store_true", help="wait for the task to end")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")

    for name, text in (("status", "show a task"), ("cancel", "cancel a task")):
        sub.add_parser(name, parents=[common], help=text).add_argument("id")
    p = sub.add_parser(
        "wait", parents=[common], help="wait for a task; non-zero unless it succeeded"
    )
    p.add_argument("id")
    p.add_argument("--timeout", type=float, default=0, help="give up after this many seconds")
    p = sub.add_parser("logs", parents=[common], help="a task's output")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until it ends")
    p = sub.add_parser("result", parents=[common], help="download a task's /out files")
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True, help="directory to unpack into")
    p = sub.add_parser("list", parents=[common], help="recent tasks")
    p.add_argument("--status", action="append", default=[], choices=ALL_STATES)
    p.add_argument("--limit", type=int, default=20)
    sub.add_parser("nodes", parents=[common], help="the pool's nodes with live state")
    p = sub.add_parser("balance", parents=[common], help="your CPT balance")
    p.add_argument("--account", default="", help="another account (the hub only)")
    p = sub.add_parser("history", parents=[common], help="your ledger movements")
    p.add_argument("--account", default="", help="another account (the hub only)")
    p.add_argument("--limit", type=int, default=50)
    p = sub.add_parser("tip", parents=[common], help="tip a project: hivemind tip PROJECT 2.5")
    p.add_argument("project")
    p.add_argument("amount", help="CPT, up to 6 decimals")
    sub.add_parser("rates", parents=[common], help="the rate card")
    return parser


def rpc(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, what) from None


def show(args: argparse.Namespace, task: pb.Task) -> None:
    view = task_view(task)
    print_json(view) if args.json else print(describe_task(view))


def submit_request(args: argparse.Namespace) -> pb.SubmitRequest:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"--env {item!r} is not KEY=VALUE")
        env[key] = value
    bundle = bundle_from_path(Path(args.bundle)) if args.bundle else b""
    if bundle:
        check_bundle(bundle)
    return pb.SubmitRequest(
        image=args.image,
        command=command,
        env=env,
        resources=pb.Resources(
            cpu_millis=parse_cpus(args.cpu) if args.cpu else 0,
            memory_bytes=parse_size(args.memory) if args.memory else 0,
            gpus=args.gpus,
        ),
        timeout_seconds=args.timeout,
        priority=args.priority,
        max_attempts=args.max_attempts,
        network=args.network,
        input_bundle=bundle,
        name=args.name,
        max_cost=parse_cpt(args.max_cost) if args.max_cost else 0,
    )


def wait_for(stub: pb_grpc.TasksStub, task_id: str, timeout: float, progress: bool) -> pb.Task:
    started = time.monotonic()
    last = ""
    while True:
        task = rpc("status", lambda: stub.Get(pb.TaskRef(task_id=task_id), timeout=10))
        if progress and task.status != last:
            where = f" on {task.node_name or task.node_id}" if task.node_id else ""
            print(
                f"[{time.monotonic() - started:6.1f}s] {task.id} {task.status}"
                f" (attempt {task.attempt}){where}",
                file=sys.stderr,
            )
            last = task.status
        if task.status in FINAL_STATES:
            return task
        if timeout and time.monotonic() - started > timeout:
            raise HiveMindError(f"task {task_id} is still {task.status} after {timeout:g}s")
        time.sleep(0.25)


def stream_logs(stub: pb_grpc.TasksStub, task_id: str, follow: bool) -> Iterator[pb.LogEntry]:
    try:
        yield from stub.StreamLogs(pb.LogsRequest(task_id=task_id, follow=follow))
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, "logs") from None


def cmd_logs(args: argparse.Namespace, stub: pb_grpc.TasksStub) -> int:
    for entry in stream_logs(stub, args.id, args.follow):
        if args.json:
            print_json(
                {
                    "stream": entry.stream,
                    "attempt": entry.attempt,
                    "time": entry.time,
                    "data": entry.data.decode(errors="replace"),
                }
            )
            continue
        out = sys.stderr if entry.stream == "stderr" else sys.stdout
        if entry.stream == "system":
            print(f"--- {entry.data.decode(errors='replace')}", file=sys.stderr, flush=True)
        else:
            out.buffer.write(entry.data)
            out.flush()
    return 0


def cmd_result(args: argparse.Namespace, stub: pb_grpc.TasksStub) -> int:
    bundle = rpc("result", lambda: stub.FetchResult(pb.TaskRef(task_id=args.id), timeout=60))
    target = Path(args.output)
    names: list[str] = []
    if bundle.output_bundle:
        target.mkdir(parents=True, exist_ok=True)
        unpack_bundle(bundle.output_bundle, target)
        names = zipfile.ZipFile(io.BytesIO(bundle.output_bundle)).namelist()
    if args.json:
        print_json({"id": args.id, "directory": str(target), "files": names})
    else:
        print(f"{len(names)} files from {args.id} in {target}" if names else "no output files")
    return 0


def cmd_nodes(args: argparse.Namespace, stub: pb_grpc.TasksStub) -> int:
    nodes = rpc("nodes", lambda: stub.ListNodes(pb.ListNodesRequest(), timeout=10)).nodes
    views = [node_view(n) for n in nodes]
    print_json(views) if args.json else print_table(node_rows(views), NODE_COLUMNS)
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    identity = Identity.load(args.identity)
    with sync_channel(identity) as channel:
        stub = pb_grpc.TasksStub(channel)
        return dispatch(args, stub)


def dispatch(args: argparse.Namespace, stub: pb_grpc.TasksStub) -> int:
    progress = sys.stderr.isatty() and not args.json
    if args.command == "submit":
        request = submit_request(args)
        task = rpc("submit", lambda: stub.Submit(request, timeout=60))
        if not args.wait:
            print_json(task_view(task)) if args.json else print(task.id)
            return 0
        if progress:
            print(f"submitted {task.id}", file=sys.stderr)
        task = wait_for(stub, task.id, 0, progress)
        show(args, task)
        return 0 if task.status == SUCCEEDED else 1
    if args.command in ("status", "cancel"):
        method = stub.Get if args.command == "status" else stub.Cancel
        show(args, rpc(args.command, lambda: method(pb.TaskRef(task_id=args.id), timeout=10)))
        return 0
    if args.command == "wait":
        task = wait_for(stub, args.id, args.timeout, progress)
        show(args, task)
        return 0 if task.status == SUCCEEDED else 1
    if args.command == "logs":
        return cmd_logs(args, stub)
    if args.command == "result":
        return cmd_result(args, stub)
    if args.command == "list":
        query = pb.ListRequest(status=args.status, limit=args.limit)
        tasks = rpc("list", lambda: stub.List(query, timeout=10)).tasks
        views = [task_view(t) for t in tasks]
        print_json(views) if args.json else print_table(task_rows(views), TASK_COLUMNS)
        return 0
    if args.command == "nodes":
        return cmd_nodes(args, stub)
    return cmd_ledger(args, stub)


def cmd_ledger(args: argparse.Namespace, stub: pb_grpc.TasksStub) -> int:
    if args.command == "balance":
        found = balance_view(
            rpc("balance", lambda: stub.Balance(pb.AccountRef(account=args.account)))
        )
        print_json(found) if args.json else print(
            f"{amount_text(found['balance_micro'])} ({found['account']})"
        )
    elif args.command == "history":
        query = pb.HistoryRequest(account=args.account, limit=args.limit)
        entries = [entry_view(e) for e in rpc("history", lambda: stub.History(query)).entries]
        print_json(entries) if args.json else print_table(entry_rows(entries), ENTRY_COLUMNS)
    elif args.command == "tip":
        tip = pb.TipRequest(project=args.project, amount=parse_cpt(args.amount))
        entry = entry_view(rpc("tip", lambda: stub.Tip(tip)))
        print_json(entry) if args.json else print(
            f"tipped {amount_text(entry['amount_micro'])} to {entry['to']}"
        )
    else:
        rates = rates_view(rpc("rates", lambda: stub.GetRateCard(pb.RateCardRequest())))
        print_json(rates) if args.json else print(rates_text(rates))
    return 0


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(entry())
