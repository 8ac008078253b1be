"""GPU detection: the nvidia-smi parser, and the real GPUtil code against a fake nvidia-smi."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hivemind_cluster.agent.gpus import (
    NVIDIA_SMI_FIELDS,
    Gpu,
    detect_gpus,
    parse_nvidia_smi_csv,
)
from hivemind_cluster.agent.sandbox import container_options
from hivemind_cluster.agent.taskrun import TaskRun
from hivemind_cluster.core.units import MIB

RECORDING = Path(__file__).resolve().parent.parent / "data" / "nvidia-smi-2xA100.csv"
EXPECTED = [
    Gpu(0, "NVIDIA A100-SXM4-40GB", 40960 * MIB, "GPU-4f6c1b2e-9d3a-7e51-0c8b-5a2f3d9e1c47"),
    Gpu(1, "NVIDIA A100-SXM4-40GB", 40960 * MIB, "GPU-b81e0a77-3c5d-42f9-a6e4-9f10d2c7b385"),
]


def fake_nvidia_smi(directory: Path, script_body: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put an executable ``nvidia-smi`` first on PATH; it logs its arguments to ``args``."""
    args_file = directory / "args"
    script = directory / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > {args_file}\n{script_body}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return args_file


def test_parse_recorded_output() -> None:
    assert parse_nvidia_smi_csv(RECORDING.read_text()) == EXPECTED


def test_parse_rejects_wrong_columns() -> None:
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_nvidia_smi_csv("0, GPU-x, 40960\n")


def test_parse_unknown_memory_is_zero() -> None:
    line = "0, GPU-x, [N/A], [N/A], [N/A], [N/A], 535.1, Tesla T4, 0, Disabled, Disabled, 40"
    assert parse_nvidia_smi_csv(line) == [Gpu(0, "Tesla T4", 0, "GPU-x")]


def test_detect_through_gputil_with_fake_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args_file = fake_nvidia_smi(tmp_path, f"cat {RECORDING}", monkeypatch)
    assert detect_gpus() == EXPECTED
    # The recording has exactly the columns GPUtil asks for, in its order.
    args = args_file.read_text().split()
    assert args == [f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader,nounits"]


def test_no_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing to run
    assert detect_gpus() == []


def test_garbage_output_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(
        tmp_path,
        "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\n"
        "exit 9",
        monkeypatch,
    )
    assert detect_gpus() == []


def test_a_task_gets_docker_device_requests_for_exactly_its_gpus() -> None:
    task = TaskRun(
        "t000000000001",
        1,
        "hivemind/busybox:latest",
        [],
        {},
        1000,
        64 << 20,
        1,
        5,
        False,
        gpu_ids=("GPU-b",),
    )
    (request,) = container_options(task, "n1", 64)["device_requests"]
    assert request["DeviceIDs"] == ["GPU-b"] and request["Capabilities"] == [["gpu"]]
    assert not request["Count"]
    anywhere = container_options(
        TaskRun("t1", 1, "i", [], {}, 1000, 64 << 20, 2, 5, False), "n1", 64
    )
    assert anywhere["device_requests"][0]["Count"] == 2
