"""Running system commands (ip, wg, sysctl) with errors a user can read."""

from __future__ import annotations

import shutil
import subprocess

from hivemind_cluster.core.errors import SystemFailure


def run(command: list[str], stdin: str | None = None, check: bool = True) -> str:
    """Run a command and return its stdout; raise SystemFailure with its stderr."""
    if shutil.which(command[0]) is None:
        raise SystemFailure(f"{command[0]} is not installed (run `make setup`)")
    result = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise SystemFailure(
            f"`{' '.join(command)}` failed: {detail[-1] if detail else 'no output'}"
        )
    return result.stdout


def read_sysctl(name: str) -> str:
    with open("/proc/sys/" + name.replace(".", "/")) as handle:
        return handle.read().strip()


def write_sysctl(name: str, value: str) -> None:
    try:
        with open("/proc/sys/" + name.replace(".", "/"), "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise SystemFailure(f"cannot set {name}={value}: {exc.strerror}") from None


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
