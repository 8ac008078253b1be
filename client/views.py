"""The JSON shapes of tasks, nodes and ledger entries, and their text rendering.

One place turns the pool's protobuf messages into plain dicts: the web API returns them,
the ``hivemind`` CLI (over the API) and ``hivemind-pool`` (over gRPC) print them. CPT
amounts are JSON numbers; each has an exact integer ``*_micro`` twin.
"""

from __future__ import annotations

import time
from typing import Any

from hivemind_cluster.core.console import age, printable
from hivemind_cluster.core.units import MICRO, format_bytes, format_cpt
from hivemind_cluster.model.blobs import InputRef
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.model.states import FINAL_STATES
from hivemind_cluster.protos import pool_pb2 as pb

View = dict[str, Any]
TIMES = "\N{MULTIPLICATION SIGN}"  # between the factors of a cost breakdown


def cpt(micro: int) -> float:
    """Micro-CPT as a JSON number of CPT (the ``*_micro`` field keeps the exact value)."""
    return micro / MICRO


def amounts(**micros: int) -> View:
    """Each amount as CPT (``name``) beside its exact micro-CPT twin (``name_micro``)."""
    return {k: cpt(v) for k, v in micros.items()} | {f"{k}_micro": v for k, v in micros.items()}


def resources_view(resources: pb.Resources) -> View:
    return {
        "cpu_millis": resources.cpu_millis,
        "memory_bytes": resources.memory_bytes,
        "gpus": resources.gpus,
    }


def input_view(ref: pb.InputRef) -> View:
    """An input (or the bundle) by content; ``url`` empty unless a worker fetches it there."""
    return InputRef.of(ref).as_json()


def usage_sample_view(sample: pb.UsageSample) -> View:
    return {
        "time": sample.time,
        "cpu_cores": sample.cpu_cores,
        "memory_bytes": sample.memory_bytes,
    }


def task_view(task: pb.Task) -> View:
    return {
        "id": task.id,
        "name": task.name,
        "owner": task.owner,
        "status": task.status,
        "node": task.node_name or task.node_id,
        "node_id": task.node_id,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "exit_code": task.exit_code if task.has_exit_code else None,
        "error": task.error,
        "image": task.image,
        # What the last finished attempt ran: its registry digest, else the image id.
        "image_digest": task.attempts[-1].image_digest if task.attempts else "",
        "command": list(task.command),
        "resources": resources_view(task.resources),
        "timeout_seconds": task.timeout_seconds,
        "priority": task.priority,
        "network": task.network,
        "usage": {
            "cpu_seconds": task.usage.cpu_seconds,
            "peak_memory_bytes": task.usage.peak_memory_bytes,
            "wall_seconds": task.usage.wall_seconds,
            "gpu_seconds": task.usage.gpu_seconds,
        },
        # CPU and memory over the run, in time order (a single task's view only; [] in lists).
        "usage_samples": [usage_sample_view(s) for s in task.usage_samples],
        "submitted_at": task.submitted_at,
        "started_at": task.started_at or None,
        "ended_at": task.ended_at or None,
        "attempts": [
            {
                "attempt": a.attempt,
                "node_id": a.node_id,
                "status": a.status,
                "started_at": a.started_at or None,
                "ended_at": a.ended_at or None,
                "error": a.error,
                "image_digest": a.image_digest,
            }
            for a in task.attempts
        ],
        "output_bytes": task.output_bytes,
        "output_digest": task.output_digest,
        "bundle": task.bundle.digest,  # as submitted: the zip's digest ("": none)
        "inputs": [input_view(ref) for ref in task.inputs],
        "price_cap": cpt(task.price_cap),
        "price_cap_micro": task.price_cap,
        "cost": cpt(task.cost) if task.settled else None,
        "cost_micro": task.cost if task.settled else None,
        "settled": task.settled,
    }


def node_view(node: pb.NodeState) -> View:
    return {
        "id": node.id,
        "name": node.name,
        "role": node.role,
        "overlay_ip": node.overlay_ip,
        "state": node.state,
        "connected": node.connected,
        "last_heartbeat": node.last_heartbeat or None,
        "capacity": resources_view(node.capacity),
        "allocated": resources_view(node.allocated),
        "gpus": [{"model": g.model, "memory_bytes": g.memory_bytes} for g in node.gpus],
        "cpu_percent": node.cpu_percent,
        "memory_used_bytes": node.memory_used_bytes,
        "running": list(node.running),
        "running_tasks": node.running_count,
        "docker_version": node.docker_version,
        "labels": dict(node.labels),
    }


def entry_view(entry: pb.LedgerEntry) -> View:
    return {
        "id": entry.id,
        "time": entry.time,
        "from": entry.source,
        "to": entry.target,
        "reason": entry.reason,
        "task": entry.task,
        **amounts(amount=entry.amount),
    }


def balance_view(balance: pb.AccountBalance) -> View:
    return {
        "account": balance.account,
        "kind": balance.kind,
        **amounts(balance=balance.balance, earned=balance.earned),
    }


def rates_view(card: pb.RateCard) -> View:
    """The rate card in CPT (per CPU-second, GB-second, GPU-second) plus the grant."""
    return amounts(
        cpu_second=card.cpu_second,
        gb_second=card.gb_second,
        gpu_second=card.gpu_second,
        registration_grant=card.registration_grant,
    )


def rate_card_of(rates: View) -> RateCard:
    """The published rate card (``rates_view``) as the pool bills with it."""
    return RateCard(rates["cpu_second_micro"], rates["gb_second_micro"], rates["gpu_second_micro"])


def charge_view(task: View, card: RateCard) -> View | None:
    """How a settled task's cost came about (None before): its wall time times each resource
    it requested at its rate, the total, the cap, what was paid and refunded. Computed at
    ``card``'s rates: ``as_settled`` says whether they reproduce the cost actually paid."""
    if not task["settled"]:
        return None
    charge = card.charge(Resources(**task["resources"]), task["usage"]["wall_seconds"])
    cap, cost = task["price_cap_micro"], task["cost_micro"]
    return {
        "wall_seconds": charge.wall_seconds,
        "parts": [
            {"unit": p.unit, "quantity": p.quantity, "rate_micro": p.rate, "cost_micro": p.cost}
            for p in charge.parts
            if p.quantity
        ],
        "total_micro": charge.total,
        "price_cap_micro": cap,
        "cost_micro": cost,
        "refund_micro": cap - cost,
        "as_settled": min(charge.total, cap) == cost,
    }


def log_view(entry: pb.LogEntry) -> View:
    """One chunk of a task's output (``data`` decoded as UTF-8, bad bytes replaced)."""
    return {
        "id": entry.id,
        "stream": entry.stream,
        "attempt": entry.attempt,
        "time": entry.time,
        "data": entry.data.decode(errors="replace"),
    }


# Text rendering (for terminals), from the views above.


def amount_text(micro: int | None) -> str:
    return "-" if micro is None else f"{format_cpt(micro)} CPT"


def charge_lines(charge: View) -> list[str]:
    """A ``charge_view`` as text: one line per requested resource, then the outcome."""
    lines = [
        f"{charge['wall_seconds']:g} s {TIMES} {p['quantity']:g} {p['unit']} {TIMES} "
        f"{amount_text(p['rate_micro'])}/{p['unit']}-s = {amount_text(p['cost_micro'])}"
        for p in charge["parts"]
    ]
    lines.append(
        f"total {amount_text(charge['total_micro'])}, cap {amount_text(charge['price_cap_micro'])}"
        f" → paid {amount_text(charge['cost_micro'])}, "
        f"refunded {amount_text(charge['refund_micro'])}"
        + ("" if charge["as_settled"] else " (at today's rates; it was settled at others)")
    )
    return lines


def describe_task(task: View, card: RateCard | None = None) -> str:
    """The task for a terminal; with the rate card, a settled task's cost breakdown too."""
    resources = Resources(**task["resources"])
    lines = [
        f"task      {task['id']}{' (' + task['name'] + ')' if task['name'] else ''}",
        f"status    {task['status']}"
        + (f", exit code {task['exit_code']}" if task["exit_code"] is not None else "")
        + (f" — {task['error']}" if task["error"] else ""),
        f"attempt   {task['attempt']} of {task['max_attempts']}"
        + (f" on {task['node']}" if task["node"] else ""),
        f"image     {task['image']}  {' '.join(task['command'])}",
        *([f"digest    {task['image_digest']}"] if task["image_digest"] else []),
        f"request   {resources.describe()}, timeout {task['timeout_seconds']}s",
        *input_lines(task),
    ]
    money = f"price cap {amount_text(task['price_cap_micro'])}"
    if task["settled"]:
        money += f", cost {amount_text(task['cost_micro'])}"
    lines.append(f"money     {money}")
    charge = charge_view(task, card) if card else None
    if charge:
        lines += [
            f"{'billed' if n == 0 else '':<10}{line}" for n, line in enumerate(charge_lines(charge))
        ]
    samples = task.get("usage_samples") or []
    if samples and task["status"] not in FINAL_STATES:
        now = samples[-1]
        lines.append(
            f"using     {now['cpu_cores']:.2f} CPU cores, {format_bytes(now['memory_bytes'])} "
            f"({age(time.time() - now['time'])} ago)"
        )
    if task["status"] in FINAL_STATES:
        u = task["usage"]
        lines.append(
            f"usage     {u['cpu_seconds']:.2f} CPU-s, peak {format_bytes(u['peak_memory_bytes'])}, "
            f"{u['wall_seconds']:.2f}s wall"
            + (f", {u['gpu_seconds']:.1f} GPU-s" if u["gpu_seconds"] else "")
        )
    # One line per field whatever it holds: a newline in a command cannot forge a line.
    return "\n".join(printable(line, newlines=False) for line in lines)


def input_lines(task: View) -> list[str]:
    """The bundle and each input: where it is, its kind and size, where it came from (an
    upload, by digest, or a URL)."""
    lines = [f"bundle    {task['bundle']}"] if task.get("bundle") else []
    for n, ref in enumerate(task.get("inputs") or []):
        size = f", {format_bytes(ref['size'])}" if ref["size"] else ""
        lines.append(
            f"{'inputs' if n == 0 else '':<10}/work/inputs/{ref['name']} "
            f"({ref['kind'] or 'file'}{size}) {ref['url'] or ref['digest']}"
        )
    return lines


TASK_COLUMNS = ["id", "status", "node", "attempt", "exit_code", "image", "command"]


def task_rows(tasks: list[View]) -> list[View]:
    return [t | {"command": " ".join(t["command"])[:40]} for t in tasks]


NODE_COLUMNS = ["id", "name", "role", "overlay_ip", "state", "heartbeat", "cpu", "memory", "tasks"]


def node_rows(nodes: list[View]) -> list[View]:
    now = time.time()
    rows = []
    for n in nodes:
        worker = n["role"] == "worker"
        used, total = n["allocated"], n["capacity"]
        rows.append(
            n
            | {
                "heartbeat": age(now - n["last_heartbeat"]) if n["last_heartbeat"] else "-",
                "cpu": f"{used['cpu_millis'] / 1000:g}/{total['cpu_millis'] / 1000:g}"
                if worker
                else "-",
                "memory": f"{format_bytes(used['memory_bytes'])}/"
                f"{format_bytes(total['memory_bytes'])}"
                if worker
                else "-",
                "tasks": n["running_tasks"],
            }
        )
    return rows


ENTRY_COLUMNS = ["id", "from", "to", "amount", "reason"]


def entry_rows(entries: list[View]) -> list[View]:
    return [e | {"amount": format_cpt(e["amount_micro"])} for e in entries]


def rates_text(rates: View) -> str:
    exact = {k.removesuffix("_micro"): v for k, v in rates.items() if k.endswith("_micro")}
    return "\n".join(f"{name:<20}{amount_text(micro)}" for name, micro in exact.items())
