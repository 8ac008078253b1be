"""The worker's rules for tasks with network (agent/tasknet.py), without touching nftables:
the table's text, and that a task with network is refused — never run unprotected — when
nft is missing, the rules cannot be loaded or Docker's bridge is in another namespace.
The real rules against real connections: tests/e2e/test_task_network.py."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from hivemind_cluster.agent import tasknet
from hivemind_cluster.agent.tasknet import GuardedExecutor, TaskNetworkGuard
from hivemind_cluster.agent.taskrun import NO_USAGE, OnOutput, Outcome, TaskRun
from hivemind_cluster.core import nftables
from hivemind_cluster.core.errors import SystemFailure
from tests.support.tasks import a_task
from tests.unit.test_agent_status import ENROLLMENT  # hm0, hub at 198.51.100.1

RAN = Outcome("succeeded", 0, "", NO_USAGE, None)


class Recorder:
    """An executor that records what it was asked to run."""

    def __init__(self) -> None:
        self.ran: list[TaskRun] = []

    def run(self, task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        self.ran.append(task)
        return RAN


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """nft as a recorder of the tables loaded; Docker's bridge here; every table listed."""
    tables: list[str] = []
    monkeypatch.setattr(nftables, "load_table", lambda table, rules, _: tables.append(rules))
    monkeypatch.setattr(tasknet, "bridge_is_here", lambda name: True)
    monkeypatch.setattr(nftables, "table_exists", lambda table: True)
    return tables


def installed_guard() -> TaskNetworkGuard:
    guard = TaskNetworkGuard(ENROLLMENT, None)
    guard.install()
    return guard


def run_both(guard: TaskNetworkGuard) -> tuple[Outcome, Outcome, Recorder]:
    """A task with network and one without, through the guarded executor."""
    inner = Recorder()
    executor = GuardedExecutor(inner, guard)
    task = a_task("hivemind/busybox:latest", ["true"])
    networked = executor.run(replace(task, network=True), lambda *_: None, threading.Event())
    isolated = executor.run(task, lambda *_: None, threading.Event())
    return networked, isolated, inner


def test_the_rules_drop_the_overlay_the_hub_and_the_host_from_every_docker_bridge() -> None:
    rules = TaskNetworkGuard(ENROLLMENT, None).rules()
    bridges = 'iifname { "docker0", "br-*" }'
    assert "table inet hivemind_tasks_hm0 {" in rules
    assert f"{bridges} ip daddr 100.64.0.0/16 drop" in rules
    assert f'{bridges} oifname "hm0" drop' in rules
    # Both endpoints are on one address: one rule.
    assert rules.count(f"{bridges} ip daddr 198.51.100.1 drop") == 1
    assert f"{bridges} ct state != {{ established, related }} drop" in rules
    assert "type filter hook input" in rules and "type filter hook forward" in rules


def test_an_ipv6_hub_is_dropped_with_ip6() -> None:
    enrollment = replace(ENROLLMENT, hub_endpoint="[2001:db8::1]:51820")
    rules = TaskNetworkGuard(enrollment, None).rules()
    assert "ip6 daddr 2001:db8::1 drop" in rules and "ip daddr 198.51.100.1 drop" in rules


def test_without_nft_a_task_with_network_is_refused_and_one_without_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    networked, isolated, inner = run_both(installed_guard())
    assert networked.status == "failed" and networked.exit_code == -1
    assert networked.error.startswith("this worker refuses tasks with network")
    assert "nft is not installed" in networked.error
    assert isolated is RAN and [task.network for task in inner.ran] == [False]


def test_rules_nft_refuses_mean_tasks_with_network_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: Any) -> None:
        raise SystemFailure("`nft -f -` failed: Error: syntax error")

    monkeypatch.setattr(nftables, "load_table", refuse)
    networked, _, inner = run_both(installed_guard())
    assert "syntax error" in networked.error and len(inner.ran) == 1


def test_a_bridge_in_another_namespace_means_refusal_until_it_is_here(
    loaded: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasknet, "bridge_is_here", lambda name: False)
    guard = installed_guard()
    networked, _, _ = run_both(guard)
    assert "bridge docker0 is not in the agent's network namespace" in networked.error
    monkeypatch.setattr(tasknet, "bridge_is_here", lambda name: True)  # Docker came up here
    assert run_both(guard)[0] is RAN


def test_with_the_rules_in_place_both_run(loaded: list[str]) -> None:
    networked, isolated, inner = run_both(installed_guard())
    assert networked is RAN and isolated is RAN
    assert [task.network for task in inner.ran] == [True, False]
    assert len(loaded) == 1


def test_a_removed_table_is_loaded_again_before_the_next_task_with_network(
    loaded: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = installed_guard()
    monkeypatch.setattr(nftables, "table_exists", lambda table: False)
    assert run_both(guard)[0] is RAN and len(loaded) == 2


def test_docker_names_its_bridges_otherwise_and_they_are_guarded_too() -> None:
    def network(name: str, bridge: str) -> SimpleNamespace:
        options = {tasknet.BRIDGE_NAME_OPTION: bridge} if bridge else {}
        return SimpleNamespace(name=name, attrs={"Options": options})

    listed = [network("bridge", "hmbr0"), network("mine", ""), network("evil", 'x" accept')]
    client: Any = SimpleNamespace(networks=SimpleNamespace(list=lambda filters: listed))
    bridges = tasknet.docker_bridges(client)
    assert bridges == tasknet.Bridges(("docker0", "br-*", "hmbr0"), "hmbr0")
