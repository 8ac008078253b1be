"""The default Python image from ``make images`` against the real Docker daemon: what users'
Python tasks import (CPython's whole standard library, pip and the scientific stack the
original worker image preinstalled) works under the hardening every task gets."""

from __future__ import annotations

import json
import secrets
import threading
import zipfile
from collections.abc import Iterator

import pytest

from hivemind_cluster.agent.executor import DockerExecutor
from hivemind_cluster.agent.taskrun import Outcome, TaskRun
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.spec import DEFAULT_PYTHON_IMAGE
from tests.support.prerequisites import require_docker_images
from tests.support.tasks import a_task

pytestmark = pytest.mark.privileged

# The task reports what each module did as one JSON object, its last line of output.
PROBE = """
import ctypes, ctypes.util, json, multiprocessing, shutil, sys, urllib.request, venv, zipfile
import requests, numpy, pandas, matplotlib, PIL.Image, sklearn.linear_model
import matplotlib.pyplot as plt

with zipfile.ZipFile('/tmp/a.zip', 'w') as archive:
    archive.writestr('x.txt', 'zipped')
shutil.copy('/tmp/a.zip', '/tmp/b.zip')
libc = ctypes.CDLL(ctypes.util.find_library('c'))
with multiprocessing.Pool(2) as pool:
    squares = pool.map(abs, [-1, -2, -3])
frame = pandas.DataFrame({'k': ['a', 'b', 'a'], 'v': [1, 2, 3]})
plt.plot(numpy.arange(5), numpy.arange(5) ** 2)
plt.savefig('/out/plot.png')
model = sklearn.linear_model.LinearRegression().fit([[0], [1], [2]], [1, 3, 5])
print(json.dumps({
    'zip': zipfile.ZipFile('/tmp/b.zip').read('x.txt').decode(),
    'strlen': libc.strlen(b'hello'),
    'pool': squares,
    'file_url': urllib.request.urlopen('file:///tmp/b.zip').read(2).decode(),
    'request': requests.Request('GET', 'https://example.org/', params={'q': 1}).prepare().url,
    'sums': frame.groupby('k')['v'].sum().to_dict(),
    'backend': matplotlib.get_backend(),
    'png': PIL.Image.open('/out/plot.png').format,
    'slope': round(float(model.coef_[0]), 6),
    'python': sys.version_info[:2],
}))
"""


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerExecutor]:
    """An executor with the agent's defaults (pids limit and all) over the real daemon."""
    client = require_docker_images(DEFAULT_PYTHON_IMAGE)
    node_id = f"test-{secrets.token_hex(4)}"
    yield DockerExecutor(tmp_path_factory.mktemp("tasks"), node_id, client=client)
    client.close()


def python_task(*command: str) -> TaskRun:
    """A task in the default image: one CPU, 512 MiB, 120 s, no network, no bundle."""
    return a_task(DEFAULT_PYTHON_IMAGE, command, memory_bytes=512 * MIB, timeout_seconds=120)


def run(executor: DockerExecutor, the_task: TaskRun) -> tuple[Outcome, str]:
    """The outcome and everything the task wrote (stdout and stderr together)."""
    output: list[bytes] = []
    outcome = executor.run(the_task, lambda _stream, data: output.append(data), threading.Event())
    assert list(executor.work_root.iterdir()) == [], "a task directory was left behind"
    assert executor.remove_leftovers() == 0, "a task container was left behind"
    return outcome, b"".join(output).decode()


def test_standard_library_and_scientific_stack(executor: DockerExecutor) -> None:
    outcome, output = run(executor, python_task("python", "-c", PROBE))
    assert outcome.status == "succeeded", (outcome.error, output)
    assert "temporary cache directory" not in output  # matplotlib's cache went to MPLCONFIGDIR
    assert json.loads(output.splitlines()[-1]) == {
        "zip": "zipped",
        "strlen": 5,
        "pool": [1, 2, 3],
        "file_url": "PK",
        "request": "https://example.org/?q=1",
        "sums": {"a": 4, "b": 2},
        "backend": "agg",
        "png": "PNG",
        "slope": 2.0,
        "python": [3, 11],
    }
    assert outcome.output is not None
    try:
        with zipfile.ZipFile(outcome.output.path) as bundle:
            assert bundle.namelist() == ["plot.png"]
            assert bundle.read("plot.png").startswith(b"\x89PNG\r\n\x1a\n")
    finally:
        outcome.output.path.unlink()


def test_pip_runs(executor: DockerExecutor) -> None:
    outcome, output = run(executor, python_task("pip", "--version"))
    assert outcome.status == "succeeded", (outcome.error, output)
    assert output.startswith("pip ") and "python 3.11" in output, output
