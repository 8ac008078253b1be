"""The agent's task metrics keep their labels bounded: a known phase or a reported status,
never anything a task chose."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from hivemind_cluster.agent import metrics


def finished(status: str) -> float:
    value = REGISTRY.get_sample_value("hivemind_agent_tasks_finished_total", {"status": status})
    assert value is not None, f"no series for {status}"
    return value


def phase_count(phase: str) -> float:
    value = REGISTRY.get_sample_value("hivemind_agent_task_phase_seconds_count", {"phase": phase})
    assert value is not None, f"no series for {phase}"
    return value


def test_every_phase_and_status_is_there_from_the_start() -> None:
    for phase in metrics.PHASES:
        assert phase_count(phase) >= 0
    for status in ("succeeded", "failed", "timed_out", "cancelled", "interrupted"):
        assert finished(status) >= 0


def test_a_status_outside_the_reported_ones_counts_as_failed() -> None:
    before = finished("failed")
    metrics.count_finished("sha256:not-a-status")
    assert finished("failed") == before + 1
    labels = {
        sample.labels.get("status")
        for family in REGISTRY.collect()
        if family.name == "hivemind_agent_tasks_finished"
        for sample in family.samples
    }
    assert labels == {"succeeded", "failed", "timed_out", "cancelled", "interrupted"}


def test_a_timed_phase_is_observed_even_when_it_fails() -> None:
    before = phase_count(metrics.IMAGE_PULL)
    with pytest.raises(RuntimeError), metrics.timed(metrics.IMAGE_PULL):
        raise RuntimeError("the daemon went away")
    assert phase_count(metrics.IMAGE_PULL) == before + 1
    with pytest.raises(ValueError, match="unknown task phase"):
        metrics.observe_phase("t0123456789ab", 1.0)
