"""The processes of one lab host, found by their command line.

``pgrep -f`` looks at the whole machine, whichever namespace it runs in: a second lab
running at the same time has a hub with the same overlay address and the same commands,
and its processes would answer for this lab's. ``ip netns pids`` names only the processes
in the host's own network namespace, so the search starts from there.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.lab import Host, sh


def pids_in(host: Host) -> list[int]:
    """Every process in ``host``'s network namespace (asked from outside it, so the asking
    ``ip`` is not among them)."""
    return [int(pid) for pid in sh("ip", "netns", "pids", host.netns, check=False).stdout.split()]


def processes_in(host: Host) -> dict[int, str]:
    """Every live process (no zombie) in ``host``'s network namespace: its command name."""
    found = {}
    for pid in pids_in(host):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        if state != "Z":
            found[pid] = name
    return found


def pids_named(host: Host, name: str) -> list[int]:
    """The live processes in ``host``'s namespace whose command name is ``name``."""
    return sorted(pid for pid, comm in processes_in(host).items() if comm == name)


def pids_matching(host: Host, text: str) -> list[int]:
    """The processes in ``host``'s namespace whose command line (its arguments joined by
    spaces, as ``pgrep -f`` reads it) contains ``text``, lowest pid first."""
    found = []
    for pid in pids_in(host):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # it ended meanwhile
        if text in cmdline.replace(b"\0", b" ").decode(errors="replace"):
            found.append(pid)
    return sorted(found)
