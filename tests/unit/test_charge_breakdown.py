"""How a settled task's cost came about, as ``hivemind status`` prints it: wall seconds
times each requested resource at its rate → each part, the total, the cap and the refund."""

from __future__ import annotations

from typing import Any

import pytest

from hivemind_cluster.client import poolcli as cli
from hivemind_cluster.client import views
from hivemind_cluster.client.cli import build_hivemind_parser
from hivemind_cluster.client.views import View
from hivemind_cluster.model.pricing import RateCard
from hivemind_cluster.protos import pool_pb2 as pb
from tests.unit.test_cli_commands import FakeClient

RATES = RateCard(cpu_second=100, gb_second=50, gpu_second=2000)


def shown(text: str) -> str:
    """``text`` with its `` x `` written as the multiplication sign the breakdown uses."""
    return text.replace(" x ", f" {views.TIMES} ")


def settled_task(wall_seconds: float, cost: int, gpus: int = 0, **fields: Any) -> View:
    return views.task_view(
        pb.Task(
            id="t1",
            status="succeeded",
            attempt=1,
            max_attempts=3,
            image="hivemind/busybox:latest",
            command=["sleep", "15"],
            resources=pb.Resources(cpu_millis=1000, memory_bytes=256 << 20, gpus=gpus),
            timeout_seconds=60,
            usage=pb.Usage(cpu_seconds=0.01, peak_memory_bytes=1 << 20, wall_seconds=wall_seconds),
            price_cap=6806,
            cost=cost,
            settled=True,
            **fields,
        )
    )


def test_the_breakdown_of_a_task_that_held_one_cpu_and_256_mib_for_15_seconds() -> None:
    charge = views.charge_view(settled_task(15.0, 1702), RATES)
    assert charge == {
        "wall_seconds": 15.0,
        "parts": [
            {"unit": "CPU", "quantity": 1.0, "rate_micro": 100, "cost_micro": 1500},
            {"unit": "GB", "quantity": 0.268435456, "rate_micro": 50, "cost_micro": 202},
        ],
        "total_micro": 1702,
        "price_cap_micro": 6806,
        "cost_micro": 1702,
        "refund_micro": 5104,
        "as_settled": True,
    }
    assert views.charge_lines(charge) == [
        shown("15 s x 1 CPU x 0.0001 CPT/CPU-s = 0.0015 CPT"),
        shown("15 s x 0.268435 GB x 0.00005 CPT/GB-s = 0.000202 CPT"),
        "total 0.001702 CPT, cap 0.006806 CPT → paid 0.001702 CPT, refunded 0.005104 CPT",
    ]


def test_gpus_appear_when_requested_and_the_cap_bounds_what_was_paid() -> None:
    charge = views.charge_view(settled_task(15.0, 6806, gpus=1), RATES)
    assert charge is not None
    assert [p["unit"] for p in charge["parts"]] == ["CPU", "GB", "GPU"]
    assert (charge["total_micro"], charge["cost_micro"], charge["refund_micro"]) == (
        31702,
        6806,
        0,
    )
    assert charge["as_settled"]  # the cap, not the total, was paid
    assert views.charge_lines(charge)[-1].startswith("total 0.031702 CPT, cap 0.006806 CPT")


def test_a_breakdown_at_other_rates_than_the_settlement_says_so() -> None:
    charge = views.charge_view(settled_task(15.0, 1702), RateCard(200, 50, 2000))
    assert charge is not None and not charge["as_settled"]
    assert views.charge_lines(charge)[-1].endswith("(at today's rates; it was settled at others)")


def test_an_unsettled_task_has_no_breakdown_yet() -> None:
    task = settled_task(15.0, 0) | {"settled": False, "cost_micro": None}
    assert views.charge_view(task, RATES) is None
    assert "billed" not in views.describe_task(task, RATES)


class SettledClient(FakeClient):
    def get(self, task_id: str) -> View:
        return settled_task(15.0, 1702)


def test_hivemind_status_prints_the_breakdown_under_the_money_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_hivemind_parser().parse_args(["status", "t1"])
    assert cli.run_command(args, SettledClient()) == 0
    lines = capsys.readouterr().out.splitlines()
    money = next(n for n, line in enumerate(lines) if line.startswith("money"))
    assert lines[money : money + 4] == [
        "money     price cap 0.006806 CPT, cost 0.001702 CPT",
        shown("billed    15 s x 1 CPU x 0.0001 CPT/CPU-s = 0.0015 CPT"),
        shown("          15 s x 0.268435 GB x 0.00005 CPT/GB-s = 0.000202 CPT"),
        "          total 0.001702 CPT, cap 0.006806 CPT → paid 0.001702 CPT, refunded 0.005104 CPT",
    ]
    assert any(line.startswith("usage     0.01 CPU-s") for line in lines)  # measured, kept
