"""``join`` starts the agent service unless one runs: a crashed one not reaped yet does not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hivemind_cluster.agent.join import is_zombie, service_pid
from hivemind_cluster.agent.state import AgentSettings
from hivemind_cluster.core.names import PID_FILE


def test_a_dead_service_not_yet_reaped_is_not_running(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / PID_FILE).write_text(str(child.pid))
        assert service_pid(settings) == child.pid and not is_zombie(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while not is_zombie(child.pid):  # killed, and not reaped: we have not waited yet
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        assert service_pid(settings) is None
    finally:
        child.kill()
        child.wait()
    assert service_pid(settings) is None  # reaped: gone altogether
