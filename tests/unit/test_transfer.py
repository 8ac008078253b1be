"""client/transfer.py's algorithms over an in-memory hub: uploads that resume after a cut
or a conflict, downloads that resume from a part file, and what they refuse."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from hivemind_cluster.client import transfer
from hivemind_cluster.client.transfer import (
    ResultStream,
    UploadState,
    download_result,
    upload_file,
    upload_state,
)
from hivemind_cluster.core.errors import Conflict, HiveMindError, InvalidInput, Unavailable
from hivemind_cluster.model.blobs import OnBytes

MIB = 1 << 20


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Open:
    digest: str
    size: int
    data: bytearray = field(default_factory=bytearray)


@dataclass
class MemoryHub:
    """What the hub does with uploads and results, in memory, with ways to fail.

    ``cut_at``: the next send stops once the hub holds that many bytes (the rest of that
    request is lost) and the connection breaks (``Unavailable``); ``down_at_cut``: from
    then on every call fails (``down``), like a hub that went away; ``request_bytes``: what
    one send takes.
    """

    request_bytes: int = 1 * MIB
    blobs: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, Open] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    cut_at: int | None = None
    down_at_cut: bool = False
    down: bool = False
    sent: int = 0
    ids: Iterator[int] = field(default_factory=itertools.count)

    def state(self, upload_id: str, held: Open) -> UploadState:
        return UploadState(
            upload_id=upload_id, offset=len(held.data), size=held.size, digest=held.digest,
            complete=False,
        )  # fmt: skip

    def begin_upload(self, digest: str, size: int) -> UploadState:
        self.calls.append("begin")
        if self.down:
            raise Unavailable("the hub is down")
        if digest in self.blobs:
            return UploadState(upload_id="", offset=size, size=size, digest=digest, complete=True)
        for upload_id, held in self.uploads.items():
            if (held.digest, held.size) == (digest, size):
                return self.state(upload_id, held)
        upload_id = f"u{next(self.ids)}"
        self.uploads[upload_id] = Open(digest, size)
        return self.state(upload_id, self.uploads[upload_id])

    def send_upload(
        self, upload_id: str, offset: int, source: BinaryIO, length: int, on_bytes: OnBytes
    ) -> UploadState:
        self.calls.append(f"send {offset}")
        if self.down:
            raise Unavailable("the hub is down")
        held = self.uploads[upload_id]
        if offset != len(held.data):
            raise Conflict(f"the upload is at offset {len(held.data)}")
        data = source.read(min(length, self.request_bytes))
        on_bytes(len(data))
        self.sent += len(data)
        if self.cut_at is not None and offset < self.cut_at < offset + len(data):
            held.data += data[: self.cut_at - offset]
            self.cut_at, self.down = None, self.down_at_cut
            raise Unavailable("connection reset")
        held.data += data
        if len(held.data) < held.size:
            return self.state(upload_id, held)
        if sha(bytes(held.data)) != held.digest:
            del self.uploads[upload_id]
            raise InvalidInput("the upload's SHA-256 is not the one announced")
        self.blobs[held.digest] = bytes(held.data)
        del self.uploads[upload_id]
        return UploadState(
            upload_id="", offset=held.size, size=held.size, digest=held.digest, complete=True
        )

    def read_result(self, task_id: str, offset: int, digest: str) -> ResultStream:
        self.calls.append(f"read {offset}")
        data = self.results[task_id]
        return ResultStream(offset, self._chunks(data, offset))

    def _chunks(self, data: bytes, offset: int) -> Iterator[bytes]:
        for start in range(offset, len(data), self.request_bytes):
            if self.cut_at is not None and start >= self.cut_at:
                self.cut_at = None
                raise Unavailable("connection reset")
            yield data[start : start + self.request_bytes]


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RETRY_PAUSE", 0)


def a_file(tmp_path: Path, size: int, seed: int = 1) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / f"data-{seed}.bin"
    path.write_bytes(data)
    return path, data


def test_a_file_goes_up_in_requests_and_is_stored_verified(tmp_path: Path) -> None:
    path, data = a_file(tmp_path, 3 * MIB + 5)
    hub = MemoryHub()
    assert upload_file(hub, path, sha(data), len(data)) == len(data)
    assert hub.blobs == {sha(data): data}
    assert hub.calls == ["begin", "send 0", f"send {MIB}", f"send {2 * MIB}", f"send {3 * MIB}"]


def test_what_the_hub_holds_is_not_sent_again(tmp_path: Path) -> None:
    path, data = a_file(tmp_path, 2 * MIB)
    hub = MemoryHub(blobs={sha(data): data})
    assert upload_file(hub, path, sha(data), len(data)) == 0
    assert hub.calls == ["begin"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_cut_at_a_random_offset_resumes_where_the_hub_stopped(tmp_path: Path, seed: int) -> None:
    size = 4 * MIB + 77
    path, data = a_file(tmp_path, size, seed)
    cut = random.Random(seed).randrange(1, size)
    hub = MemoryHub(cut_at=cut)
    sent = upload_file(hub, path, sha(data), size)
    assert hub.blobs == {sha(data): data}
    # Resumed from the cut: begun twice, and the bytes after the cut in its request sent twice.
    assert hub.calls.count("begin") == 2 and f"send {cut}" in hub.calls
    lost = min(size, (cut // MIB + 1) * MIB) - cut
    assert sent == hub.sent == size + lost


def test_killed_mid_upload_and_run_again_it_sends_only_the_rest(tmp_path: Path) -> None:
    size = 3 * MIB
    path, data = a_file(tmp_path, size)
    hub = MemoryHub(cut_at=MIB + 1000, down_at_cut=True)  # the hub goes away at the cut
    with pytest.raises(Unavailable):
        upload_file(hub, path, sha(data), size)
    assert hub.calls.count("begin") == 1 + transfer.RETRIES  # retried, then gave up
    hub.down, hub.calls = False, []
    assert upload_file(hub, path, sha(data), size) == size - (MIB + 1000)
    assert hub.blobs == {sha(data): data}
    assert hub.calls[:2] == ["begin", f"send {MIB + 1000}"]


def test_an_offset_conflict_rereads_the_state_and_goes_on(tmp_path: Path) -> None:
    size = 3 * MIB
    path, data = a_file(tmp_path, size)
    hub = MemoryHub()
    upload_id = hub.begin_upload(sha(data), size)["upload_id"]
    hub.uploads[upload_id].data += data[: 2 * MIB]  # another process got further
    calls: list[int] = []

    class Stale(MemoryHub):
        """Answers the first begin with the offset from before the other process."""

        def begin_upload(self, digest: str, size: int) -> UploadState:
            state = super().begin_upload(digest, size)
            if not calls:
                state["offset"] = 0
            calls.append(state["offset"])
            return state

    stale = Stale(uploads=hub.uploads, ids=hub.ids)
    assert upload_file(stale, path, sha(data), size) == MIB
    assert calls == [0, 2 * MIB]
    assert stale.calls == ["begin", "send 0", "begin", f"send {2 * MIB}"]
    assert stale.blobs == {sha(data): data}


def test_a_hub_that_takes_nothing_is_given_up_on(tmp_path: Path) -> None:
    path, data = a_file(tmp_path, MIB)

    class Deaf(MemoryHub):
        def send_upload(
            self, upload_id: str, offset: int, source: BinaryIO, length: int, on_bytes: OnBytes
        ) -> UploadState:
            return self.state(upload_id, self.uploads[upload_id])

    with pytest.raises(HiveMindError, match="the hub takes none of the bytes sent"):
        upload_file(Deaf(), path, sha(data), MIB)


def test_a_wrong_digest_is_the_hubs_refusal(tmp_path: Path) -> None:
    path, _ = a_file(tmp_path, MIB)
    with pytest.raises(InvalidInput, match="SHA-256 is not the one announced"):
        upload_file(MemoryHub(), path, sha(b"other"), MIB)


def test_an_answer_that_is_not_an_upload_state_is_refused() -> None:
    good = {"upload_id": "u", "offset": 0, "size": 1, "digest": "d", "complete": False}
    assert upload_state(good) == good
    bad: list[Any] = [None, [], good | {"offset": "0"}, good | {"size": True}, {"upload_id": "u"}]
    for answer in bad:
        with pytest.raises(HiveMindError, match="the hub answered an upload with"):
            upload_state(answer)


def result_hub(size: int) -> tuple[MemoryHub, bytes]:
    data = random.Random(7).randbytes(size)
    return MemoryHub(results={"t1": data}), data


def test_a_result_downloads_into_its_part_file(tmp_path: Path) -> None:
    hub, data = result_hub(2 * MIB + 3)
    part = tmp_path / "r.part"
    download_result(hub, "t1", sha(data), len(data), part)
    assert part.read_bytes() == data
    assert part.stat().st_mode & 0o077 == 0


def test_a_part_from_before_resumes_from_its_size(tmp_path: Path) -> None:
    hub, data = result_hub(3 * MIB)
    part = tmp_path / "r.part"
    part.write_bytes(data[: MIB + 10])
    download_result(hub, "t1", sha(data), len(data), part)
    assert part.read_bytes() == data and hub.calls == [f"read {MIB + 10}"]
    download_result(hub, "t1", sha(data), len(data), part)  # complete already: nothing read
    assert hub.calls == [f"read {MIB + 10}"]


def test_a_cut_download_resumes(tmp_path: Path) -> None:
    hub, data = result_hub(3 * MIB)
    hub.cut_at = 2 * MIB
    part = tmp_path / "r.part"
    download_result(hub, "t1", sha(data), len(data), part)
    assert part.read_bytes() == data and hub.calls == ["read 0", f"read {2 * MIB}"]


def test_a_source_that_sends_the_whole_zip_starts_the_part_again(tmp_path: Path) -> None:
    hub, data = result_hub(2 * MIB)

    class NoRanges(MemoryHub):
        def read_result(self, task_id: str, offset: int, digest: str) -> ResultStream:
            return super().read_result(task_id, 0, digest)

    whole = NoRanges(results=hub.results)
    part = tmp_path / "r.part"
    part.write_bytes(data[:5000])
    download_result(whole, "t1", sha(data), len(data), part)
    assert part.read_bytes() == data
    part.write_bytes(b"y" * (3 * MIB))  # longer than the result: started again
    download_result(hub, "t1", sha(data), len(data), part)
    assert part.read_bytes() == data and hub.calls == ["read 0"]


def test_a_part_that_is_not_a_prefix_fails_once_then_downloads(tmp_path: Path) -> None:
    hub, data = result_hub(2 * MIB)
    part = tmp_path / "r.part"
    part.write_bytes(b"x" * 5000)  # not the start of this result: found out at the end
    with pytest.raises(InvalidInput, match="removed; run the command again"):
        download_result(hub, "t1", sha(data), len(data), part)
    assert not part.exists()
    download_result(hub, "t1", sha(data), len(data), part)
    assert part.read_bytes() == data


def test_a_download_that_does_not_verify_is_removed(tmp_path: Path) -> None:
    hub, data = result_hub(MIB)
    part = tmp_path / "r.part"
    with pytest.raises(InvalidInput, match=r"the result of t1 downloaded as sha256:\w+, not"):
        download_result(hub, "t1", sha(b"what the task said"), 0, part)
    assert not part.exists()
    with pytest.raises(HiveMindError, match="the result of t1 is larger than 1000 bytes"):
        download_result(hub, "t1", sha(data), 1000, part)


def test_a_planted_symlink_part_is_not_written_through(tmp_path: Path) -> None:
    hub, data = result_hub(MIB)
    victim = tmp_path / "victim"
    victim.write_bytes(b"the user's own file")
    part = tmp_path / "r.part"
    part.symlink_to(victim)
    with pytest.raises(InvalidInput, match=r"r\.part is a symbolic link, .*not writing through"):
        download_result(hub, "t1", sha(data), len(data), part)
    assert victim.read_bytes() == b"the user's own file" and part.is_symlink()
    assert hub.calls == []


def test_a_part_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    hub, data = result_hub(1000)
    part = tmp_path / "r.part"
    os.mkfifo(part)
    with pytest.raises(InvalidInput, match=r"r\.part is not a file, not a download of this"):
        download_result(hub, "t1", sha(data), len(data), part)
    assert hub.calls == []


def test_a_part_of_another_user_s_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, data = result_hub(1000)
    part = tmp_path / "r.part"
    part.write_bytes(data[:10])
    monkeypatch.setattr(os, "geteuid", lambda: part.stat().st_uid + 1)  # as another user
    with pytest.raises(InvalidInput, match=r"r\.part is a file of another user's"):
        download_result(hub, "t1", sha(data), len(data), part)
    assert part.read_bytes() == data[:10] and hub.calls == []
