"""`make gpu-check` on a machine without a GPU: it says so, checks nothing and exits 0."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.support.gpucheck import load_gpu_check
from tests.unit.test_gpus import fake_nvidia_smi


def gpu_check(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script as a module, its task checks (the pool, the pull) replaced by a failure."""
    module = load_gpu_check()

    def must_not_run(*_args: object) -> None:
        raise AssertionError("no GPU, yet the task checks ran")

    monkeypatch.setattr(module, "with_docker", must_not_run)
    return module


def assert_says_no_gpu(module: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert module.main() == 0
    out = capsys.readouterr().out
    assert "no NVIDIA GPU detected" in out and "nothing was checked" in out
    assert "passed" not in out


def test_no_nvidia_smi_says_no_gpu_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = gpu_check(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nvidia-smi
    assert_says_no_gpu(module, capsys)


def test_a_failing_nvidia_smi_says_no_gpu_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = gpu_check(monkeypatch)
    fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed'\nexit 9", monkeypatch)
    assert_says_no_gpu(module, capsys)
