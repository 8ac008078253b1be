"""A lab package index: a PEP 503 directory of wheels built here, served over HTTP on loopback.

``LabIndex`` writes small pure-Python wheels by hand (a wheel is a zip with a dist-info
directory: METADATA, WHEEL and a RECORD of hashes) into ``simple/<project>/`` and serves the
directory with ``http.server`` on a thread; it remembers every path asked for, so a test can
tell whether pip came back for a wheel.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import re
import shutil
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def wheel_members(
    name: str, version: str, source: str, requires: tuple[str, ...]
) -> dict[str, bytes]:
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    members = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: lab\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in members.items())
    members[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    return members


class LabIndex:
    """A PEP 503 ``simple/`` tree under ``root``, and the paths its server was asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requested: list[str] = []
        self.url = ""
        (root / "simple").mkdir(parents=True, exist_ok=True)

    def add_wheel(
        self, name: str, version: str, source: str, requires: tuple[str, ...] = ()
    ) -> None:
        """A pure-Python wheel of one package ``name`` whose ``__init__`` is ``source``."""
        project = self.root / "simple" / name
        project.mkdir(exist_ok=True)
        with zipfile.ZipFile(project / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
            for path, data in wheel_members(name, version, source, requires).items():
                wheel.writestr(path, data)
        self.write_pages(project)

    def add_file(self, wheel: Path) -> None:
        """A wheel from elsewhere (a real project's, from this machine's disk)."""
        project = self.root / "simple" / re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        project.mkdir(exist_ok=True)
        shutil.copy(wheel, project / wheel.name)
        self.write_pages(project)

    def write_pages(self, project: Path) -> None:
        """The project's page (a link per wheel, with its hash) and the root page."""
        links = [
            f'<a href="{wheel.name}#sha256={hashlib.sha256(wheel.read_bytes()).hexdigest()}">'
            f"{wheel.name}</a><br>"
            for wheel in sorted(project.glob("*.whl"))
        ]
        page = "<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>\n"
        (project / "index.html").write_text(page)
        projects = sorted(p.name for p in (self.root / "simple").iterdir() if p.is_dir())
        anchors = "".join(f'<a href="{p}/">{p}</a><br>' for p in projects)
        (self.root / "simple" / "index.html").write_text(f"<html><body>{anchors}</body></html>")

    def wheel_downloads(self) -> int:
        return sum(path.endswith(".whl") for path in self.requested)


@contextmanager
def served(index: LabIndex) -> Iterator[LabIndex]:
    """The index on http://127.0.0.1:<free port>/simple/ for as long as the block runs."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            index.requested.append(self.path)

    handler = partial(Handler, directory=str(index.root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="lab-index", daemon=True)
    thread.start()
    index.url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
