"""Scratch space for the zips of ``--bundle DIR`` and ``--input DIR``: a directory of
this run's own under the user's cache directory (``$XDG_CACHE_HOME/hivemind/scratch``,
default ``~/.cache/hivemind/scratch``, 0700), removed when the run ends.

Not in /tmp: it is often a tmpfs, where a 20 GiB zip takes 20 GiB of memory. The cache
directory is on a disk, but unlike a tmpfs nothing clears it at reboot, so a run killed
before it could clean up would leave its zips there for good. Each run therefore holds an
exclusive ``flock`` on its directory while it lives, and every run first removes the
directories whose lock nobody holds: their run is gone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from hivemind_cluster.client.digests import cache_dir
from hivemind_cluster.core.errors import HiveMindError

RUN_PREFIX = "submit-"


def scratch_root() -> Path:
    """Where runs make their directories (the temporary directory without a home)."""
    try:
        return cache_dir() / "scratch"
    except (RuntimeError, KeyError):
        return Path(tempfile.gettempdir())


@contextmanager
def scratch_directory() -> Iterator[Path]:
    """A new private directory, locked while the caller uses it, then removed."""
    root = scratch_root()
    try:
        root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
        # Made under a name no cleanup looks at, renamed once locked: never removed as
        # abandoned between its creation and its lock.
        made = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
        lock = os.open(made, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise HiveMindError(
            f"cannot make a scratch directory in {root}: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        directory = root / f"{RUN_PREFIX}{made.name.removeprefix('.new-')}"
        made.rename(directory)
        remove_abandoned(root)
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        os.close(lock)


def remove_abandoned(root: Path) -> None:
    """Remove the run directories under ``root`` whose run is gone (nobody holds their
    lock); a directory that cannot be opened or locked is left alone."""
    for directory in root.glob(f"{RUN_PREFIX}*"):
        try:
            held = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            with suppress(OSError):
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(directory, ignore_errors=True)
        finally:
            os.close(held)


class Scratch:
    """``scratch_directory()``, made only when first asked for (a submission without a
    directory to zip touches nothing), removed on leaving the ``with``."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._path: Path | None = None

    def path(self) -> Path:
        if self._path is None:
            self._path = self._stack.enter_context(scratch_directory())
        return self._path

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
