"""The processes of one lab host, found by their command line.

``pgrep -f`` looks at the whole machine, whichever namespace it runs in: a second lab
running at the same time has a hub with the same overlay address and the same commands,
and its processes would answer for this lab's. ``ip netns pids`` names only the processes
in the host's own network namespace, so the search starts from there.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.lab import Host, sh


def pids_matching(host: Host, text: str) -> list[int]:
    """The processes in ``host``'s namespace whose command line (its arguments joined by
    spaces, as ``pgrep -f`` reads it) contains ``text``, lowest pid first."""
    found = []
    for pid in sh("ip", "netns", "pids", host.netns, check=False).stdout.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # it ended meanwhile
        if text in cmdline.replace(b"\0", b" ").decode(errors="replace"):
            found.append(int(pid))
    return sorted(found)
