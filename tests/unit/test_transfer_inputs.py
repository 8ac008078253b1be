"""A submission's data (client/inputs.py) and the digest cache (client/digests.py): checked
before anything is sent, hashed and zipped once, sent only when the hub lacks it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.client import digests, inputs, transfer
from hivemind_cluster.client.digests import DigestCache, Known, listing_key
from hivemind_cluster.client.inputs import send_data
from hivemind_cluster.client.progress import Bars
from hivemind_cluster.core.errors import HiveMindError, InvalidInput, NotFound
from hivemind_cluster.model.bundles import INPUT_RULES
from tests.unit.test_transfer import MIB, MemoryHub, sha

URL = "https://data.example/sets/x.csv"
HEX = "ab" * 32


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the digest cache goes (``XDG_CACHE_HOME``)."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.setattr(transfer, "RETRY_PAUSE", 0)
    return home


def a_job(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A bundle directory, a data file and a data directory."""
    job, data, table = tmp_path / "job", tmp_path / "data.bin", tmp_path / "tables"
    job.mkdir()
    (job / "main.py").write_text("print('hi')\n")
    data.write_bytes(os.urandom(2 * MIB + 1))
    (table / "sub").mkdir(parents=True)
    (table / "a.csv").write_text("1,2\n")
    (table / "sub" / "b.csv").write_text("3,4\n")
    return job, data, table


class Counted:
    """Counts the calls of a function it wraps (hashing, zipping)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.calls = 0
        inner = getattr(module, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return inner(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


def test_a_second_submission_hashes_zips_and_sends_nothing(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, data, table = a_job(tmp_path)
    hub = MemoryHub()
    argv = (str(job), [str(data), f"t={table}"], [f"{URL}#sha256={HEX}"])
    fields, uploaded = send_data(hub, *argv)

    assert [(u.name, u.size == u.sent_bytes) for u in uploaded] == [
        ("", True),
        ("data.bin", True),
        ("t", True),
    ]
    assert fields == {
        "bundle": uploaded[0].digest,
        "inputs": [
            {"name": "data.bin", "digest": sha(data.read_bytes()), "kind": "file"},
            {"name": "t", "digest": uploaded[2].digest, "kind": "dir"},
            {"name": "x.csv", "url": f"{URL}#sha256={HEX}"},
        ],
    }
    with zipfile.ZipFile(_blob_file(tmp_path, hub.blobs[uploaded[2].digest])) as archive:
        assert archive.namelist() == ["a.csv", "sub/b.csv"]
    cache_file = cache_home / "hivemind" / "digests.json"
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    assert str(tmp_path) not in cache_file.read_text()  # keys are digests, not paths

    hashed = Counted(monkeypatch, digests, "hash_file")
    zipped = Counted(monkeypatch, inputs, "pack_directory")
    bundled = Counted(monkeypatch, inputs, "bundle_from_path")
    hub.calls, hub.sent = [], 0
    again, uploaded = send_data(hub, *argv)
    assert again == fields
    assert [u.sent_bytes for u in uploaded] == [0, 0, 0] and hub.sent == 0
    assert (hashed.calls, zipped.calls, bundled.calls) == (0, 0, 0)
    assert hub.calls == ["begin", "begin", "begin"]


def _blob_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "blob.zip"
    path.write_bytes(data)
    return path


def test_a_hub_without_the_blobs_gets_them_from_the_cache_s_digests(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, data, table = a_job(tmp_path)
    first, _ = send_data(MemoryHub(), str(job), [str(data), str(table)], [])
    hashed = Counted(monkeypatch, digests, "hash_file")
    other = MemoryHub()  # another hub (or the blobs expired): zipped again, not re-hashed
    again, uploaded = send_data(other, str(job), [str(data), str(table)], [])
    assert again == first and hashed.calls == 0
    assert [u.sent_bytes == u.size for u in uploaded] == [True, True, True]
    assert sorted(other.blobs) == sorted({u.digest for u in uploaded})


def test_a_changed_file_or_directory_is_hashed_again(tmp_path: Path, cache_home: Path) -> None:
    _, data, table = a_job(tmp_path)
    hub = MemoryHub()
    first, _ = send_data(hub, "", [str(data), str(table)], [])
    with data.open("r+b") as rewrite:  # same size, new content
        rewrite.write(b"changed")
    (table / "a.csv").write_text("5,6\n")  # same size too
    again, _ = send_data(hub, "", [str(data), str(table)], [])
    assert [i["digest"] for i in again["inputs"]] != [i["digest"] for i in first["inputs"]]
    assert again["inputs"][0]["digest"] == sha(data.read_bytes())
    assert len(hub.blobs) == 4


def test_bad_options_are_one_error_before_anything_is_sent(
    tmp_path: Path, cache_home: Path
) -> None:
    _, data, _ = a_job(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "nothing").mkdir()
    hub = MemoryHub()
    cases: list[tuple[type[Exception], str, str, list[str], list[str]]] = [
        (NotFound, "input missing: .* does not exist", "", [str(tmp_path / "missing")], []),
        (NotFound, "bundle .* does not exist", str(tmp_path / "job.zip"), [str(data)], []),
        (InvalidInput, "URL#sha256=HEX", "", [str(data)], [URL]),
        (InvalidInput, "two inputs are named 'data.bin'", "", [str(data), str(data)], []),
        (InvalidInput, "named 'x.csv'", "", [f"x.csv={data}"], [f"{URL}#sha256={HEX}"]),
        (InvalidInput, "input name 'has space'", "", [f"has space={data}"], []),
        (InvalidInput, "is empty", "", [str(tmp_path / "empty")], []),
        (InvalidInput, "has no files", "", [str(tmp_path / "nothing")], []),
        (InvalidInput, "give a path", "", ["name="], []),
    ]  # fmt: skip
    for kind, message, bundle, files, urls in cases:
        with pytest.raises(kind, match=message):
            send_data(hub, bundle, files, urls)
    assert hub.calls == []


def test_names_come_from_the_path_or_the_url_unless_given(tmp_path: Path) -> None:
    _, data, table = a_job(tmp_path)
    assert inputs.input_path(str(data)).name == "data.bin"
    assert inputs.input_path(f"{table}/").name == "tables"
    assert inputs.input_path(f"in.bin={data}").name == "in.bin"
    odd = tmp_path / "a=b"  # a path with "=" in it is a path
    odd.write_text("x")
    assert inputs.input_path(str(odd)).name == "a=b"
    link = tmp_path / "link.bin"
    link.symlink_to(data)
    assert (inputs.input_path(str(link)).name, inputs.input_path(str(link)).path) == (
        "link.bin",
        data,
    )
    assert inputs.input_url(f"{URL}?v=2#sha256={HEX}").name == "x.csv"
    assert inputs.input_url(f"t.csv={URL}#sha256={HEX.upper()}").digest == f"sha256:{HEX}"


def test_the_cache_is_bounded_and_survives_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c" / "digests.json"
    monkeypatch.setattr(digests, "MAX_ENTRIES", 3)
    cache = DigestCache(path)
    for n in range(5):
        cache.put(f"file:{n}", Known(sha(bytes([n])), n))
        cache.entries[f"file:{n}"]["used"] = n  # in this order
    cache.save()
    kept = json.loads(path.read_text())["entries"]
    assert sorted(kept) == ["file:2", "file:3", "file:4"]
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert DigestCache(path).get("file:4") == Known(sha(b"\x04"), 4)

    path.write_text("{not json")
    assert DigestCache(path).entries == {}
    path.write_text(json.dumps({"version": 1, "entries": {"k": {"digest": "md5:x"}}}))
    assert DigestCache(path).entries == {}


def test_a_listing_key_changes_with_any_file(tmp_path: Path) -> None:
    _, _, table = a_job(tmp_path)
    key, count, size = listing_key(table)
    assert (count, size) == (2, 8) and listing_key(table) == (key, 2, 8)
    (table / "a.csv").chmod(0o600)
    assert listing_key(table).key != key


def test_hashing_and_uploads_show_bars_on_a_terminal_only(
    tmp_path: Path, cache_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, data, _ = a_job(tmp_path)
    send_data(MemoryHub(), "", [str(data)], [], Bars(False))
    assert capsys.readouterr().err == ""
    DigestCache.default().path.unlink()  # type: ignore[union-attr]
    send_data(MemoryHub(), "", [str(data)], [], Bars(True))
    err = capsys.readouterr().err
    assert "hashing input data.bin" in err and "input data.bin" in err and "100%" in err


def a_directory(path: Path, size: int) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "data.bin").write_bytes(os.urandom(size))
    return path


def test_directories_are_zipped_one_at_a_time_on_disk_in_the_cache_and_removed(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = a_directory(tmp_path / "job", 1000)
    (job / "main.py").write_text("print('hi')\n")
    first, second = a_directory(tmp_path / "a", MIB), a_directory(tmp_path / "b", MIB)
    scratch = cache_home / "hivemind" / "scratch"
    hub = MemoryHub()
    seen: list[tuple[Path, list[Path], int]] = []  # (zip, zips there already, blobs sent)

    def watched(name: str) -> None:
        inner = getattr(inputs, name)

        def zipping(source: Path, dest: Path, *args: Any) -> Any:
            seen.append((dest, sorted(scratch.rglob("*.zip")), len(hub.blobs)))
            return inner(source, dest, *args)

        monkeypatch.setattr(inputs, name, zipping)

    watched("pack_directory")
    watched("bundle_from_path")
    send_data(hub, str(job), [str(first), str(second)], [])

    assert [sent for _, _, sent in seen] == [0, 1, 2]  # each zipped after the last was sent
    assert [there for _, there, _ in seen] == [[], [], []]  # ... and its zip removed
    assert all(scratch in dest.parents for dest, _, _ in seen)  # not in /tmp (a tmpfs)
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    assert list(scratch.iterdir()) == []  # the run's directory is gone


def test_a_run_without_directories_makes_no_scratch(tmp_path: Path, cache_home: Path) -> None:
    _, data, _ = a_job(tmp_path)
    send_data(MemoryHub(), "", [str(data)], [])
    assert not (cache_home / "hivemind" / "scratch").exists()


def test_a_killed_run_s_scratch_is_removed_by_the_next_and_a_live_one_kept(
    tmp_path: Path, cache_home: Path
) -> None:
    _, _, table = a_job(tmp_path)
    scratch = cache_home / "hivemind" / "scratch"
    killed, live = scratch / "submit-killed", scratch / "submit-live"
    for directory in (killed, live):
        (directory / "input-t").mkdir(parents=True)
        (directory / "input-t" / "input.zip").write_bytes(b"left over")
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the live run holds it
        send_data(MemoryHub(), "", [str(table)], [])
        assert [path.name for path in scratch.iterdir()] == ["submit-live"]
    finally:
        os.close(held)


def test_a_directory_zipping_would_refuse_is_refused_before_anything_is_sent(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data, table = a_job(tmp_path)
    hub = MemoryHub()
    monkeypatch.setattr(inputs, "INPUT_RULES", replace(INPUT_RULES, max_files=1))
    with pytest.raises(InvalidInput, match=r"^input directory '.*tables' has more than 1 files"):
        send_data(hub, "", [str(data), str(table)], [])
    monkeypatch.setattr(inputs, "INPUT_RULES", replace(INPUT_RULES, max_unpacked_bytes=7))
    with pytest.raises(InvalidInput, match=r"tables' holds 8 B unpacked, more than the 7 bytes"):
        send_data(hub, "", [str(data), str(table)], [])
    assert hub.calls == []


def test_a_full_disk_while_zipping_is_one_line_naming_the_input(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, table = a_job(tmp_path)

    def full(source: Path, dest: Path, *args: Any) -> int:
        dest.write_bytes(b"part of a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(inputs, "pack_directory", full)
    message = r"^input tables: cannot zip '.*tables' in .*/scratch/submit-\w+: No space left"
    with pytest.raises(HiveMindError, match=message):
        send_data(MemoryHub(), "", [str(table)], [])
    assert list((cache_home / "hivemind" / "scratch").iterdir()) == []
