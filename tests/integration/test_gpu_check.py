"""The checks of `make gpu-check`, on a real pool and worker, the containers simulated.

Without a GPU here, the executor stands in for Docker with the NVIDIA runtime: each task's
"container" sees exactly the devices the worker handed it (``gpu_ids``), as the runtime
exposes them, and prints them as ``nvidia-smi`` would. So the pool's GPU booking, the
worker's allocation and the script's own verdicts are tested; the real thing is the script
on a GPU machine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hivemind_cluster.agent.facts import Facts
from hivemind_cluster.agent.gpus import parse_nvidia_smi_csv
from hivemind_cluster.agent.taskrun import OnOutput, Outcome, TaskRun, Usage
from hivemind_cluster.hub.redis_server import RedisServer
from hivemind_cluster.model.resources import Resources
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.gpucheck import load_gpu_check
from tests.support.poolkit import ScriptedExecutor

pytestmark = pytest.mark.privileged

RECORDING = Path(__file__).resolve().parent.parent / "data" / "nvidia-smi-2xA100.csv"
GPU_CHECK = load_gpu_check()
HOLD_SECONDS = 1.0  # how long each simulated container runs: the pair overlaps when it can


def machine(gpu_count: int) -> Facts:
    """A worker with the first ``gpu_count`` GPUs of the recorded two."""
    gpus = [
        pb.Gpu(index=g.index, model=g.model, memory_bytes=g.memory_bytes, uuid=g.uuid)
        for g in parse_nvidia_smi_csv(RECORDING.read_text())[:gpu_count]
    ]
    return Facts(Resources(4000, 8 << 30, gpu_count), gpus=gpus, docker_available=True)


def container_seeing(pick: str) -> ScriptedExecutor:
    """An executor whose containers see the task's own GPUs (``pick="own"``) or, as if
    device requests were ignored, always the machine's first one (``pick="first"``)."""
    first = parse_nvidia_smi_csv(RECORDING.read_text())[0].uuid

    def run(task: TaskRun, on_output: OnOutput, cancel: threading.Event) -> Outcome:
        devices = list(task.gpu_ids) if pick == "own" else [first]
        on_output("stdout", "".join(f"{d}, NVIDIA A100-SXM4-40GB\n" for d in devices).encode())
        time.sleep(HOLD_SECONDS)
        return Outcome("succeeded", 0, "", Usage(0.1, 1 << 20, HOLD_SECONDS, HOLD_SECONDS), None)

    return ScriptedExecutor(run)


@pytest.mark.parametrize("gpu_count", [1, 2])
def test_the_checks_pass_when_each_task_gets_its_own_gpu(
    gpu_count: int,
    redis_server: RedisServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    executor = container_seeing("own")
    GPU_CHECK.run_checks(machine(gpu_count), executor, redis_server, tmp_path)
    out = capsys.readouterr().out
    if gpu_count == 1:
        assert "the second task waited for the first" in out
    else:
        assert "ran together on different GPUs" in out
    assert [len(task.gpu_ids) for task in executor.started] == [1, 1, 1]


def test_two_tasks_seeing_one_device_fail_the_check(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with pytest.raises(GPU_CHECK.CheckFailed, match="shared GPU"):
        GPU_CHECK.run_checks(machine(2), container_seeing("first"), redis_server, tmp_path)
